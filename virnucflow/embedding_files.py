"""Per-file embedding matrices as `.npz`: `ids` (numpy unicode array) and `data` (float32 [N, D]).

Imports only numpy and the standard library (plus virnucflow.atomic / .errors, which import
nothing else), because the torch-free client process writes these files. Loading never
unpickles (`allow_pickle=False`).
"""

import zipfile

import numpy as np

from virnucflow.atomic import atomic_path
from virnucflow.errors import InputError

_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _unreadable(path, exc):
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(f"{path}: cannot read embedding file ({reason}); regenerate it")


def save_embeddings(path, ids, array):
    """Write `ids` (N strings) and `array` (N x D, stored as float32) to `path` atomically."""
    ids = list(ids)
    data = np.asarray(array, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] != len(ids):
        raise ValueError(f"embeddings for {path}: expected {len(ids)} rows of a 2-D array, got shape {data.shape}")
    if not all(isinstance(i, str) for i in ids):
        raise ValueError(f"embeddings for {path}: every id must be a str")
    id_array = np.array(ids, dtype=np.str_) if ids else np.empty(0, dtype="<U1")
    # numpy's unicode dtype silently drops trailing NUL characters.
    if id_array.tolist() != ids:
        raise ValueError(f"embeddings for {path}: an id does not survive a numpy string array (NUL character?)")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ids=id_array, data=data)


def load_embeddings(path):
    """Read a file written by save_embeddings: returns (ids: list[str], data: float32 ndarray [N, D])."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: not an embedding file (expected an .npz archive); regenerate it")
    with loaded:
        if set(loaded.files) != {"ids", "data"}:
            raise InputError(f"{path}: not an embedding file (expected exactly 'ids' and 'data', found {sorted(loaded.files)}); regenerate it")
        try:
            ids, data = loaded["ids"], loaded["data"]
        except _READ_ERRORS as exc:
            raise _unreadable(path, exc) from None
    if ids.ndim != 1 or ids.dtype.kind != "U":
        raise InputError(f"{path}: 'ids' must be a 1-D unicode array; regenerate the file")
    if data.ndim != 2 or data.dtype.kind != "f" or data.shape[0] != ids.shape[0]:
        raise InputError(f"{path}: 'data' must be a float array with one row per id, got {data.dtype} {data.shape} for {ids.shape[0]} ids; regenerate the file")
    return ids.tolist(), data.astype(np.float32, copy=False)
