"""The socket thread of a sidecar: requests in, replies out, lifecycle; it never computes.

Like the request router of text-embeddings-inference in front of its model backends, it owns the
ROUTER socket and everything about clients: it decodes each message within protocol.Limits and answers
every bad one (`bad_request`, or a logged `internal`) without ending the loop; it answers `ping` and
`status` at once, also while the models load; it admits embed requests a bounded step at a time
(sidecar.admission) into the batcher; it answers a resent request (same id, same content) without
computing it twice and never drops a reply silently (sidecar.replies); and it decides when to stop
(signal, `stop` request, orphan, idle) and drains. The compute thread (sidecar.compute) hands finished
requests back through a callback that wakes this loop.
"""

import collections
import functools
import logging
import signal
import threading
import time
from pathlib import Path

import zmq

from . import leases, protocol, rendezvous, safe_files
from .admission import Admission, Admissions
from .batcher import Busy, Closed, Job
from .replies import Outbox, Requests

log = logging.getLogger("sidecar")

TICK = 0.5  # seconds between housekeeping checks (orphan, idle, throughput log)
FAILED_LINGER = 10.0  # seconds a server whose models failed to load keeps explaining why before exiting
RETRY_POLL = 0.005  # seconds between retries of replies that wait for a full client pipe
RATE_WINDOW = 60.0  # seconds of finished requests over which the reported throughput is measured
DRAIN_GRACE = 60.0  # seconds the batch in the compute thread's hands may still take after the drain timeout


class ModelStats:
    def __init__(self):
        self.requests = self.sequences = self.tokens = self.errors = 0
        self.compute_s = 0.0


class Throughput:
    """Tokens per second of compute over the requests finished in the last RATE_WINDOW seconds."""

    def __init__(self):
        self._window = collections.deque()  # (finished, tokens, compute_s)
        self._tokens, self._seconds = 0, 0.0

    def note(self, finished, tokens, compute_s):
        self._window.append((finished, tokens, compute_s))
        self._tokens += tokens
        self._seconds += compute_s

    def rate(self):
        oldest = time.monotonic() - RATE_WINDOW
        while self._window and self._window[0][0] < oldest:
            _, tokens, seconds = self._window.popleft()
            self._tokens -= tokens
            self._seconds -= seconds
        if not self._window:
            self._tokens, self._seconds = 0, 0.0
            return None
        return round(self._tokens / self._seconds, 1) if self._seconds > 0 else None


