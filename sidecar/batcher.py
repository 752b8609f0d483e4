"""Cross-request batching by token budget, with a bounded queue (backpressure) and per-request reassembly.

Jobs (one per embed request) are admitted by `submit` from the socket thread and consumed in batches
by the compute thread through `next_batch`. A batch holds sequences of ONE model taken in the jobs'
order from as many jobs as fit in `max_batch_tokens` (always at least one sequence). The order is the
jobs' `priority` (the router gives each job the time it first saw the job's part: the oldest part
first, so that parts finish one after another and their results can follow at once, instead of every
part finishing at the end), then arrival. Results are scattered back into each job's own matrix, so a
job completes when all its rows are filled.

Admission is bounded: a job is refused with `Busy` when it would raise the outstanding (accepted and
not yet released) tokens above `max_queued_tokens` or the outstanding jobs above `max_queued_requests`.
A job is always admitted into an empty queue, so an oversized request still makes progress.
A model in `whole_jobs` (ESM-2 in exact mode) is batched differently: each batch is one whole job, never
shared with another and never cut at the budget, because the model forms the original's batches of that
request itself and a vector depends on its batch mates.
The batcher knows nothing about sockets, models or torch.
"""

import bisect
import itertools
import threading
import time

import numpy as np


class Busy(Exception):
    """The queue is full: retry later."""


class Closed(Exception):
    """The batcher no longer accepts work (the server is shutting down)."""


class Job:
    """One embed request: sequences in, an [N, dim] float32 matrix out."""

    def __init__(self, model, ids, seqs, tokens, dim, context=None, token_ids=None, priority=None):
        self.model = model
        self.priority = priority  # smaller goes first; None: its arrival time
        self.order = None  # (priority, arrival number), set by Batcher.submit
        self.ids = ids
        self.seqs = seqs
        self.tokens = list(tokens)
        self.token_ids = token_ids  # per-sequence token-id arrays, when the model tokenized at admission
        self.total_tokens = sum(self.tokens)
        self.result = np.empty((len(seqs), dim), dtype=np.float32)
        self.context = context  # opaque to the batcher: where the reply goes
        self.cursor = 0  # next row to schedule
        self.inflight = 0  # rows handed to the compute thread and not yet settled
        self.filled = 0
        self.error = None
        self.cancelled = False  # failed by cancel_pending rather than by its own rows
        self.compute_s = 0.0  # this job's token share of the compute time of its batches
        self.submitted = None
        self.started = None
        self.finished = None

    @property
    def done(self):
        return self.error is not None or self.filled == len(self.seqs)


class Batch:
    """Sequences of one model drawn from one or more jobs: parallel lists of (job, row)."""

    def __init__(self, model):
        self.model = model
        self.parts = []  # (job, row)
        self.tokens = 0

    @property
    def seqs(self):
        return [job.seqs[row] for job, row in self.parts]

    @property
    def token_ids(self):
        """Token-id arrays of the batch's rows, or None unless every job kept them."""
        if any(job.token_ids is None for job, _ in self.parts):
            return None
        return [job.token_ids[row] for job, row in self.parts]

    def __len__(self):
        return len(self.parts)


class Batcher:
    def __init__(self, max_batch_tokens=4096, max_queued_tokens=1_000_000, max_queued_requests=1024,
                 model_batch_tokens=None, whole_jobs=()):
        if max_batch_tokens < 1 or max_queued_tokens < 1 or max_queued_requests < 1:
            raise ValueError("batcher limits must be positive")
        self.max_batch_tokens = max_batch_tokens
        self.model_batch_tokens = dict(model_batch_tokens or {})  # per-model override of the budget
        self.whole_jobs = frozenset(whole_jobs)  # models whose batch is exactly one whole job
        self.max_queued_tokens = max_queued_tokens
        self.max_queued_requests = max_queued_requests
        self._pending = []  # jobs with rows not yet scheduled, by Job.order
        self._arrivals = itertools.count()
        self._outstanding_jobs = 0
        self._outstanding_tokens = 0
        self._closed = False
        self._cond = threading.Condition()

    # -- socket side ------------------------------------------------------------------------

    def submit(self, job):
        with self._cond:
            if self._closed:
                raise Closed("the sidecar is shutting down")
            if self._outstanding_jobs and (
                    self._outstanding_tokens + job.total_tokens > self.max_queued_tokens
                    or self._outstanding_jobs + 1 > self.max_queued_requests):
                raise Busy(f"queue full ({self._outstanding_jobs} requests, {self._outstanding_tokens} tokens "
                           f"outstanding; limits {self.max_queued_requests} requests, {self.max_queued_tokens} tokens)")
            job.submitted = time.monotonic()
            job.order = (job.submitted if job.priority is None else job.priority, next(self._arrivals))
            bisect.insort(self._pending, job, key=lambda j: j.order)
            self._outstanding_jobs += 1
            self._outstanding_tokens += job.total_tokens
            self._cond.notify_all()

    def release(self, job):
        """The job's reply has been sent: its memory no longer counts against the queue bound."""
        with self._cond:
            self._outstanding_jobs -= 1
            self._outstanding_tokens -= job.total_tokens

    def close(self):
        """Refuse new jobs from now on; queued jobs stay and can still be drained."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def cancel_pending(self, reason):
        """Fail every job that has rows not yet scheduled; returns the jobs whose reply can go now."""
        with self._cond:
            jobs = list(self._pending)
            self._pending.clear()
            for job in jobs:
                if job.error is None:
                    job.error = reason
                    job.cancelled = True
            return self._collect_finished(jobs)

    def depth(self):
        with self._cond:
            return {"requests": self._outstanding_jobs, "tokens": self._outstanding_tokens,
                    "pending_requests": len(self._pending)}

    # -- compute side -----------------------------------------------------------------------

    def next_batch(self, timeout=None):
        """Block up to `timeout` s for work; returns a Batch or None."""
        with self._cond:
            if not self._pending:
                self._cond.wait(timeout)
            if not self._pending:
                return None
            model = self._pending[0].model
            whole = model in self.whole_jobs
            budget = float("inf") if whole else self.model_batch_tokens.get(model, self.max_batch_tokens)
            batch = Batch(model)
            now = time.monotonic()
            full = False
            for job in list(self._pending):
                if job.model != model:
                    continue
                while job.cursor < len(job.seqs):
                    cost = job.tokens[job.cursor]
                    if batch.parts and batch.tokens + cost > budget:
                        full = True
                        break
                    batch.parts.append((job, job.cursor))
                    batch.tokens += cost
                    job.cursor += 1
                    job.inflight += 1
                    if job.started is None:
                        job.started = now
                if job.cursor == len(job.seqs):
                    self._pending.remove(job)
                if full or whole:
                    break
            return batch

    def complete(self, batch, vectors, errors=None):
        """Scatter an [len(batch), dim] matrix into the jobs; rows in `errors` ({row: reason}) fail their job.
        Returns the jobs whose reply can go now."""
        errors = errors or {}
        with self._cond:
            for i, (job, row) in enumerate(batch.parts):
                job.inflight -= 1
                if i in errors:
                    if job.error is None:
                        job.error = errors[i]
                    if job in self._pending:
                        self._pending.remove(job)
                elif job.error is None:
                    job.result[row] = vectors[i]
                    job.filled += 1
            return self._collect_finished(dict.fromkeys(job for job, _ in batch.parts))

    @staticmethod
    def _collect_finished(jobs):
        now = time.monotonic()
        finished = []
        for job in jobs:
            if job.done and job.inflight == 0 and job.finished is None:
                job.finished = now
                finished.append(job)
        return finished
