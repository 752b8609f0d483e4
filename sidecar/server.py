"""The sidecar server: a ROUTER socket loop in the main thread, model loading and compute in one worker thread.

Lifecycle: bind -> write the endpoint file (before torch is even imported) -> load the models in the
worker thread while the loop already answers `ping` with "loading" -> "ready" -> serve -> stop on
SIGTERM/SIGINT, a `stop` request, an orphan condition (watched pid gone, endpoint file removed or taken
over) or the idle timeout -> drain accepted work (bounded by --drain-timeout), reject the rest, remove the
endpoint file and socket, exit 0. The socket loop never computes, so ping/status stay responsive while
the GPU works. Admission is bounded work: a message is checked against protocol.Limits before it is
parsed, and an embed request is tokenized a step at a time between looks at the socket, so a ping never
waits for more than one step; a bad request is answered `bad_request` and fails alone; nothing a client
sends ends the loop.
"""

import collections
import dataclasses
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from . import auth, protocol, rendezvous
from .batcher import Batcher, Busy, Closed, Job

log = logging.getLogger("sidecar")

TICK = 0.5  # seconds between housekeeping checks (orphan, idle, throughput log)
SOCKET_PREFIX = "virnucflow-sidecar-"
SWITCH_INTERVAL = 0.0005  # seconds; see run()
PIPELINE_DEPTH = 2  # batches launched on the device before the compute thread waits for the oldest
POLL = 0.001  # seconds the compute thread waits for new work while a launched batch runs
FAILED_LINGER = 10.0  # seconds a server whose models failed to load keeps explaining why before exiting
ADMIT_SLICE = 0.02  # seconds of tokenization in one loop turn, between two looks at the socket
ADMIT_STEP_CHARS = 65536  # sequence text tokenized in one step of an admission
ADMIT_BACKLOG = 16  # requests' worth of sequence text (at the size limit) that may wait to be tokenized


class StartupError(Exception):
    """The server cannot start (one-line message)."""


@dataclasses.dataclass
class ServeConfig:
    endpoint_file: str
    models: dict  # protocol model name -> (source, revision)
    device: str = "cpu"
    tcp: str = None  # "HOST:PORT"; None = local ipc socket
    secret_file: str = None
    socket_dir: str = None
    watch_pid: int = None
    idle_timeout: float = 0.0
    max_batch_tokens: int = 4096
    max_queued_tokens: int = 4_000_000
    max_queued_requests: int = 1024
    memory_fraction: float = None
    threads: int = None
    drain_timeout: float = 30.0
    log_interval: float = 30.0
    empty_cache_interval: float = 60.0
    limits: protocol.Limits = protocol.LIMITS  # what one message may hold (sizes, depth, sequence lengths)
    mode: str = None  # exact | fast; None = fast on CUDA, exact on CPU
    dedup_cache_mb: float = 1024.0  # per model; 0 disables deduplication
    dedup_cache_entries: int = None


class ModelStats:
    def __init__(self):
        self.requests = 0
        self.sequences = 0
        self.tokens = 0
        self.errors = 0
        self.compute_s = 0.0


