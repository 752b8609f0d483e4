"""The endpoint ("rendezvous") file: where a sidecar listens and which process it is; plus pid liveness.

Written atomically by the server right after it binds, before any model loads; read by clients and the
launcher. Only a file of this user that no one else may write is read or replaced: any other raises
safe_files.UnsafePath, never RendezvousError, so that no caller takes it for "no sidecar here".
Standard library only (the torch-free client imports it).
"""

import json
import os
import socket
from pathlib import Path

from . import protocol, safe_files

WHAT = "endpoint file"


class RendezvousError(Exception):
    """The endpoint file is missing or unusable (one-line message)."""


def write(path, info):
    safe_files.replace_text(path, json.dumps(info, indent=1, sort_keys=True) + "\n", WHAT)


def read(path):
    path = Path(path)
    try:
        text = safe_files.read_text(path, WHAT)
    except FileNotFoundError:
        raise RendezvousError(f"no sidecar: endpoint file {path} does not exist "
                              "(start one with `sidecar serve` or `sidecar ensure`)") from None
    except OSError as exc:
        raise RendezvousError(f"cannot read endpoint file {path}: {exc.strerror}") from None
    try:
        info = json.loads(text)
    except ValueError:
        raise RendezvousError(f"endpoint file {path} is not JSON (is it a sidecar endpoint file?)") from None
    if not isinstance(info, dict) or info.get("protocol") != protocol.PROTOCOL:
        raise RendezvousError(f"endpoint file {path} is not a {protocol.PROTOCOL} endpoint file")
    if info.get("version") != protocol.VERSION:
        raise RendezvousError(f"endpoint file {path} is for protocol version {info.get('version')}, "
                              f"this client speaks {protocol.VERSION}")
    for key in ("endpoint", "pid", "host"):
        if key not in info:
            raise RendezvousError(f"endpoint file {path} lacks '{key}'")
    return info


def remove_if_ours(path, pid):
    """Delete the endpoint file only if it still names `pid` (a successor may have replaced it)."""
    try:
        info = json.loads(safe_files.read_text(path, WHAT))
    except (OSError, ValueError, safe_files.UnsafePath):
        return False
    if isinstance(info, dict) and info.get("pid") == pid:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
    return False


def hostname():
    return socket.gethostname()


def is_local(info):
    return info.get("host") == hostname()


def start_ticks(pid):
    """Process start time in clock ticks since boot (Linux), to tell a pid from a reused one; else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


_HAS_PROC = os.path.isdir("/proc/self")


def pid_alive(pid, ticks=None):
    """True if `pid` runs (zombies count as dead) and, when `ticks` is given, is the same process.

    Where there is no /proc (macOS), only the signal check is made: a zombie or a reused pid then
    counts as alive, which keeps a watched run's sidecar up rather than stopping it wrongly."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not _HAS_PROC:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return False
    return ticks is None or int(fields[19]) == ticks


def describe(info):
    return f"sidecar pid {info.get('pid')} (endpoint {info.get('endpoint')})"
