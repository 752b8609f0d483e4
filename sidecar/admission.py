"""Admission of embed requests: tokenized a bounded step at a time, so that the socket loop stays responsive.

A request that passed `protocol.check_embed_request` waits here until its model's tokenizer has counted
(and, for the packed fast models, tokenized) every sequence. The socket loop gives admission at most
SLICE seconds per turn, a STEP of text at a time, so a ping never waits behind a large request; and at
most BACKLOG requests' worth of text may wait, beyond which a request is answered `busy`. A sequence
that the tokenizer refuses fails its own request here, never a batch that it would have shared.
"""

import collections
import time

SLICE = 0.02  # seconds of tokenization in one loop turn, between two looks at the socket
STEP_CHARS = 65536  # sequence text tokenized in one step of an admission
BACKLOG = 16  # requests' worth of sequence text (at the size limit) that may wait to be tokenized


class Admission:
    """A checked embed request on its way into the batcher: its token counts (and, for fast models, token
    ids) so far. `context` is (client identity, request key): a resend from a new socket moves it. `since`:
    when the sidecar first saw its part (the batcher's priority)."""

    def __init__(self, context, model, ids, seqs, since=None):
        self.context, self.model, self.ids, self.seqs, self.since = context, model, ids, seqs, since
        self.chars = sum(map(len, seqs))
        self.tokens, self.token_ids = [], []

    @property
    def done(self):
        return len(self.tokens) == len(self.seqs)

    def step(self, backend):
        start = end = len(self.tokens)
        size = 0
        while end < len(self.seqs) and (end == start or size + len(self.seqs[end]) <= STEP_CHARS):
            size += len(self.seqs[end])
            end += 1
        counts, arrays = backend.tokenize_many(self.seqs[start:end])
        self.tokens += counts
        self.token_ids = None if arrays is None or self.token_ids is None else self.token_ids + list(arrays)


class Admissions:
    """The requests waiting to be tokenized, oldest first, and the text they hold."""

    def __init__(self, max_request_chars):
        self.queue = collections.deque()
        self.chars = 0
        self.max_chars = BACKLOG * max_request_chars

    def __len__(self):
        return len(self.queue)

    def full_for(self, entry):
        return bool(self.queue) and self.chars + entry.chars > self.max_chars

    def add(self, entry):
        self.queue.append(entry)
        self.chars += entry.chars

    def drain(self):
        """Every waiting request, removed (they are refused when the sidecar stops)."""
        entries, self.queue, self.chars = list(self.queue), collections.deque(), 0
        return entries

    def work(self, backends):
        """Tokenize for at most SLICE seconds; yields (entry, None) for each request that is complete and
        (entry, exception) for one that its tokenizer refused."""
        deadline = time.monotonic() + SLICE
        while self.queue and time.monotonic() < deadline:
            entry = self.queue[0]
            try:
                entry.step(backends[entry.model])
            except Exception as exc:  # noqa: BLE001 - the model's tokenizer refused this request's text
                self._pop()
                yield entry, exc
                continue
            if entry.done:
                self._pop()
                yield entry, None

    def _pop(self):
        self.chars -= self.queue.popleft().chars
