"""The client shim of the per-file jobs: send sequences to a running sidecar, get float32 matrices back.

Imports only the standard library, pyzmq and numpy (never torch), so a per-file job starts in a fraction
of a second. It waits for readiness with its own generous timeout (models may take minutes to load),
splits large inputs into several requests kept a few at a time in flight, retries BUSY with backoff,
checks the ids of every reply, and, while it waits, watches the sidecar: a dead sidecar process, a
refused CURVE handshake or a silent remote server ends the wait with a one-line SidecarError.

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

POLL = 0.2  # seconds per wait slice; liveness is checked between slices


class SidecarError(Exception):
    """Anything that stops the client from getting its vectors; the message is one line for the user."""


class SidecarDied(SidecarError):
    """The sidecar process went away: rerunning (or Snakemake's --retries) with a new sidecar recovers."""

    exit_code = 3  # what the command line exits with, so that a retry can tell this from a real error


class SidecarNotOurs(SidecarError):
    """The endpoint file, or the server it names, may belong to another user: never used nor replaced."""


class SidecarClient:
    """A connection to the sidecar named by an endpoint file.

    ready_timeout: seconds to wait for the models to load (and for a BUSY queue to accept a request);
    heartbeat: seconds between pings while waiting; silent_timeout: a sidecar whose process cannot be
    checked (another host) is declared gone after this many seconds without any message;
    max_request_seqs / max_request_chars: split inputs into requests no larger than this;
    window: requests kept in flight at once; secret_file: overrides the one named in the endpoint file.
    """

    def __init__(self, endpoint_file, ready_timeout=1800.0, heartbeat=2.0, silent_timeout=60.0,
                 max_request_seqs=1024, max_request_chars=1_048_576, window=4, secret_file=None, context=None):
        self.endpoint_file = str(endpoint_file)
        self.ready_timeout = ready_timeout
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
        self.busy_replies = 0  # how often the server said BUSY (for tests and logs)

    # ---- connection -------------------------------------------------------------------------

    def connect(self):
        if self.sock is not None:
            return self
        try:
            self.info = rendezvous.read(self.endpoint_file)
        except rendezvous.RendezvousError as exc:
            raise SidecarError(str(exc)) from None
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
                                               | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
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

    def close(self):
        if self.sock is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.sock.close(linger=0)
            self.sock = None
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None
        if self._socket_dir_fd is not None:
            os.close(self._socket_dir_fd)
            self._socket_dir_fd = None

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    def describe(self):
        return rendezvous.describe(self.info) if self.info else f"sidecar of {self.endpoint_file}"

    # ---- the wait primitive -------------------------------------------------------------------

    def _check_alive(self, doing):
        """Raise SidecarDied if the sidecar process is gone or the endpoint file no longer names it."""
        now = time.monotonic()
        if now - self._last_check < 0.5:
            return
        self._last_check = now
        if rendezvous.is_local(self.info):
            if not rendezvous.pid_alive(self.info["pid"], self.info.get("pid_start")):
                raise SidecarDied(f"{self.describe()} died while {doing}; rerun / use --retries")
        elif now - self._last_heard > self.silent_timeout:
            raise SidecarDied(f"{self.describe()} on {self.info['host']} has not answered for "
                              f"{self.silent_timeout:g} s while {doing}; rerun / use --retries")

    def _receive(self, timeout, doing):
        """Wait up to `timeout` s for one message; returns (header, extra frames) or None."""
        events = dict(self.poller.poll(timeout * 1000))
        if self.monitor in events:
            event = recv_monitor_message(self.monitor)
            name = getattr(event["event"], "name", event["event"])
            raise SidecarError(f"{self.describe()} refused the connection ({name}): wrong or missing secret file")
        self._check_alive(doing)
        if self.sock not in events:
            return None
        frames = self.sock.recv_multipart()
        self._last_heard = time.monotonic()
        try:
            head = protocol.decode_header(frames[0])
        except protocol.ProtocolError as exc:
            raise SidecarError(f"{self.describe()} sent a malformed reply: {exc}") from None
        return head, frames[1:]

    def _call(self, frames, timeout, doing):
        """Send one request and wait for the reply with the same id (pings/pongs in between are ignored)."""
        self.connect()
        request_id = protocol.decode_header(frames[0])["id"]
        self.sock.send_multipart(frames)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self._receive(min(POLL, max(deadline - time.monotonic(), 0)), doing)
            if got and got[0]["id"] == request_id:
                return got[0]
        raise SidecarError(f"{self.describe()} did not answer within {timeout:g} s while {doing}")

    # ---- simple requests ----------------------------------------------------------------------

    def ping(self, timeout=5.0):
        return self._call(protocol.ping(), timeout, "pinging")

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
        pending = None
        next_ping, interval = 0.0, 0.05
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise SidecarError(f"{self.describe()} was not ready within {timeout:g} s "
                                   f"(raise the client's ready timeout if the models are large)")
            if now >= next_ping:
                frames = protocol.ping()
                pending = protocol.decode_header(frames[0])["id"]
                self.sock.send_multipart(frames)
                next_ping, interval = now + interval, min(interval * 2, 1.0)
            got = self._receive(min(POLL, max(next_ping - time.monotonic(), 0.01)), doing)
            if not got or got[0]["id"] != pending:
                continue
            state = got[0].get("state")
            if state == protocol.READY:
                self.models = got[0].get("models", {})
                return self.models
            if state == protocol.FAILED:
                raise SidecarError(f"{self.describe()} could not load its models: {got[0].get('error')}")
            if state == protocol.DRAINING:
                raise SidecarDied(f"{self.describe()} is shutting down; rerun / use --retries")

    # ---- embedding ----------------------------------------------------------------------------

    def _chunks(self, seqs):
        start, chars = 0, 0
        for i, seq in enumerate(seqs):
            if i > start and (i - start >= self.max_request_seqs or chars + len(seq) > self.max_request_chars):
                yield start, i
                start, chars = i, 0
            chars += len(seq)
        if start < len(seqs):
            yield start, len(seqs)

    def embed(self, model, ids, seqs, label=None):
        """Embed `seqs` with `model` ("esm2" or "dnabert_s"); returns float32 [len(seqs), dim] in input order."""
        ids, seqs = [str(x) for x in ids], list(seqs)
        if len(ids) != len(seqs):
            raise SidecarError(f"{len(ids)} ids but {len(seqs)} sequences")
        doing = f"embedding {label}" if label else f"embedding {len(seqs)} sequence(s) with {model}"
        models = self.wait_ready(doing=doing)
        if model not in models:
            raise SidecarError(f"{self.describe()} does not serve {model!r} (it serves: {', '.join(models)})")
        out = np.empty((len(seqs), models[model]["dim"]), dtype=np.float32)
        todo = list(self._chunks(seqs))  # (start, end) still to send
        retry_at = {}  # chunk -> monotonic time before which it is not resent
        attempts = {}
        inflight = {}  # request id -> chunk
        busy_since = None
        next_ping = time.monotonic() + self.heartbeat
        while todo or inflight:
            now = time.monotonic()
            ready = [c for c in todo if retry_at.get(c, 0) <= now]
            while ready and len(inflight) < self.window:
                chunk = ready.pop(0)
                todo.remove(chunk)
                frames = protocol.embed(model, ids[chunk[0]:chunk[1]], seqs[chunk[0]:chunk[1]])
                inflight[protocol.decode_header(frames[0])["id"]] = chunk
                self.sock.send_multipart(frames)
            if now >= next_ping:  # heartbeat: a remote sidecar proves it is alive by answering
                self.sock.send_multipart(protocol.ping())
                next_ping = now + self.heartbeat
            got = self._receive(POLL, doing)
            if got is None:
                continue
            head, extra = got
            chunk = inflight.pop(head["id"], None)
            if chunk is None:
                continue  # a pong or a reply to a request given up on
            if head["type"] == protocol.RESULT:
                try:
                    out[chunk[0]:chunk[1]] = protocol.decode_result(head, extra, ids[chunk[0]:chunk[1]])
                except protocol.ProtocolError as exc:
                    raise SidecarError(f"{self.describe()} sent a bad result while {doing}: {exc}") from None
                busy_since = None
            elif head["type"] == protocol.ERROR and head.get("retryable"):
                self.busy_replies += head.get("code") == protocol.BUSY
                busy_since = busy_since or now
                if now - busy_since > self.ready_timeout:
                    raise SidecarError(f"{self.describe()} stayed busy for {self.ready_timeout:g} s while {doing}")
                attempts[chunk] = attempts.get(chunk, 0) + 1
                delay = min(0.02 * 2 ** attempts[chunk], 2.0) * (0.5 + random.random())
                retry_at[chunk] = now + delay
                todo.insert(0, chunk)
            elif head["type"] == protocol.ERROR and head.get("code") == protocol.SHUTTING_DOWN:
                raise SidecarDied(f"{self.describe()} shut down while {doing}; rerun / use --retries")
            elif head["type"] == protocol.ERROR:
                raise SidecarError(f"{self.describe()} refused a request while {doing}: "
                                   f"{head.get('code')}: {head.get('message')}")
            else:
                raise SidecarError(f"{self.describe()} sent an unexpected {head['type']!r} reply while {doing}")
        return out
