"""Start a sidecar only if none is running: idempotent, race-free (flock), fully detached.

`ensure_sidecar` is what a workflow rule or a self-healing client calls. It returns as soon as the new
server has bound its socket and answers ping (wait="bound"), not when its models are loaded: clients do
their own readiness wait. An endpoint file, lock or log that may be another user's (safe_files) is
refused, never used nor replaced. Standard library, pyzmq and numpy only.
"""

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from . import protocol, rendezvous, safe_files
from .client import SidecarClient, SidecarError, SidecarNotOurs


def probe(endpoint_file, timeout=5.0):
    """The pong of the live sidecar named by `endpoint_file`, or None if there is none.

    Raises SidecarError when the named process runs on this host but does not answer, SidecarNotOurs (or
    safe_files.UnsafePath) when the file or its server may be another user's.
    """
    try:
        info = rendezvous.read(endpoint_file)
    except rendezvous.RendezvousError:
        return None
    if rendezvous.is_local(info) and not rendezvous.pid_alive(info["pid"], info.get("pid_start")):
        return None
    client = SidecarClient(endpoint_file)
    try:
        pong = client.ping(timeout=timeout)
    except SidecarNotOurs:
        raise
    except SidecarError as exc:
        if rendezvous.is_local(info) and rendezvous.pid_alive(info["pid"], info.get("pid_start")):
            raise SidecarError(f"{rendezvous.describe(info)} runs but does not answer ({exc}); "
                               f"stop it (kill {info['pid']}) or remove {endpoint_file}") from None
        return None
    finally:
        client.close()
    if pong.get("state") in (protocol.FAILED, protocol.DRAINING):
        return None
    return pong


def _lock(path, timeout):
    handle = os.fdopen(safe_files.open_append(path, "lock file"), "a")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise SidecarError(f"could not lock {path} within {timeout:g} s (another launcher hangs?)") from None
            time.sleep(0.05)


def _log_tail(path, lines=3):
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def ensure_sidecar(endpoint_file, serve_args=(), watch_pid=None, wait="bound", timeout=120.0, log_file=None,
                   python=None):
    """Make sure a sidecar answers at `endpoint_file`; start `python -m sidecar serve SERVE_ARGS` if not.

    serve_args: the `sidecar serve` options other than --endpoint-file and --watch-pid (e.g.
    ["--esm2", SRC, "--dnabert-s", SRC, "--device", "cuda:0"]). watch_pid: the new server exits when
    this process is gone. wait: "bound" (socket bound, endpoint file written) or "ready" (models loaded).
    log_file: the server's log, which also gets its stdout/stderr (default: <endpoint_file>.log). Returns the endpoint file's
    contents. Raises SidecarError (one line) if it cannot.
    """
    if wait not in ("bound", "ready"):
        raise ValueError("wait must be 'bound' or 'ready'")
    endpoint_file = Path(endpoint_file)
    try:
        safe_files.make_dir(endpoint_file.parent)
        if probe(endpoint_file) is None:
            handle = _lock(f"{endpoint_file}.lock", timeout)
            try:
                if probe(endpoint_file) is None:  # nobody started one while we waited for the lock
                    _wait_gone(endpoint_file, timeout)
                    _start(endpoint_file, serve_args, watch_pid, timeout, log_file, python)
            finally:
                handle.close()
        if wait == "ready":
            client = SidecarClient(endpoint_file, ready_timeout=timeout)
            try:
                client.wait_ready()
            finally:
                client.close()
        return rendezvous.read(endpoint_file)
    except safe_files.UnsafePath as exc:
        raise SidecarNotOurs(str(exc)) from None


def _wait_gone(endpoint_file, timeout):
    """A sidecar that is stopping or failed still owns the endpoint file until it exits: wait for that."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = rendezvous.read(endpoint_file)
        except rendezvous.RendezvousError:
            return
        if not rendezvous.is_local(info) or not rendezvous.pid_alive(info["pid"], info.get("pid_start")):
            return
        if time.monotonic() > deadline:
            raise SidecarError(f"{rendezvous.describe(info)} is stopping but did not exit within {timeout:g} s")
        time.sleep(0.1)


def _start(endpoint_file, serve_args, watch_pid, timeout, log_file, python):
    log_file = Path(log_file or f"{endpoint_file}.log")
    command = [python or sys.executable, "-m", "sidecar", "serve", *map(str, serve_args),
               "--endpoint-file", str(endpoint_file), "--log", str(log_file)]
    if watch_pid:
        command += ["--watch-pid", str(watch_pid)]
    log = safe_files.open_append(log_file, "log file")
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True)
    finally:
        os.close(log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SidecarError(f"sidecar exited with code {process.returncode} at start: "
                               f"{_log_tail(log_file) or 'no output'} (log {log_file})")
        try:
            info = rendezvous.read(endpoint_file)
        except rendezvous.RendezvousError:
            info = None
        if info and info.get("pid") == process.pid:
            client = SidecarClient(endpoint_file)
            try:
                client.ping(timeout=2.0)
                return process.pid
            except SidecarError:
                pass
            finally:
                client.close()
        time.sleep(0.05)
    raise SidecarError(f"sidecar pid {process.pid} did not bind within {timeout:g} s (log {log_file})")
