"""Where a sidecar listens: its ROUTER socket (a private ipc socket, or TCP behind CURVE) and its endpoint file.

The endpoint file is written right after the bind, before any model loads, so that clients find the
server at once and wait for its readiness themselves. A file that names another live sidecar, or that
may be another user's, stops the start with one line.
"""

import os
import shutil
import stat
import tempfile
from pathlib import Path

import zmq

from . import auth, protocol, rendezvous, safe_files

SOCKET_PREFIX = "virnucflow-sidecar-"


class StartupError(Exception):
    """The server cannot start (one-line message)."""


def refuse_if_taken(endpoint_file, pid):
    """Raise StartupError if the endpoint file names another live sidecar (or is unsafe); clean up after a
    predecessor killed with SIGKILL."""
    try:
        info = rendezvous.read(endpoint_file)
    except rendezvous.RendezvousError:
        return
    except safe_files.UnsafePath as exc:
        raise StartupError(str(exc)) from None
    if not rendezvous.is_local(info) or info["pid"] == pid:
        return
    if rendezvous.pid_alive(info["pid"], info.get("pid_start")):
        raise StartupError(f"endpoint file {endpoint_file} already names a running {rendezvous.describe(info)}; "
                           f"stop it first (sidecar stop --endpoint-file {endpoint_file})")
    endpoint = str(info.get("endpoint", ""))
    if endpoint.startswith("ipc://"):  # the dead predecessor's private socket directory
        stale = Path(endpoint[len("ipc://"):]).parent
        try:
            safe_files.check_path(stale, "socket directory", "directory")
        except (OSError, safe_files.UnsafePath):
            return
        if stale.name.startswith(SOCKET_PREFIX):
            shutil.rmtree(stale, ignore_errors=True)


class Listener:
    """The bound ROUTER socket, the in-process pair that wakes the socket loop, and what clients need to know."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.socket_dir = self.authenticator = None
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 2000)
        self.router.setsockopt(zmq.MAXMSGSIZE, cfg.limits.max_message_bytes)
        self.wake_recv = self.context.socket(zmq.PAIR)
        self.wake_recv.bind(f"inproc://wake-{id(self)}")
        self.wake_send = self.context.socket(zmq.PAIR)
        self.wake_send.connect(f"inproc://wake-{id(self)}")
        try:
            self.auth_info = self._bind_tcp() if cfg.tcp else self._bind_ipc()
        except BaseException:
            self.close(pid=None)
            raise

    def _bind_tcp(self):
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
        return {"mechanism": "curve", "secret_file": str(Path(self.cfg.secret_file).resolve()),
                "server_public_key": keys["server_public"].decode("ascii")}

    def _bind_ipc(self):
        base = self.cfg.socket_dir or _default_socket_base()
        self.socket_dir = tempfile.mkdtemp(prefix=SOCKET_PREFIX, dir=base)  # new, ours, mode 0700
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
        return None

    def write_endpoint_file(self, pid, started):
        rendezvous.write(self.cfg.endpoint_file, {
            "protocol": protocol.PROTOCOL, "version": protocol.VERSION, "endpoint": self.endpoint,
            "pid": pid, "pid_start": rendezvous.start_ticks(pid), "host": rendezvous.hostname(),
            "models": {name: {"source": src, "revision": rev} for name, (src, rev) in self.cfg.models.items()},
            "device": self.cfg.device, "auth": self.auth_info, "started": started,
        })

    def close(self, pid):
        """Close the sockets and remove the endpoint file (if it still names `pid`); True if removed."""
        removed = pid is not None and rendezvous.remove_if_ours(self.cfg.endpoint_file, pid)
        if self.socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        if self.authenticator is not None:
            self.authenticator.stop()
        for sock in (self.wake_send, self.wake_recv, self.router):
            sock.close()
        self.context.term()
        return removed


def _default_socket_base():
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return runtime
    return tempfile.gettempdir()
