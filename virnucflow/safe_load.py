"""Reading torch-pickled files (.pt, .pth, .bin) without running code from them.

`load` is torch.load with torch's weights_only unpickler: it rebuilds tensors, plain containers and
the few classes its caller allows, and refuses every other pickled global (a class or function such
as posix.system or builtins.eval, which a full unpickle would import and may call). A refusal is a
one-line InputError that names the global and the file. The one way past it is explicit, for model
files that are trusted but not in the standard format: the user pins the file's sha256 (TRUST_FLAG
on the command line, TRUST_KEY in the workflow config). A refused file is then hashed and, only if
its hash is pinned, unpickled in full from the same open file, which runs whatever code it carries.
The normal path never hashes (the ESM-2 3B checkpoint is 5.7 GB).

torch is imported only when a file is read, so that the light command-line clients can define the flag.
"""

import argparse
import hashlib
import logging
import pickle
import re
import threading
import warnings

from virnucflow.errors import InputError
from virnucflow.pickle_globals import pickle_globals, torch_zip_pickle

TRUST_FLAG = "--unsafe-trust-pickle"
TRUST_KEY = "models.unsafe_trust_pickle_sha256"
TRUST_HOW = (f"if you trust this file, pin its sha256 with {TRUST_FLAG} SHA256 (config {TRUST_KEY}), "
             "which unpickles it in full and runs any code it carries")

log = logging.getLogger(__name__)
# torch's safe_globals edits a process-wide set and removes its entries on exit: one load at a time.
_SAFE_GLOBALS_LOCK = threading.Lock()


def sha256_pin(text):
    """argparse type of TRUST_FLAG: a sha256 as 64 hex digits, lower-cased."""
    value = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a sha256 (64 hex digits, as sha256sum prints)")
    return value


def add_trust_option(parser):
    parser.add_argument(
        TRUST_FLAG, dest="unsafe_trust_pickle", metavar="SHA256", action="append", type=sha256_pin,
        help="DANGEROUS: fully unpickle a model file that the safe loader refuses if its sha256 is this one; "
        "that runs any code the file carries. Only for a file you trust (repeatable)")


def _reason(exc):
    """torch's own words, without its boilerplate paragraphs."""
    text = str(exc)
    inner = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    if inner:
        return inner.group(1).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation",
                                                            "Please file an issue"))]
    return (kept or lines or [type(exc).__name__])[0]


def refused_global(path, exc, allowed=()):
    """The global that torch's weights_only unpickler refused in `path` ('module.name'), or None."""
    named = re.search(r"GLOBAL (\S+)", str(exc))
    if named:
        name = named.group(1)
        return name if "." in name else f"builtins.{name}"  # torch drops the 'builtins.' itself
    data = torch_zip_pickle(path)
    allowed_names = {f"{obj.__module__}.{obj.__qualname__}" if not isinstance(obj, tuple) else obj[1]
                     for obj in allowed}
    unsafe = [name for name in pickle_globals(data or b"")
              if not name.startswith(("torch.", "collections.OrderedDict")) and name not in allowed_names]
    return ", ".join(unsafe[:3]) if unsafe else None


def file_sha256(handle):
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def load(path, *, needs, allowed=(), trusted=None, mmap=False, fix=None):
    """torch.load(path) on the CPU that unpickles only tensors, containers and the `allowed` globals.

    needs: what this kind of file holds, for the refusal ("an ESM-2 checkpoint holds only tensors and
    argparse.Namespace"). trusted: the pinned sha256s that allow a refused file to be unpickled in full;
    None where this kind of file has no such opt-in, and then `fix` says what to do instead.
    Raises InputError on a refusal; other errors (missing file, damaged file) are the caller's.
    """
    import torch

    try:
        with _SAFE_GLOBALS_LOCK, torch.serialization.safe_globals(list(allowed)), warnings.catch_warnings():
            # a protocol >= 4 pickle is refused below; torch's multi-line warning about it would only add noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        refused = refused_global(path, exc, allowed)
        what = f"refused to unpickle {refused}" if refused else f"refused by torch's safe unpickler ({_reason(exc)})"
    note = ""
    if trusted:
        with open(path, "rb") as handle:  # hash and load the same open file
            digest = file_sha256(handle)
            if digest in trusted:
                log.warning("%s: its sha256 %s is pinned with %s: unpickling it in full, which runs any code it "
                            "carries (%s)", path, digest, TRUST_FLAG, what)
                handle.seek(0)
                return torch.load(handle, map_location="cpu", weights_only=False)
        note = f" (its sha256 {digest} is not a pinned one)"
    raise InputError(f"{path}: {what}{note}: {needs}, and unpickling anything else can run code from the file; "
                     f"{fix or TRUST_HOW}")
