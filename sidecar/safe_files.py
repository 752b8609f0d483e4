"""The sidecar's files that another local user could plant or change, opened only when they are ours.

Whoever can write the endpoint file receives the user's sequences and chooses the vectors written back; a
link planted as the lock or the log makes the sidecar create or append to a file of the link's choosing.
So each of these is opened without following a final symbolic link (O_NOFOLLOW) and checked on the
opened file (fstat): it must be a plain file of this user, with one link, not writable by group or others.
Anything else is refused with one line that names the path, what was found there and what to do.
Directories made here are 0700. Standard library only (the torch-free client imports it).
"""

import os
import pwd
import stat
import tempfile
from pathlib import Path

NOT_WRITABLE = stat.S_IWGRP | stat.S_IWOTH  # forbidden bits of an endpoint, lock or log file
PRIVATE = stat.S_IRWXG | stat.S_IRWXO  # forbidden bits of a secret file or a socket directory

_KINDS = {"file": stat.S_ISREG, "directory": stat.S_ISDIR, "socket": stat.S_ISSOCK}


class UnsafePath(Exception):
    """A path that another user owns or may write, or a link where a file is expected (one-line message)."""


def _user(uid):
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check(path, st, what, kind="file", forbidden=NOT_WRITABLE, action=None):
    """Raise UnsafePath unless `st` (an lstat or fstat of `path`) is a `kind` of this user, with one link
    if a file, and none of the `forbidden` mode bits. `action` replaces the advice at the end of the line."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        problem, fix = f"is a symbolic link, not a {kind} (another user may have planted it)", "remove it"
    elif not _KINDS[kind](mode):
        problem, fix = f"is not a {kind}", "remove it"
    elif st.st_uid != os.geteuid():
        problem = (f"is owned by {_user(st.st_uid)}, not by you ({_user(os.geteuid())}), so another user may "
                   f"have planted it")
        fix = "remove it"
    elif kind == "file" and st.st_nlink != 1:
        problem = f"has {st.st_nlink} hard links (another user may have linked it to one of your files)"
        fix = "remove it"
    elif mode & forbidden:
        problem = f"has mode {stat.S_IMODE(mode):04o}, open to other users"
        chmod = "go-w" if forbidden == NOT_WRITABLE else "700" if kind == "directory" else "600"
        fix = f"run: chmod {chmod} {path}"
    else:
        return
    raise UnsafePath(f"{what} {path} {problem}; {action or fix}")


def check_path(path, what, kind="file", forbidden=NOT_WRITABLE, action=None):
    """check() on an lstat of `path`; FileNotFoundError if there is nothing."""
    check(path, os.lstat(path), what, kind, forbidden, action)


def open_file(path, flags, what, forbidden=NOT_WRITABLE):
    """os.open `path` (created 0600 with O_CREAT) without following a final link, then check the opened
    file; returns the descriptor. Never pass O_TRUNC: it would truncate before the check."""
    assert not flags & os.O_TRUNC
    try:  # O_NONBLOCK: a planted FIFO must not hang the open; cleared once the file is known plain
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise
    except OSError:
        check_path(path, what, "file", forbidden)  # a link, a directory, another user's file: say that
        raise
    try:
        check(path, os.fstat(fd), what, "file", forbidden)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_text(path, what, forbidden=NOT_WRITABLE):
    with os.fdopen(open_file(path, os.O_RDONLY, what, forbidden)) as handle:
        return handle.read()


def open_append(path, what):
    """A log or lock file, for appending: created 0600 (and its directory 0700) if missing."""
    make_dir(Path(path).parent)
    return open_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)


def open_dir(path, what, forbidden=PRIVATE, action=None):
    """A directory descriptor, opened without following a link, of this user and closed to others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError:
        check_path(path, what, "directory", forbidden, action)  # a link, a file, another user's: say that
        raise
    try:
        check(path, os.fstat(fd), what, "directory", forbidden, action)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dir(path):
    """Create `path` (mode 0700) and missing parents if absent; an existing directory is left as it is."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def replace_text(path, text, what):
    """Write `path` atomically: a fresh 0600 file renamed over it. A file already there that is not ours
    (or a link) is refused, not replaced."""
    path = Path(path)
    try:
        check_path(path, what)
    except FileNotFoundError:
        pass
    make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
