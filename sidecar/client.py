"""The client shim of the per-file jobs: send sequences to a running sidecar, get float32 matrices back.

Imports only the standard library, pyzmq and numpy (never torch), so a per-file job starts in a fraction
of a second. It waits for readiness with its own generous timeout (models may take minutes to load),
splits large inputs into several requests kept a few at a time in flight (ESM-2 in exact mode: one request
per batch of the original's, so that the sidecar computes the original's batches), retries BUSY with
backoff, checks the ids of every reply and that every vector is finite.

It never waits without end. It follows the "Lazy Pirate" pattern of the ZeroMQ guide: each request has a
timeout (see SidecarClient); when it passes, the client closes its socket, reconnects (re-reading the
endpoint file, which a restarted sidecar has rewritten) and sends every outstanding request again with
the SAME request id, so that the server answers it without computing it twice; after `tries` sends it
fails with one line. While it waits it pings every `heartbeat` seconds: a sidecar that answers nothing
for `silent_timeout` seconds is treated the same way (also on this host, where a stopped process still
looks alive); a local sidecar whose process is gone ends the wait at once (SidecarDied), unless the
endpoint file already names a live successor, which then gets the outstanding requests. A refused
CURVE handshake is one line too, and so is a TCP sidecar that no connection ever reached: that line
names its host and port and what to check (the host is up, reachable from here, the port not blocked).

It sends nothing to a server that may not be the user's own: the endpoint file must be theirs (rendezvous),
an ipc socket and its directory too (the directory closed to others, and held open while connected so
that it cannot be swapped after the check), and a TCP endpoint must be CURVE-authenticated: the server
key comes from the user's own secret file (auth.load refuses one of another user), so only a server that
holds that file completes the handshake.
"""

import os
import random
import time

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from . import auth, protocol, rendezvous, safe_files
from .exact_batches import original_batches

POLL = 0.2  # seconds per wait slice; liveness is checked between slices
ASSUMED_RATE = 1000.0  # tokens/s assumed for a sidecar that has not measured its throughput yet


class SidecarError(Exception):
    """Anything that stops the client from getting its vectors; the message is one line for the user."""


class SidecarDied(SidecarError):
    """The sidecar process went away: rerunning (or Snakemake's --retries) with a new sidecar recovers."""

    exit_code = 3  # what the command line exits with, so that a retry can tell this from a real error


class SidecarNotOurs(SidecarError):
    """The endpoint file, or the server it names, may belong to another user: never used nor replaced."""


class _TryFailed(Exception):
    """This connection gets no answer (silence, a handshake cut short, a successor took over): reconnect and
    send again; `error` is what to raise when the tries run out."""

    def __init__(self, reason, error=SidecarDied, hint=None):
        super().__init__(reason)
        self.error = error
        self.hint = hint  # what to check, when it is not "rerun"


class _Request:
    """One embed request: the same frames, hence the same id, on every send."""

    def __init__(self, chunk):
        self.chunk = chunk  # indices of the caller's sequences
        self.frames = self.id = None
        self.tokens = 0  # estimated: characters plus two special tokens per sequence
        self.sends = 0  # since the last answer
        self.busy = 0  # BUSY answers so far
        self.timeout = self.deadline = None
        self.retry_at = 0.0


