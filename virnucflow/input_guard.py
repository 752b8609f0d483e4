"""A guard for reading a user's input file: it fails the step if the file changes while it is read.

A FASTA still being copied, downloaded or decompressed into place, or one that is truncated or
replaced mid-read, would otherwise give partial output and exit 0. The guard stats the path
before reading and again when reading ends, and compares device, inode, size and modification
time (ns). Gzipped files are guarded the same way: the compressed file on disk is what is compared.
"""

import contextlib
import os

from virnucflow.errors import InputError


def signature(path):
    """What the guard compares: device, inode, size, modification time (ns); None for a missing file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def unchanged_while_read(path):
    """Run the block that reads `path`; raise InputError if the file changed meanwhile.

    The check is made when the block ends normally and also when it fails with an ordinary
    exception, since a file cut short mid-read often shows up first as a parse error; a change
    is then the real cause and is what the user is told. A missing file is left to the reader.
    """
    before = signature(path)
    try:
        yield
    except Exception:
        if signature(path) != before:
            raise InputError(_changed(path)) from None
        raise
    if signature(path) != before:
        raise InputError(_changed(path))


def check_unchanged_since(path, before):
    """InputError if `path` is no longer the file whose signature was `before` (a step that read it earlier)."""
    if signature(path) != tuple(before):
        raise InputError(_changed(path))


def _changed(path):
    return f"{path}: the file changed while being read; rerun when it is complete"