class Server:
    def __init__(self, config):
        self.cfg = config
        self.pid = os.getpid()
        self.state = protocol.LOADING
        self.load_error = None
        self.backends = {}
        self.device = config.device
        if config.mode is None:
            from .backends import default_mode

            config.mode = default_mode(config.device)
        self.started = time.time()
        self.stats = {name: ModelStats() for name in config.models}
        # fast mode: DNABERT-S batches get 4x the budget (a 768-wide model needs more tokens per launch)
        per_model = {"dnabert_s": 4 * config.max_batch_tokens} if config.mode == "fast" else {}
        self.batcher = Batcher(config.max_batch_tokens, config.max_queued_tokens, config.max_queued_requests,
                               model_batch_tokens=per_model)
        self.stop_reason = None
        self.urgent = False
        self.last_activity = time.monotonic()
        self.outbox = collections.deque()
        self.admitting = collections.deque()  # checked embed requests being tokenized, oldest first
        self.admitting_chars = 0
        self.socket_dir = None
        self.endpoint = None
        self.authenticator = None
        self._worker_stop = threading.Event()
        self.loaded = threading.Event()  # set once loading has ended, well or badly
        self._tokens_since_log = collections.Counter()
        self._last_log = time.monotonic()
        self._failed_at = None
        self._watch_ticks = rendezvous.start_ticks(config.watch_pid) if config.watch_pid else None

    # ---- setup ------------------------------------------------------------------------------

    def _refuse_if_taken(self):
        try:
            info = rendezvous.read(self.cfg.endpoint_file)
        except rendezvous.RendezvousError:
            return
        if not rendezvous.is_local(info) or info["pid"] == self.pid:
            return
        if rendezvous.pid_alive(info["pid"], info.get("pid_start")):
            raise StartupError(f"endpoint file {self.cfg.endpoint_file} already names a running "
                               f"{rendezvous.describe(info)}; stop it first (sidecar stop --endpoint-file "
                               f"{self.cfg.endpoint_file})")
        # A predecessor killed with SIGKILL left its private socket directory behind: remove it.
        endpoint = str(info.get("endpoint", ""))
        if endpoint.startswith("ipc://"):
            stale = Path(endpoint[len("ipc://"):]).parent
            if stale.name.startswith(SOCKET_PREFIX) and stale.is_dir() and stale.stat().st_uid == os.getuid():
                shutil.rmtree(stale, ignore_errors=True)

    def _bind(self):
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 2000)
        self.router.setsockopt(zmq.MAXMSGSIZE, self.cfg.limits.max_message_bytes)
        auth_info = None
        if self.cfg.tcp:
            host, _, port = str(self.cfg.tcp).rpartition(":")
            host = host or "127.0.0.1"  # loopback unless told otherwise
            if not port.isdigit():
                raise StartupError(f"--tcp wants [HOST:]PORT, got {self.cfg.tcp!r}")
            if not self.cfg.secret_file:
                raise StartupError("--tcp needs --secret-file (created if missing): TCP is never open without a secret")
            try:
                keys = auth.load_or_create(self.cfg.secret_file)
            except auth.SecretError as exc:
                raise StartupError(str(exc)) from None
            self.authenticator = auth.setup_server(self.context, self.router, keys)
            try:
                self.router.bind(f"tcp://{host}:{port}")
            except zmq.ZMQError as exc:
                raise StartupError(f"cannot listen on {host}:{port}: {exc}") from None
            bound_port = self.router.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]
            public_host = rendezvous.hostname() if host in ("0.0.0.0", "*", "::") else host
            self.endpoint = f"tcp://{public_host}:{bound_port}"
            auth_info = {"mechanism": "curve", "secret_file": str(Path(self.cfg.secret_file).resolve()),
                         "server_public_key": keys["server_public"].decode("ascii")}
        else:
            base = self.cfg.socket_dir or _default_socket_base()
            self.socket_dir = tempfile.mkdtemp(prefix=SOCKET_PREFIX, dir=base)  # mode 0700
            os.chmod(self.socket_dir, stat.S_IRWXU)
            path = os.path.join(self.socket_dir, "socket")
            if len(path.encode()) > 100:
                raise StartupError(f"ipc socket path {path} is too long for the OS; use a shorter --socket-dir")
            old_umask = os.umask(0o077)
            try:
                self.router.bind(f"ipc://{path}")
            finally:
                os.umask(old_umask)
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
            self.endpoint = f"ipc://{path}"
        self.wake_recv = self.context.socket(zmq.PAIR)
        self.wake_recv.bind(f"inproc://wake-{id(self)}")
        self.wake_send = self.context.socket(zmq.PAIR)
        self.wake_send.connect(f"inproc://wake-{id(self)}")
        return auth_info

    def _write_rendezvous(self, auth_info):
        rendezvous.write(self.cfg.endpoint_file, {
            "protocol": protocol.PROTOCOL, "version": protocol.VERSION, "endpoint": self.endpoint,
            "pid": self.pid, "pid_start": rendezvous.start_ticks(self.pid), "host": rendezvous.hostname(),
            "models": {name: {"source": src, "revision": rev} for name, (src, rev) in self.cfg.models.items()},
            "device": self.cfg.device, "auth": auth_info, "started": self.started,
        })

    # ---- worker thread: load, then compute ----------------------------------------------------

    def _worker(self):
        try:
            from . import backends

            start = time.monotonic()
            self.device = backends.configure_device(self.cfg.device, self.cfg.memory_fraction, self.cfg.threads)
            for name, (source, revision) in self.cfg.models.items():
                backend = backends.make_backend(
                    name, source, device=self.device, revision=revision, mode=self.cfg.mode,
                    cache_bytes=int(self.cfg.dedup_cache_mb * 2**20), cache_entries=self.cfg.dedup_cache_entries,
                    max_batch_tokens=self.batcher.model_batch_tokens.get(name, self.cfg.max_batch_tokens))
                backend.load()
                log.info("loaded %s from %s: %s, dim %d, %s mode, %.2f s", name, source, backend.name, backend.dim,
                         self.cfg.mode, backend.load_seconds)
                self.backends[name] = backend
            self.loaded.set()
            if self.state == protocol.LOADING:
                self.state = protocol.READY
            self.last_activity = time.monotonic()
            log.info("ready on %s after %.2f s (endpoint %s)", self.device, time.monotonic() - start, self.endpoint)
        except BaseException as exc:  # a broken model or device: say why, then exit after FAILED_LINGER
            self.load_error = " ".join(f"{exc.__class__.__name__}: {exc}".split())[:500]
            self.state = protocol.FAILED
            self.loaded.set()
            log.error("model loading failed: %s", self.load_error)
            self._wake()
            return
        last_release = time.monotonic()
        inflight = collections.deque()  # (batch, backend, launched run) in launch order
        settled = time.monotonic()  # when the compute thread last finished a batch or sat idle
        while not self._worker_stop.is_set():
            # Launch up to PIPELINE_DEPTH batches before waiting for the oldest, so that the GPU runs one
            # batch while this thread prepares the next and scatters the last.
            batch = self.batcher.next_batch(timeout=POLL if inflight else TICK)
            now = time.monotonic()
            if batch is not None:
                if not inflight:
                    settled = now
                backend = self.backends[batch.model]
                try:
                    run = backend.launch_rows(batch.seqs, batch.token_ids)
                except BaseException as exc:  # noqa: BLE001 - reported per row
                    run = exc
                inflight.append((batch, backend, run))
                if len(inflight) < PIPELINE_DEPTH:
                    continue
            elif not inflight:
                if now - last_release > self.cfg.empty_cache_interval:
                    backends.release_cache(self.device)
                    last_release = now
                continue
            elif not _ready(inflight[0][2]):
                continue  # the device is still busy: keep looking for work to queue behind it
            batch, backend, run = inflight.popleft()
            try:
                if isinstance(run, BaseException):
                    raise run
                matrix, errors = backend.collect(run)
            except BaseException as exc:  # noqa: BLE001
                matrix, errors = _rows_alone(backend, batch, exc)
            done = time.monotonic()
            elapsed, settled = done - settled, done  # busy time since the last batch finished
            for job, row in batch.parts:
                job.compute_s += elapsed * job.tokens[row] / max(batch.tokens, 1)
            finished = self.batcher.complete(batch, matrix, errors)
            if not inflight and done - last_release > self.cfg.empty_cache_interval:
                backends.release_cache(self.device)
                last_release = time.monotonic()
            if finished:
                self.outbox.extend(finished)
                self._wake()

    def _wake(self):
        with self._wake_lock:
            self.wake_send.send(b"")

    # ---- socket loop --------------------------------------------------------------------------

    def serve(self):
        """Run until stopped; returns the process exit code."""
        self._refuse_if_taken()
        self._wake_lock = threading.Lock()
        try:
            self._write_rendezvous(self._bind())
            log.info("pid %d bound %s, endpoint file %s; loading %s on %s", self.pid, self.endpoint,
                     self.cfg.endpoint_file, ", ".join(self.cfg.models), self.cfg.device)
            self._install_signals()
            worker = threading.Thread(target=self._worker, name="sidecar-compute", daemon=True)
            worker.start()
            code = self._loop()
            self._worker_stop.set()
            if self.loaded.is_set():  # a model load cannot be interrupted: do not wait for one
                worker.join(timeout=2.0)
            return code
        finally:
            self._cleanup()

    def _install_signals(self):
        def handler(signum, _frame):
            name = signal.Signals(signum).name
            if self.stop_reason is None:
                self.stop_reason = f"{name} received"
            else:
                self.urgent = True
                self.stop_reason = f"second signal ({name})"

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _loop(self):
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.wake_recv, zmq.POLLIN)
        next_tick = time.monotonic()
        drain_deadline = None
        while True:
            events = dict(poller.poll(timeout=0 if self.admitting else TICK * 1000))
            now = time.monotonic()
            if self.wake_recv in events:
                while True:
                    try:
                        self.wake_recv.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            if self.stop_reason and drain_deadline is None and self.state != protocol.FAILED:
                # before reading new requests, so that none is accepted after a stop was asked for
                log.info("stopping: %s; draining %d queued request(s)", self.stop_reason,
                         self.batcher.depth()["requests"])
                self.state = protocol.DRAINING
                self.batcher.close()
                while self.admitting:  # not accepted yet: refused like any request from now on
                    entry = self.admitting.popleft()
                    self._reply(entry.identity, protocol.error(entry.request_id, protocol.SHUTTING_DOWN,
                                                               "the sidecar is shutting down"))
                self.admitting_chars = 0
                drain_deadline = now + (0.0 if self.urgent else self.cfg.drain_timeout)
            self._send_finished()
            if self.router in events:
                for _ in range(1000):  # bounded so the outbox keeps flowing under a flood of requests
                    # Reading EVENTS makes libzmq take in newly readable peers now; recv alone does so only
                    # every 100 messages, so a ping would wait behind a whole backlog of one busy client.
                    self.router.getsockopt(zmq.EVENTS)
                    try:
                        frames = self.router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        self._handle(frames)
                    except Exception:  # noqa: BLE001 - _handle answers its own errors; this is the last guard
                        log.exception("message of %d frame(s) not handled", len(frames))
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
                    self.outbox.extend(cancelled)
                    self._send_finished()
                # the batch the worker holds still finishes; give it a bounded grace
                if self.batcher.depth()["requests"] == 0 or now >= drain_deadline + 60.0:
                    return 0
            elif self.batcher.depth()["requests"] == 0:
                return 0

    def _housekeeping(self, now):
        if self.stop_reason is None:
            reason = self._orphan_reason(now)
            if reason:
                self.stop_reason = reason
        if now - self._last_log >= self.cfg.log_interval:
            span = now - self._last_log
            depth = self.batcher.depth()
            if not sum(self._tokens_since_log.values()) and not depth["requests"]:
                self._last_log = now
                return  # nothing to report while idle
            rates = ", ".join(f"{name} {self._tokens_since_log[name] / span:.0f} tok/s" for name in self.stats)
            log.info("throughput: %s; queue %d request(s), %d tokens", rates, depth["requests"], depth["tokens"])
            self._tokens_since_log.clear()
            self._last_log = now

    def _orphan_reason(self, now):
        if self.cfg.watch_pid and not rendezvous.pid_alive(self.cfg.watch_pid, self._watch_ticks):
            return f"watched pid {self.cfg.watch_pid} is gone"
        try:
            info = rendezvous.read(self.cfg.endpoint_file)
        except rendezvous.RendezvousError:
            return f"endpoint file {self.cfg.endpoint_file} was removed"
        if info.get("pid") != self.pid:
            return f"endpoint file {self.cfg.endpoint_file} now names pid {info.get('pid')}"
        if (self.cfg.idle_timeout and self.state == protocol.READY and self.batcher.depth()["requests"] == 0
                and now - self.last_activity > self.cfg.idle_timeout):
            return f"idle for {self.cfg.idle_timeout:g} s"
        return None

    # ---- requests -----------------------------------------------------------------------------

    def _reply(self, identity, frames):
        try:
            self.router.send_multipart([identity] + frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # client gone or its pipe full: nothing to do but note it
            log.warning("reply to client %s dropped: %s", identity.hex(), exc)

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
            self._reply(identity, protocol.pong(request_id, self.state, **self._pong_fields()))
        elif kind == protocol.STATUS:
            self._reply(identity, protocol.status_reply(request_id, self.status()))
        elif kind == protocol.STOP:
            self._reply(identity, protocol.stopping(request_id))
            if self.stop_reason is None:
                self.stop_reason = "stop request"
        elif kind == protocol.EMBED:
            self._handle_embed(identity, head, extra)
        else:
            raise protocol.ProtocolError(f"unknown request type {kind[:40]!r}")

    def _handle_embed(self, identity, head, extra):
        request_id = head["id"]
        if self.state == protocol.LOADING:
            self._reply(identity, protocol.error(request_id, protocol.NOT_READY, "models are still loading"))
            return
        if self.state == protocol.FAILED:
            self._reply(identity, protocol.error(request_id, protocol.LOAD_FAILED,
                                                 f"the sidecar could not load its models: {self.load_error}"))
            return
        if self.state == protocol.DRAINING:
            self._reply(identity, protocol.error(request_id, protocol.SHUTTING_DOWN, "the sidecar is shutting down"))
            return
        # Admission: every sequence is checked here and tokenized by _admit, so that a bad one fails its own
        # request and never a batch it would have shared with others.
        model, ids, seqs = protocol.check_embed_request(head, extra, list(self.backends), self.cfg.limits)
        chars = sum(map(len, seqs))
        if self.admitting and self.admitting_chars + chars > ADMIT_BACKLOG * self.cfg.limits.max_request_chars:
            self._reply(identity, protocol.error(request_id, protocol.BUSY,
                                                 "too many requests waiting to be tokenized"))
            return
        self.admitting.append(_Admission(identity, request_id, model, ids, seqs, chars))
        self.admitting_chars += chars
        self.last_activity = time.monotonic()

    def _admit(self):
        """Tokenize waiting requests for at most ADMIT_SLICE seconds, a step of ADMIT_STEP_CHARS at a time,
        and hand each complete one to the batcher: a ping waits for one step, never for a whole request."""
        deadline = time.monotonic() + ADMIT_SLICE
        while self.admitting and time.monotonic() < deadline:
            entry = self.admitting[0]
            try:
                entry.step(self.backends[entry.model])
            except Exception as exc:  # noqa: BLE001 - the model's tokenizer refused this request's text
                self._admitted()
                self._reply(entry.identity, protocol.error(entry.request_id, protocol.BAD_REQUEST,
                                                           f"cannot tokenize: {exc.__class__.__name__}: {exc}"))
                continue
            if entry.done:
                self._admitted()
                try:
                    self._submit(entry)
                except Exception as exc:  # noqa: BLE001 - never the loop's end
                    log.exception("internal error admitting request %r", entry.request_id[:40])
                    self._reply(entry.identity, protocol.error(entry.request_id, protocol.INTERNAL,
                                                               f"internal error ({exc.__class__.__name__}); "
                                                               f"see the sidecar log"))

    def _admitted(self):
        self.admitting_chars -= self.admitting.popleft().chars

    def _submit(self, entry):
        job = Job(entry.model, entry.ids, entry.seqs, entry.tokens, self.backends[entry.model].dim,
                  context=(entry.identity, entry.request_id), token_ids=entry.token_ids)
        self.last_activity = time.monotonic()
        try:
            self.batcher.submit(job)
        except Busy as exc:
            self._reply(entry.identity, protocol.error(entry.request_id, protocol.BUSY, exc))
        except Closed as exc:
            self._reply(entry.identity, protocol.error(entry.request_id, protocol.SHUTTING_DOWN, exc))

    def _send_finished(self):
        while self.outbox:
            job = self.outbox.popleft()
            identity, request_id = job.context
            stats = self.stats[job.model]
            queue_wait = (job.started or job.finished) - job.submitted
            compute = job.compute_s
            if job.error is None:
                timing = {"queue_wait_s": round(queue_wait, 6), "compute_s": round(compute, 6),
                          "tokens": job.total_tokens}
                self._reply(identity, protocol.result(request_id, job.model, job.ids, job.result, timing))
                stats.requests += 1
                stats.sequences += len(job.seqs)
                stats.tokens += job.total_tokens
                stats.compute_s += compute
                self._tokens_since_log[job.model] += job.total_tokens
                outcome = "ok"
            else:
                code = protocol.SHUTTING_DOWN if job.cancelled else protocol.INTERNAL
                self._reply(identity, protocol.error(request_id, code, job.error))
                stats.errors += 1
                outcome = f"error ({job.error})"
            self.batcher.release(job)
            self.last_activity = time.monotonic()
            log.info("embed %s client=%s model=%s seqs=%d tokens=%d queue_wait=%.4fs compute=%.4fs total=%.4fs %s",
                     request_id[:12], identity.hex()[:10], job.model, len(job.seqs), job.total_tokens, queue_wait,
                     compute, job.finished - job.submitted, outcome)

    # ---- reports ------------------------------------------------------------------------------

    def _pong_fields(self):
        fields = {"pid": self.pid}
        if self.state in (protocol.READY, protocol.DRAINING):
            fields["models"] = {name: {"dim": b.dim, "name": b.name} for name, b in self.backends.items()}
        if self.load_error:
            fields["error"] = self.load_error
        return fields

    def status(self):
        models = {}
        for name, (source, revision) in self.cfg.models.items():
            backend = self.backends.get(name)
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
        if self.loaded.is_set() and self.state != protocol.FAILED:
            from . import backends

            cuda = backends.cuda_memory(self.device)
            if cuda:
                memory["cuda"] = cuda
        depth = self.batcher.depth()
        return {
            "state": self.state, "pid": self.pid, "host": rendezvous.hostname(), "endpoint": self.endpoint,
            "device": self.device, "mode": self.cfg.mode, "uptime_s": round(time.time() - self.started, 3), "models": models,
            "memory": memory, "error": self.load_error,
            "queue": {"requests": depth["requests"], "tokens": depth["tokens"], "admitting": len(self.admitting),
                      "max_batch_tokens": self.cfg.max_batch_tokens,
                      "max_queued_tokens": self.cfg.max_queued_tokens,
                      "max_queued_requests": self.cfg.max_queued_requests},
            "idle_timeout": self.cfg.idle_timeout, "watch_pid": self.cfg.watch_pid,
            "limits": dataclasses.asdict(self.cfg.limits),
        }

    # ---- teardown -----------------------------------------------------------------------------

    def _cleanup(self):
        removed = rendezvous.remove_if_ours(self.cfg.endpoint_file, self.pid)
        if self.socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        if self.authenticator is not None:
            self.authenticator.stop()
        for sock in ("wake_send", "wake_recv", "router"):
            if hasattr(self, sock):
                getattr(self, sock).close()
        if hasattr(self, "context"):
            self.context.term()
        log.info("stopped (%s); endpoint file %s", self.stop_reason or self.load_error or "exit",
                 "removed" if removed else "left to its new owner or already gone")


class _Admission:
    """A checked embed request on its way into the batcher: its token counts (and, for fast models, token
    ids) so far, made a step at a time."""

    def __init__(self, identity, request_id, model, ids, seqs, chars):
        self.identity, self.request_id, self.model, self.ids, self.seqs, self.chars = (
            identity, request_id, model, ids, seqs, chars)
        self.tokens, self.token_ids = [], []

    @property
    def done(self):
        return len(self.tokens) == len(self.seqs)

    def step(self, backend):
        start = end = len(self.tokens)
        size = 0
        while end < len(self.seqs) and (end == start or size + len(self.seqs[end]) <= ADMIT_STEP_CHARS):
            size += len(self.seqs[end])
            end += 1
        counts, arrays = backend.tokenize_many(self.seqs[start:end])
        self.tokens += counts
        self.token_ids = None if arrays is None or self.token_ids is None else self.token_ids + list(arrays)


def _ready(run):
    return isinstance(run, BaseException) or run.ready()


def _one_line(exc):
    return " ".join(f"{exc.__class__.__name__}: {exc}".split())[:500]


def _rows_alone(backend, batch, exc):
    """A batch failed as a whole: embed its rows one at a time, so that a row fails only if it fails alone
    and no request loses its vectors to a batch mate. Returns (matrix, {row: one-line error})."""
    if len(batch) == 1:
        return None, {0: _one_line(exc)}
    import numpy as np

    token_ids = batch.token_ids
    matrix, errors = np.zeros((len(batch), backend.dim), dtype=np.float32), {}
    for row, seq in enumerate(batch.seqs):
        try:
            vectors, row_errors = backend.embed_rows([seq], None if token_ids is None else [token_ids[row]])
        except Exception as row_exc:  # noqa: BLE001
            vectors, row_errors = None, {0: _one_line(row_exc)}
        if row_errors:
            errors[row] = row_errors[0]
        else:
            matrix[row] = vectors[0]
    return matrix, errors


def _default_socket_base():
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return runtime
    return tempfile.gettempdir()


def _rss_bytes():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(config):
    """Entry point of `sidecar serve`: returns the exit code. Call before torch is imported."""
    from .backends import prepare_torch_environment

    prepare_torch_environment()
    # The compute thread issues many short GPU launches, each needing the GIL; with the default 5 ms switch
    # interval a busy socket thread (decoding, tokenizing) makes it wait up to 5 ms per hand-over.
    sys.setswitchinterval(SWITCH_INTERVAL)
    code = Server(config).serve()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # The worker may still be inside a model load that cannot be interrupted: do not wait for it.
    os._exit(code)