class SidecarClient:
    """A connection to the sidecar named by an endpoint file.

    ready_timeout: seconds to wait for the models to load (and for a BUSY queue to accept a request);
    request_timeout, max_request_timeout: the timeout of one send of a request is

        timeout = min(max_request_timeout, request_timeout + work / rate)

      where work is the tokens the sidecar last reported queued (in its pong) plus the estimated tokens
      of this client's requests in flight, this one included, and rate is the sidecar's recent
      throughput in tokens/s from the same pong (ASSUMED_RATE before it has measured one). The floor is
      request_timeout (queued work only adds to it), the cap max_request_timeout;
    tries: sends of one request (with a reconnect in between) before the client gives up, and silent
      periods in a row before a sidecar is declared gone;
    heartbeat: seconds between pings while waiting; silent_timeout: seconds without any message (pongs
      included) after which the connection counts as lost;
    max_request_seqs / max_request_chars: split inputs into requests no larger than this;
    window: requests kept in flight at once; secret_file: overrides the one named in the endpoint file.
    """

    def __init__(self, endpoint_file, ready_timeout=1800.0, request_timeout=60.0, max_request_timeout=3600.0,
                 tries=3, heartbeat=2.0, silent_timeout=60.0, max_request_seqs=1024, max_request_chars=1_048_576,
                 window=4, secret_file=None, context=None):
        self.endpoint_file = str(endpoint_file)
        self.ready_timeout = ready_timeout
        self.request_timeout = request_timeout
        self.max_request_timeout = max_request_timeout
        self.tries = max(1, int(tries))
        self.heartbeat = heartbeat
        self.silent_timeout = silent_timeout
        self.max_request_seqs = max_request_seqs
        self.max_request_chars = max_request_chars
        self.window = window
        self.secret_file = secret_file
        self._context = context
        self._own_context = context is None
        self.sock = None
        self._socket_dir_fd = None
        self.info = None
        self.models = None  # {model: {"dim", "name"}} once ready
        self.served = None  # what the sidecar says produces its vectors (mode, device, fingerprints...) once ready
        self.busy_replies = 0  # how often the server said BUSY (for tests and logs)
        self.reconnects = 0  # how often a lost connection was replaced (for tests and logs)
        self.queued_tokens = 0  # the sidecar's queue as of its last pong
        self.rate = None  # the sidecar's recent throughput (tokens/s) as of its last pong

    # ---- connection -------------------------------------------------------------------------

    def connect(self):
        if self.sock is not None:
            return self
        try:
            self.info = rendezvous.read(self.endpoint_file)
        except rendezvous.RendezvousError as exc:
            raise (SidecarDied if self.reconnects else SidecarError)(str(exc)) from None
        except safe_files.UnsafePath as exc:
            raise SidecarNotOurs(str(exc)) from None
        keys = self._secret(self.info["auth"]) if self.info.get("auth") else None
        endpoint = self._verified_endpoint()
        if self._context is None:
            self._context = zmq.Context()
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if keys:
            auth.setup_client(sock, keys)
        self.monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                               | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_CONNECTED)
        self._reached = not endpoint.startswith("tcp://")  # a TCP connection was made on this socket
        sock.connect(endpoint)
        self.sock = sock
        self.poller = zmq.Poller()
        self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self._last_heard = time.monotonic()
        self._last_check = 0.0
        return self

    def _verified_endpoint(self):
        """The address to connect to, once the server it names is known to be this user's."""
        endpoint = str(self.info["endpoint"])
        if endpoint.startswith("tcp://"):
            if not self.info.get("auth"):
                raise SidecarNotOurs(f"endpoint file {self.endpoint_file} names {endpoint} without authentication "
                                     "(a sidecar on TCP always has a secret file); remove it")
            return endpoint
        if not endpoint.startswith("ipc://"):
            raise SidecarNotOurs(f"endpoint file {self.endpoint_file} names {endpoint!r}, neither an ipc:// nor a "
                                 "tcp:// endpoint; remove it")
        path = endpoint[len("ipc://"):]
        directory, name = os.path.split(path)
        action = f"do not use the endpoint file {self.endpoint_file} that names it: remove it"
        try:
            fd = safe_files.open_dir(directory, "the sidecar's socket directory", action=action)
            try:
                safe_files.check(path, os.stat(name, dir_fd=fd, follow_symlinks=False), "the sidecar's socket",
                                 "socket", action=action)
            except BaseException:
                os.close(fd)
                raise
        except FileNotFoundError:
            raise SidecarDied(f"{self.describe()} is gone: its socket {path} does not exist; "
                              "rerun / use --retries") from None
        except safe_files.UnsafePath as exc:
            raise SidecarNotOurs(str(exc)) from None
        self._close_socket_dir()
        self._socket_dir_fd = fd
        return f"ipc:///proc/self/fd/{fd}/{name}" if os.path.isdir("/proc/self/fd") else endpoint

    def _secret(self, auth_info):
        """The CURVE keys, from the user's own secret file: the server must prove it holds its server key."""
        secret_file = self.secret_file or auth_info.get("secret_file")
        try:
            if not secret_file:
                raise auth.SecretError(f"endpoint file {self.endpoint_file} names no secret file")
            return auth.load(secret_file)
        except auth.SecretError as exc:
            raise SidecarError(f"{self.describe()} needs its secret: {exc}") from None

    def _close_socket_dir(self):
        if self._socket_dir_fd is not None:
            os.close(self._socket_dir_fd)
            self._socket_dir_fd = None

    def _close_socket(self):
        if self.sock is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.sock.close(linger=0)
            self.sock = None

    def _reconnect(self):
        """Lazy Pirate: a fresh socket, since replies on the old one may never come."""
        self._close_socket()
        self.reconnects += 1
        self.connect()

    def close(self):
        self._close_socket()
        self._close_socket_dir()
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    def describe(self):
        return rendezvous.describe(self.info) if self.info else f"sidecar of {self.endpoint_file}"

    # ---- the wait primitive -------------------------------------------------------------------

    def _check_alive(self, doing):
        """Raise SidecarDied if the local sidecar process is gone, _TryFailed if this connection is lost."""
        now = time.monotonic()
        if now - self._last_heard > self.silent_timeout:
            unreachable = self._unreachable(self.silent_timeout)
            if unreachable:
                raise _TryFailed(*unreachable)
            raise _TryFailed(f"answered nothing for {self.silent_timeout:g} s")
        if now - self._last_check < 0.5 or not rendezvous.is_local(self.info):
            return
        self._last_check = now
        if not rendezvous.pid_alive(self.info["pid"], self.info.get("pid_start")):
            if self._successor_named():
                raise _TryFailed("was replaced by a new sidecar")
            raise SidecarDied(f"{self.describe()} died while {doing}; rerun / use --retries")

    def _successor_named(self):
        try:
            info = rendezvous.read(self.endpoint_file)
        except (rendezvous.RendezvousError, safe_files.UnsafePath):
            return False
        if (info["pid"], info["host"]) == (self.info["pid"], self.info["host"]):
            return False
        return not rendezvous.is_local(info) or rendezvous.pid_alive(info["pid"], info.get("pid_start"))

    def _send(self, frames):
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass  # no room towards the sidecar: the request's timeout sends it again

    def _receive(self, timeout, doing):
        """Wait up to `timeout` s for one message; returns (header, extra frames) or None."""
        events = dict(self.poller.poll(timeout * 1000))
        if self.monitor in events:
            event = recv_monitor_message(self.monitor)
            if event["event"] == zmq.EVENT_CONNECTED:
                self._reached = True
                return None
            name = getattr(event["event"], "name", event["event"])
            if event["event"] != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                raise SidecarError(f"{self.describe()} refused the connection ({name}): wrong or missing secret file")
            # the connection closed during the handshake: a wrong secret, or a sidecar that went away
            raise _TryFailed(f"refused the connection ({name}): wrong or missing secret file, or it went away",
                             SidecarError)
        if self.sock not in events:
            self._check_alive(doing)
            return None
        frames = self.sock.recv_multipart()
        self._last_heard = time.monotonic()
        try:
            head = protocol.decode_header(frames[0])
        except protocol.ProtocolError as exc:
            raise SidecarError(f"{self.describe()} sent a malformed reply: {exc}") from None
        if head["type"] == protocol.PONG:
            self._note_load(head)
        return head, frames[1:]

    def _note_load(self, pong):
        queue, rate = pong.get("queue"), pong.get("rate_tokens_per_s")
        tokens = queue.get("tokens") if isinstance(queue, dict) else None
        self.queued_tokens = tokens if isinstance(tokens, int) and tokens > 0 else 0
        self.rate = float(rate) if isinstance(rate, (int, float)) and rate > 0 else None

    def request_timeout_for(self, tokens):
        """Seconds to wait for a reply when `tokens` of this client's work are in flight (formula above)."""
        work = self.queued_tokens + tokens
        return min(self.max_request_timeout, self.request_timeout + work / (self.rate or ASSUMED_RATE))

    def _give_up_or_reconnect(self, tries_used, reason, doing, error=SidecarDied):
        if tries_used >= self.tries:
            raise error(f"{self.describe()} {reason} while {doing} (tried {tries_used} times); "
                        f"{getattr(reason, 'hint', None) or 'rerun / use --retries'}")
        self._reconnect()

    def _call(self, frames, timeout, doing):
        """Send one request and wait for the reply with the same id (pings/pongs in between are ignored)."""
        self.connect()
        request_id = protocol.decode_header(frames[0])["id"]
        self._last_heard = time.monotonic()
        self._send(frames)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = self._receive(min(POLL, max(deadline - time.monotonic(), 0)), doing)
            except _TryFailed as exc:
                raise exc.error(f"{self.describe()} {exc} while {doing}; {exc.hint or 'rerun / use --retries'}") from None
            if got and got[0]["id"] == request_id:
                return got[0]
        unreachable = self._unreachable(timeout)
        if unreachable:
            raise SidecarError(f"{self.describe()} {unreachable[0]} while {doing}; {unreachable[2]}")
        raise SidecarError(f"{self.describe()} did not answer within {timeout:g} s while {doing}")

    def _unreachable(self, seconds):
        """(why, error, what to check) for a TCP sidecar that no connection has reached; None once one did."""
        if self._reached:
            return None
        host, _, port = str(self.info["endpoint"])[len("tcp://"):].rpartition(":")
        here = rendezvous.hostname()
        return (f"could not be reached: no TCP connection to {host} port {port} from {here} in {seconds:g} s",
                SidecarDied, f"check that {host} is up and reachable from {here}, and that no firewall drops "
                f"port {port}; then rerun")

    # ---- simple requests ----------------------------------------------------------------------

    def ping(self, timeout=5.0, lease=None):
        """The pong header. `lease`: announce a lease file just written (sidecar.leases)."""
        return self._call(protocol.ping(lease=lease), timeout, "pinging")

    def status(self, timeout=10.0):
        head = self._call(protocol.status(), timeout, "asking for status")
        return {k: v for k, v in head.items() if k not in ("proto", "v", "type", "id")}

    def stop(self, timeout=10.0):
        return self._call(protocol.stop(), timeout, "asking it to stop")

    def wait_ready(self, timeout=None, doing="waiting for the models to load"):
        """Poll until the sidecar answers READY; returns the pong header. Raises on failure or timeout."""
        if self.models is not None:
            return self.models
        timeout = self.ready_timeout if timeout is None else timeout
        self.connect()
        deadline = time.monotonic() + timeout
        self._last_heard = time.monotonic()
        pending = None
        next_ping, interval = 0.0, 0.05
        lost = 0  # connections in a row that answered nothing
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise SidecarError(f"{self.describe()} was not ready within {timeout:g} s "
                                   f"(raise the client's ready timeout if the models are large)")
            if now >= next_ping:
                frames = protocol.ping()
                pending = protocol.decode_header(frames[0])["id"]
                self._send(frames)
                next_ping, interval = now + interval, min(interval * 2, 1.0)
            try:
                got = self._receive(min(POLL, max(next_ping - time.monotonic(), 0.01)), doing)
            except _TryFailed as exc:
                lost += 1
                self._give_up_or_reconnect(lost, exc, doing, exc.error)
                next_ping, interval = 0.0, 0.05
                continue
            lost = 0 if got else lost
            if not got or got[0]["id"] != pending:
                continue
            state = got[0].get("state")
            if state == protocol.READY:
                self.models = got[0].get("models", {})
                self.served = got[0].get("served", {})
                return self.models
            if state == protocol.FAILED:
                raise SidecarError(f"{self.describe()} could not load its models: {got[0].get('error')}")
            if state == protocol.DRAINING:
                raise SidecarDied(f"{self.describe()} is shutting down; rerun / use --retries")

    # ---- embedding ----------------------------------------------------------------------------

    def _chunks(self, model, seqs):
        """The requests' rows: the original's ESM-2 batches for an exact-mode sidecar (sidecar.exact_batches),
        else runs of at most max_request_seqs sequences and max_request_chars characters."""
        if model == "esm2" and (self.served or {}).get("mode") == "exact":
            yield from original_batches([len(s) for s in seqs])
            return
        start, chars = 0, 0
        for i, seq in enumerate(seqs):
            if i > start and (i - start >= self.max_request_seqs or chars + len(seq) > self.max_request_chars):
                yield list(range(start, i))
                start, chars = i, 0
            chars += len(seq)
        if start < len(seqs):
            yield list(range(start, len(seqs)))

    def _send_request(self, request, inflight):
        """(Re)send `request` with a fresh deadline; `inflight` already holds it."""
        request.sends += 1
        request.timeout = self.request_timeout_for(sum(r.tokens for r in inflight.values()))
        request.deadline = time.monotonic() + request.timeout
        self._send(request.frames)

    def embed(self, model, ids, seqs, label=None, part=None):
        """Embed `seqs` with `model` ("esm2" or "dnabert_s"); returns float32 [len(seqs), dim] in input order.
        `part`: a key shared by the requests of one unit of work (both models of a part), which the sidecar
        orders by when it first saw the key."""
        ids, seqs = [str(x) for x in ids], list(seqs)
        if len(ids) != len(seqs):
            raise SidecarError(f"{len(ids)} ids but {len(seqs)} sequences")
        doing = f"embedding {label}" if label else f"embedding {len(seqs)} sequence(s) with {model}"
        models = self.wait_ready(doing=doing)
        if model not in models:
            raise SidecarError(f"{self.describe()} does not serve {model!r} (it serves: {', '.join(models)})")
        out = np.empty((len(seqs), models[model]["dim"]), dtype=np.float32)
        todo = [_Request(chunk) for chunk in self._chunks(model, seqs)]  # not in flight: unsent, or answered BUSY
        inflight = {}  # request id -> _Request
        busy_since = None
        lost = 0  # connections in a row that answered nothing
        self._last_heard = time.monotonic()
        next_ping = self._last_heard + self.heartbeat
        while todo or inflight:
            now = time.monotonic()
            for request in [r for r in todo if r.retry_at <= now][:max(self.window - len(inflight), 0)]:
                todo.remove(request)
                if request.frames is None:
                    rows = request.chunk
                    request.id = protocol.new_request_id()
                    request.frames = protocol.embed(model, [ids[r] for r in rows], [seqs[r] for r in rows],
                                                    request_id=request.id, part=part)
                    request.tokens = sum(len(seqs[r]) + 2 for r in rows)
                inflight[request.id] = request
                self._send_request(request, inflight)
            if now >= next_ping:  # heartbeat: the sidecar proves it is alive by answering
                self._send(protocol.ping())
                next_ping = now + self.heartbeat
            try:
                got = self._receive(POLL, doing)
            except _TryFailed as exc:  # nothing heard: a new connection, the same requests
                lost += 1
                self._give_up_or_reconnect(max([lost] + [r.sends for r in inflight.values()]), exc, doing,
                                           exc.error)
                for request in inflight.values():
                    self._send_request(request, inflight)
                continue
            if got is not None:
                lost = 0
                head, extra = got
                request = inflight.pop(head["id"], None)  # None: a pong, or a reply to a request given up on
                if request is not None and head["type"] == protocol.RESULT:
                    self._store(out, request, head, extra, model, ids, doing)
                    busy_since = None
                elif request is not None:
                    busy_since = self._refused(request, head, busy_since, doing)
                    todo.insert(0, request)
            late = [r for r in inflight.values() if time.monotonic() >= r.deadline]
            if late:  # the sidecar answers pings but not this request: a new connection, the same requests
                self._give_up_or_reconnect(max(r.sends for r in late),
                                           f"did not answer a request within {round(late[0].timeout, 1):g} s", doing,
                                           error=SidecarError)
                for request in inflight.values():
                    self._send_request(request, inflight)
        return out

    def _refused(self, request, head, busy_since, doing):
        """A reply other than a result: schedule a retry of a retryable error (returns when the sidecar
        first said BUSY), raise for any other."""
        if head["type"] == protocol.ERROR and head.get("retryable"):
            now = time.monotonic()
            self.busy_replies += head.get("code") == protocol.BUSY
            busy_since = busy_since or now
            if now - busy_since > self.ready_timeout:
                raise SidecarError(f"{self.describe()} stayed busy for {self.ready_timeout:g} s while {doing}")
            request.busy += 1
            request.sends = 0  # it was answered: a new round of tries
            request.retry_at = now + min(0.02 * 2 ** request.busy, 2.0) * (0.5 + random.random())
            return busy_since
        if head["type"] == protocol.ERROR and head.get("code") == protocol.SHUTTING_DOWN:
            raise SidecarDied(f"{self.describe()} shut down while {doing}; rerun / use --retries")
        if head["type"] == protocol.ERROR:
            raise SidecarError(f"{self.describe()} refused a request while {doing}: "
                               f"{head.get('code')}: {head.get('message')}")
        raise SidecarError(f"{self.describe()} sent an unexpected {head['type']!r} reply while {doing}")

    def _store(self, out, request, head, extra, model, ids, doing):
        """Check a result (ids, width, every value finite) and copy it into `out`."""
        rows = request.chunk
        try:
            block = protocol.decode_result(head, extra, [ids[r] for r in rows])
        except protocol.ProtocolError as exc:
            raise SidecarError(f"{self.describe()} sent a bad result while {doing}: {exc}") from None
        if block.shape[1] != out.shape[1]:
            raise SidecarError(f"{self.describe()} sent {block.shape[1]}-wide {model} vectors while {doing}, "
                               f"expected {out.shape[1]}")
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if bad.size:
            raise SidecarError(f"{self.describe()} sent a non-finite {model} vector (NaN or infinity) for "
                               f"sequence {ids[rows[bad[0]]]!r} ({bad.size} such in the request) while {doing}")
        out[rows] = block
