"""Per-file embedding matrices as `.npz`: `ids` (numpy unicode array) and `data` (float32 [N, D]).

Imports only numpy and the standard library (plus virnucflow.atomic / .errors / .pickle_globals,
which import nothing else), because the torch-free client process writes these files. Loading
never unpickles (`allow_pickle=False`); a file with a pickled object array is refused, naming the
globals its pickle names.
"""

import zipfile

import numpy as np

from virnucflow.atomic import atomic_path
from virnucflow.errors import InputError
from virnucflow.pickle_globals import pickle_globals

_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _unreadable(path, exc):
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(f"{path}: cannot read embedding file ({reason}); regenerate it")


def _object_array_globals(path, name):
    """The non-numpy globals that the pickle of object array `name` names, read statically; None if it is
    not an object array."""
    headers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as handle:
            read_header = headers.get(np.lib.format.read_magic(handle))
            if read_header is None or not read_header(handle)[2].hasobject:
                return None
            found = pickle_globals(handle.read())
    except (*_READ_ERRORS, KeyError):
        return None
    return [g for g in found if not g.startswith(("numpy.", "_codecs."))]


def _refused(path, name, exc):
    """A one-line error for a member that numpy refused to unpickle, naming what its pickle names."""
    found = _object_array_globals(path, name)
    if found is None:
        return _unreadable(path, exc)
    named = f" naming {', '.join(found[:3])}" if found else ""
    return InputError(f"{path}: refused to unpickle '{name}', a pickled object array{named}: an embedding file "
                      "holds only strings and floats and is never unpickled, which could run code; regenerate it")


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
        arrays = {}
        for name in ("ids", "data"):
            try:
                arrays[name] = loaded[name]
            except _READ_ERRORS as exc:
                raise _refused(path, name, exc) from None
        ids, data = arrays["ids"], arrays["data"]
    if ids.ndim != 1 or ids.dtype.kind != "U":
        raise InputError(f"{path}: 'ids' must be a 1-D unicode array; regenerate the file")
    if data.ndim != 2 or data.dtype.kind != "f" or data.shape[0] != ids.shape[0]:
        raise InputError(f"{path}: 'data' must be a float array with one row per id, got {data.dtype} {data.shape} for {ids.shape[0]} ids; regenerate the file")
    return ids.tolist(), data.astype(np.float32, copy=False)