class Router:
    def __init__(self, cfg, listener, batcher, compute, pid, started, versions):
        self.cfg, self.listener, self.batcher, self.compute = cfg, listener, batcher, compute
        self.router = listener.router
        self.pid, self.started, self.versions = pid, started, versions
        self.state = protocol.LOADING
        self.stop_reason = None
        self.urgent = False
        self.last_activity = time.monotonic()
        self.finished = collections.deque()  # finished jobs, from the compute thread
        self.replies = Outbox(self.router)
        self.requests = Requests(cfg.reply_cache_mb * 2**20)
        self.admissions = Admissions(cfg.limits.max_request_chars)
        self.throughput = Throughput()
        self.stats = {name: ModelStats() for name in cfg.models}
        self._tokens_since_log = collections.Counter()
        self._last_log = time.monotonic()
        self._failed_at = None
        self._watch_ticks = rendezvous.start_ticks(cfg.watch_pid) if cfg.watch_pid else None
        self._leases = leases.LeaseWatch(cfg.lease_dir) if cfg.lease_dir else None
        self._parts_since = collections.OrderedDict()  # ("part", key) or ("client", identity) -> first seen
        self.leases_released = False  # stopped because every sample gave its lease back
        self._wake_lock = threading.Lock()

    def on_finished(self, jobs):
        """Called by the compute thread: hand over finished jobs and wake the loop."""
        self.finished.extend(jobs)
        with self._wake_lock:
            self.listener.wake_send.send(b"")

    def install_signals(self):
        def handler(signum, _frame):
            name = signal.Signals(signum).name
            if self.stop_reason is None:
                self.stop_reason = f"{name} received"
            else:
                self.urgent = True
                self.stop_reason = f"second signal ({name})"

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # ---- the loop -----------------------------------------------------------------------------

    def loop(self):
        """Run until stopped; returns the process exit code."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.listener.wake_recv, zmq.POLLIN)
        next_tick = time.monotonic()
        drain_deadline = None
        while True:
            wait = 0 if self.admissions else RETRY_POLL if self.replies.count else TICK
            events = dict(poller.poll(timeout=wait * 1000))
            now = time.monotonic()
            if self.listener.wake_recv in events:
                self._drain_wakes()
            self._follow_loading()
            if self.stop_reason and drain_deadline is None and self.state != protocol.FAILED:
                # before reading new requests, so that none is accepted after a stop was asked for
                log.info("stopping: %s; draining %d queued request(s)", self.stop_reason,
                         self.batcher.depth()["requests"])
                self.state = protocol.DRAINING
                self.batcher.close()
                for entry in self.admissions.drain():  # not accepted yet: refused like any request from now on
                    self._fail(entry, protocol.SHUTTING_DOWN, "the sidecar is shutting down")
                drain_deadline = now + (0.0 if self.urgent else self.cfg.drain_timeout)
            self._send_finished()
            self.replies.flush()
            if self.router in events:
                self._read()
            self._admit()
            if now >= next_tick:
                next_tick = now + TICK
                self._housekeeping(now)
            if self.state == protocol.FAILED:
                self._failed_at = self._failed_at or now
                if self.stop_reason or now - self._failed_at > FAILED_LINGER:
                    return 1
                continue
            if drain_deadline is None:
                continue
            if self.urgent:
                drain_deadline = min(drain_deadline, now)
            if now >= drain_deadline:
                cancelled = self.batcher.cancel_pending("the sidecar is shutting down")
                if cancelled:
                    self.finished.extend(cancelled)
                    self._send_finished()
                if self.batcher.depth()["requests"] == 0 or now >= drain_deadline + DRAIN_GRACE:
                    return 0
            elif self.batcher.depth()["requests"] == 0:
                return 0

    def _drain_wakes(self):
        while True:
            try:
                self.listener.wake_recv.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _follow_loading(self):
        if self.state != protocol.LOADING or not self.compute.loaded.is_set():
            return
        if self.compute.load_error:
            self.state = protocol.FAILED
        else:
            self.state = protocol.READY
            self.last_activity = time.monotonic()
            log.info("ready (endpoint %s)", self.listener.endpoint)

    def _read(self):
        for _ in range(1000):  # bounded so that replies keep flowing under a flood of requests
            # Reading EVENTS makes libzmq take in newly readable peers now; recv alone does so only
            # every 100 messages, so a ping would wait behind a whole backlog of one busy client.
            self.router.getsockopt(zmq.EVENTS)
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._handle(frames)
            except Exception:  # noqa: BLE001 - _handle answers its own errors; this is the last guard
                log.exception("message of %d frame(s) not handled", len(frames))

    def _housekeeping(self, now):
        if self.stop_reason is None:
            self.stop_reason = self._orphan_reason(now)
        if now - self._last_log >= self.cfg.log_interval:
            span = now - self._last_log
            depth = self.batcher.depth()
            if sum(self._tokens_since_log.values()) or depth["requests"]:
                rates = ", ".join(f"{name} {self._tokens_since_log[name] / span:.0f} tok/s" for name in self.stats)
                log.info("throughput: %s; queue %d request(s), %d tokens", rates, depth["requests"],
                         depth["tokens"])
            self._tokens_since_log.clear()
            self._last_log = now

    def _orphan_reason(self, now):
        if self.cfg.watch_pid and not rendezvous.pid_alive(self.cfg.watch_pid, self._watch_ticks):
            return f"watched pid {self.cfg.watch_pid} is gone"
        try:
            info = rendezvous.read(self.cfg.endpoint_file)
        except rendezvous.RendezvousError:
            return f"endpoint file {self.cfg.endpoint_file} was removed"
        except safe_files.UnsafePath as exc:
            return f"endpoint file replaced: {exc}"
        if info.get("pid") != self.pid:
            return f"endpoint file {self.cfg.endpoint_file} now names pid {info.get('pid')}"
        if self._leases and self._leases.released(now):
            self.leases_released = True
            return f"no sample holds a lease any more ({self.cfg.lease_dir})"
        if (self.cfg.idle_timeout and self.state == protocol.READY and self.batcher.depth()["requests"] == 0
                and now - self.last_activity > self.cfg.idle_timeout):
            return f"idle for {self.cfg.idle_timeout:g} s"
        return None

    # ---- requests -----------------------------------------------------------------------------

    def _reply(self, identity, frames, on_done=None):
        self.replies.send(identity, frames, on_done)

    def _handle(self, frames):
        """Answer one message. A bad one gets `bad_request`; an unexpected failure is logged and answered
        `internal`; neither touches any other request or the loop."""
        if len(frames) < 2:
            return
        identity, request_id = frames[0], ""
        try:
            head = protocol.decode_header(frames[1], self.cfg.limits)
            request_id = head["id"]
            self._dispatch(identity, head, frames[2:])
        except protocol.UnknownModel as exc:
            self._reply(identity, protocol.error(request_id, protocol.UNKNOWN_MODEL, exc))
        except protocol.ProtocolError as exc:
            self._reply(identity, protocol.error(request_id, protocol.BAD_REQUEST, exc))
        except Exception as exc:  # noqa: BLE001
            log.exception("internal error on request %r from client %s", request_id[:40], identity.hex()[:10])
            self._reply(identity, protocol.error(request_id, protocol.INTERNAL,
                                                 f"internal error ({exc.__class__.__name__}); see the sidecar log"))

    def _dispatch(self, identity, head, extra):
        kind, request_id = head["type"], head["id"]
        if extra and kind != protocol.EMBED:
            raise protocol.ProtocolError(f"a {kind!r} request has exactly one frame")
        if kind == protocol.PING:
            state = protocol.DRAINING if self._stopping() else self.state
            if "lease" in head:
                self._announce_lease(head["lease"], state)
            self._reply(identity, protocol.pong(request_id, state, **self._pong_fields()))
        elif kind == protocol.STATUS:
            self._reply(identity, protocol.status_reply(request_id, self.status()))
        elif kind == protocol.STOP:
            self._reply(identity, protocol.stopping(request_id))
            if self.stop_reason is None:
                self.stop_reason = "stop request"
        elif kind == protocol.EMBED:
            self._embed(identity, head, extra)
        else:
            raise protocol.ProtocolError(f"unknown request type {kind[:40]!r}")

    def _stopping(self):
        """Draining, or a stop asked for (by a signal or a stop request) that the loop has not begun yet: a
        signal can land after this round's check and before its requests are read, and a request read then
        must be refused as the ping that follows it says."""
        return self.state == protocol.DRAINING or (self.stop_reason is not None and self.state != protocol.FAILED)

    def _announce_lease(self, name, state):
        """A taker wrote this lease and asks whether this sidecar keeps serving: it does while loading or
        ready, and the pong's `state` says which (sidecar.leases)."""
        if not leases.valid_name(name):
            raise protocol.ProtocolError(f"lease {str(name)[:60]!r} is not a lease file name (*{leases.SUFFIX})")
        if self._leases is None or state not in (protocol.LOADING, protocol.READY):
            return
        self._leases.announce(name, time.monotonic())
        log.info("lease %s announced", name)

    def _embed(self, identity, head, extra):
        request_id = head["id"]
        if self.state == protocol.LOADING:
            self._reply(identity, protocol.error(request_id, protocol.NOT_READY, "models are still loading"))
            return
        if self.state == protocol.FAILED:
            self._reply(identity, protocol.error(request_id, protocol.LOAD_FAILED,
                                                 f"the sidecar could not load its models: {self.compute.load_error}"))
            return
        # Every sequence is checked here and tokenized on admission, so that a bad one fails its own request
        # and never a batch it would have shared with others.
        model, ids, seqs = protocol.check_embed_request(head, extra, list(self.compute.backends), self.cfg.limits)
        key = Requests.key(request_id, model, ids, seqs)
        if self._resent(identity, key):
            return
        if self._stopping():  # after the resend check: a resent request still gets its reply
            self._reply(identity, protocol.error(request_id, protocol.SHUTTING_DOWN, "the sidecar is shutting down"))
            return
        part = protocol.embed_part_key(head, self.cfg.limits)
        since = self._since(("part", part) if part is not None else ("client", identity))
        entry = Admission((identity, key), model, ids, seqs, since)
        if self.admissions.full_for(entry):
            self._reply(identity, protocol.error(request_id, protocol.BUSY, "too many requests waiting to be tokenized"))
            return
        self.admissions.add(entry)
        self.requests.inflight[key] = entry
        self.last_activity = time.monotonic()

    def _since(self, key):
        """When the sidecar first saw this part (the `part` that both models' requests of a part carry), or
        this client (a connection) for requests without one: the priority of their jobs, so that the oldest
        part is computed first (sidecar.batcher). The most recent 4096 are remembered."""
        since = self._parts_since.get(key)
        if since is None:
            since = self._parts_since[key] = time.monotonic()
            if len(self._parts_since) > 4096:
                self._parts_since.popitem(last=False)
        return since

    def _resent(self, identity, key):
        """Answer an embed request seen before (same id, same content) without computing it again."""
        job, answered = self.requests.find(key)
        if job is not None:
            job.context = (identity, key)  # the client retried from a new socket: answer there
            log.info("embed %s sent again by client %s while in flight: the reply goes there", key[0][:12],
                     identity.hex()[:10])
        elif answered is not None:
            self._reply(identity, answered)
            log.info("embed %s sent again by client %s: answered from the reply cache", key[0][:12],
                     identity.hex()[:10])
        return job is not None or answered is not None

    def _admit(self):
        for entry, refused in self.admissions.work(self.compute.backends):
            if refused is not None:
                self._fail(entry, protocol.BAD_REQUEST, f"cannot tokenize: {refused.__class__.__name__}: {refused}")
                continue
            try:
                self._submit(entry)
            except Exception as exc:  # noqa: BLE001 - never the loop's end
                log.exception("internal error admitting request %r", entry.context[1][0][:40])
                self._fail(entry, protocol.INTERNAL, f"internal error ({exc.__class__.__name__}); see the sidecar log")

    def _submit(self, entry):
        job = Job(entry.model, entry.ids, entry.seqs, entry.tokens, self.compute.backends[entry.model].dim,
                  context=entry.context, token_ids=entry.token_ids, priority=entry.since)
        try:
            self.batcher.submit(job)
        except Busy as exc:
            self._fail(entry, protocol.BUSY, exc)
            return
        except Closed as exc:
            self._fail(entry, protocol.SHUTTING_DOWN, exc)
            return
        self.requests.inflight[entry.context[1]] = job

    def _fail(self, entry, code, message):
        """Answer a request that did not reach the batcher (at its newest identity) and forget it."""
        identity, key = entry.context
        self.requests.finish(key)
        self._reply(identity, protocol.error(key[0], code, message))

    def _send_finished(self):
        while self.finished:
            job = self.finished.popleft()
            identity, key = job.context
            request_id = key[0]
            release = functools.partial(self.batcher.release, job)  # once the reply has left
            stats = self.stats[job.model]
            queue_wait = (job.started or job.finished) - job.submitted
            compute = job.compute_s
            if job.error is None:
                timing = {"queue_wait_s": round(queue_wait, 6), "compute_s": round(compute, 6),
                          "tokens": job.total_tokens}
                frames = protocol.result(request_id, job.model, job.ids, job.result, timing)
                self.requests.finish(key, frames)
                self._reply(identity, frames, release)
                self.throughput.note(job.finished, job.total_tokens, compute)
                stats.requests += 1
                stats.sequences += len(job.seqs)
                stats.tokens += job.total_tokens
                stats.compute_s += compute
                self._tokens_since_log[job.model] += job.total_tokens
                outcome = "ok"
            else:
                code = protocol.SHUTTING_DOWN if job.cancelled else protocol.INTERNAL
                self.requests.finish(key)
                self._reply(identity, protocol.error(request_id, code, job.error), release)
                stats.errors += 1
                outcome = f"error ({job.error})"
            self.last_activity = time.monotonic()
            log.info("embed %s client=%s model=%s seqs=%d tokens=%d queue_wait=%.4fs compute=%.4fs total=%.4fs %s",
                     request_id[:12], identity.hex()[:10], job.model, len(job.seqs), job.total_tokens, queue_wait,
                     compute, job.finished - job.submitted, outcome)

    # ---- reports ------------------------------------------------------------------------------

    def _pong_fields(self):
        fields = {"pid": self.pid}
        if self.state in (protocol.READY, protocol.DRAINING):
            fields["models"] = {name: {"dim": b.dim, "name": b.name} for name, b in self.compute.backends.items()}
            fields["served"] = self.compute.served(self.versions)
            depth = self.batcher.depth()
            fields["queue"] = {"requests": depth["requests"], "tokens": depth["tokens"]}
            fields["rate_tokens_per_s"] = self.throughput.rate()
        if self.compute.load_error:
            fields["error"] = self.compute.load_error
        return fields

    def status(self):
        import dataclasses

        models = {}
        for name, (source, revision) in self.cfg.models.items():
            backend = self.compute.backends.get(name)
            st = self.stats[name]
            models[name] = {
                "source": source, "revision": revision,
                "name": backend.name if backend else None, "dim": backend.dim if backend else None,
                "loads": backend.loads if backend else 0,
                "load_seconds": round(backend.load_seconds, 3) if backend and backend.load_seconds else None,
                "requests": st.requests, "sequences": st.sequences, "tokens": st.tokens, "errors": st.errors,
                "compute_s": round(st.compute_s, 3),
                "dedup": backend.cache.stats() if backend else None,
            }
        memory = {"rss_bytes": _rss_bytes()}
        if self.compute.ready:
            from . import backends

            cuda = backends.cuda_memory(self.compute.device)
            if cuda:
                memory["cuda"] = cuda
        depth = self.batcher.depth()
        return {
            "state": self.state, "pid": self.pid, "host": rendezvous.hostname(), "endpoint": self.listener.endpoint,
            "device": self.compute.device, "gpu_name": self.compute.gpu_name, "mode": self.cfg.mode,
            "fingerprints": self.compute.fingerprints, "versions": self.versions,
            "uptime_s": round(time.time() - self.started, 3), "models": models,
            "memory": memory, "error": self.compute.load_error,
            "queue": {"requests": depth["requests"], "tokens": depth["tokens"], "admitting": len(self.admissions),
                      "rate_tokens_per_s": self.throughput.rate(), "replies_waiting": self.replies.count,
                      "replies_dropped": self.replies.dropped, "reply_cache_bytes": self.requests.bytes,
                      "max_batch_tokens": self.cfg.max_batch_tokens,
                      "max_queued_tokens": self.cfg.max_queued_tokens,
                      "max_queued_requests": self.cfg.max_queued_requests},
            "limits": dataclasses.asdict(self.cfg.limits),
            "idle_timeout": self.cfg.idle_timeout, "watch_pid": self.cfg.watch_pid,
        }


def _rss_bytes():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
