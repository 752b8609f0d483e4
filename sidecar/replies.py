"""Where the sidecar's replies go: per-client queues on a ROUTER_MANDATORY socket, and the table of embed
request ids that keeps a resent request from being computed twice.

`Outbox` never drops a reply silently. The ROUTER is set to ROUTER_MANDATORY, so a full pipe raises
EAGAIN instead of discarding the message; the reply then waits in that client's own queue (later replies
to the same client queue behind it, in order; other clients are not held up) and `flush` retries it. A
reply is dropped only when its client is gone (EHOSTUNREACH: the peer disconnected) or reads nothing
while MAX_WAITING replies pile up for it, and either is logged.

`Requests` remembers embed requests by id and content: in flight (the Job, whose reply goes to the
identity that sent it last) and recently answered (the result frames, least recently used first out,
bounded by bytes). A request sent again (the client's retry after a timeout, from a new socket) has the
same id and the same content; the same id with other content is just another request.
"""

import collections
import logging

import zmq

log = logging.getLogger("sidecar")

MAX_WAITING = 100_000  # replies queued for one client that reads nothing, beyond which new ones are dropped
SENT, FULL, GONE = "sent", "full", "gone"


class Outbox:
    def __init__(self, router):
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router = router
        self.waiting = {}  # identity -> deque of (frames, on_done), oldest first
        self.count = 0  # replies waiting, all clients
        self.dropped = 0

    def send(self, identity, frames, on_done=None):
        """Send now, or queue behind this client's earlier replies. `on_done()` runs once the reply has
        left or has been dropped."""
        queue = self.waiting.get(identity)
        if queue is None:
            state = self._try(identity, frames)
            if state == SENT:
                _call(on_done)
                return
            if state == GONE:
                self._drop(identity, [(frames, on_done)], "the client is gone")
                return
            queue = self.waiting[identity] = collections.deque()
        if len(queue) >= MAX_WAITING:
            self._drop(identity, [(frames, on_done)], f"the client has {len(queue)} unread replies")
            return
        queue.append((frames, on_done))
        self.count += 1

    def flush(self):
        """Retry the waiting replies, oldest first per client; returns how many still wait."""
        for identity in list(self.waiting):
            queue = self.waiting[identity]
            while queue:
                state = self._try(identity, queue[0][0])
                if state == FULL:
                    break
                if state == GONE:
                    self.count -= len(queue)
                    self._drop(identity, queue, "the client is gone")
                    queue.clear()
                    break
                _, on_done = queue.popleft()
                self.count -= 1
                _call(on_done)
            if not queue:
                del self.waiting[identity]
        return self.count

    def _try(self, identity, frames):
        try:
            self.router.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.Again:
            return FULL
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                log.warning("reply to client %s failed: %s", identity.hex(), exc)
            return GONE
        return SENT

    def _drop(self, identity, entries, why):
        entries = list(entries)
        self.dropped += len(entries)
        log.warning("%d reply(ies) to client %s dropped: %s", len(entries), identity.hex(), why)
        for _, on_done in entries:
            _call(on_done)


def _call(callback):
    if callback is not None:
        callback()


class Requests:
    def __init__(self, max_bytes):
        self.max_bytes = int(max_bytes)
        self.inflight = {}  # (request id, key) -> Job
        self.answered = collections.OrderedDict()  # (request id, key) -> (frames, nbytes)
        self.bytes = 0

    @staticmethod
    def key(request_id, model, ids, seqs):
        """What makes two requests the same request (a hash of the content, valid in this process only)."""
        return request_id, hash((model, tuple(ids), tuple(seqs)))

    def find(self, key):
        """(job, None) for a request in flight, (None, frames) for one answered recently, else (None, None)."""
        job = self.inflight.get(key)
        if job is not None:
            return job, None
        entry = self.answered.get(key)
        if entry is None:
            return None, None
        self.answered.move_to_end(key)
        return None, entry[0]

    def finish(self, key, frames=None):
        """The request's reply is on its way; keep `frames` (a result) for a resend of it."""
        self.inflight.pop(key, None)
        if frames is None or self.max_bytes <= 0:
            return
        size = sum(len(f) for f in frames)
        if size > self.max_bytes:
            return
        old = self.answered.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self.answered[key] = (frames, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self.answered.popitem(last=False)
            self.bytes -= evicted
