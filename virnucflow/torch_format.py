"""torch.save's file for `{'ids': [str], 'data': FloatTensor[N, D]}`, written with numpy and the standard library.

The merge step runs once per part, and importing torch costs more than the merge itself, so this
module writes what `torch.save` writes for that one dict, without torch: a zip archive (stored, not
compressed) whose records are, in torch's order,

    <name>/data.pkl             the dict, pickled (protocol 2) as torch pickles it: the tensor is
                                torch._utils._rebuild_tensor_v2 of a persistent id that names storage '0'
    <name>/.format_version      b'1'
    <name>/.storage_alignment   b'64': every record's bytes start at a multiple of 64 in the file
    <name>/byteorder            b'little'
    <name>/data/0               the float32 values, row after row, little-endian
    <name>/version              b'3\\n'

`torch.load(path, weights_only=True)` reads it (also with mmap=True) as the dict that torch.save would
have written. The pickle's bytes are the ones that torch writes, but for one detail that changes
nothing on loading: torch memoizes an id string that occurs twice as one object, this never does.
torch's random `.data/serialization_id` record is left out, so the file depends only on its contents.
"""

import struct
import zipfile
from pathlib import Path

import numpy as np

from virnucflow.atomic import atomic_path

ALIGNMENT = 64
# Python's zipfile adds a 20-byte zip64 field to the local header of a record of this size or more,
# when told to (below it never does): the padding has to count it.
ZIP64_FROM = 1 << 30
_BATCH = 1000  # pickle appends list items in batches of this many, as the C pickler does


class _Pickle:
    """Protocol-2 opcodes, memoized as the C pickler memoizes (every str, list, tuple, dict and global)."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self.memo = 0

    def put(self):
        self.out += b"q" + bytes([self.memo]) if self.memo < 256 else b"r" + struct.pack("<I", self.memo)
        self.memo += 1

    def str(self, text):
        raw = text.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(raw)) + raw
        self.put()

    def int(self, value):
        if 0 <= value < 256:
            self.out += b"K" + bytes([value])
        elif 0 <= value < 65536:
            self.out += b"M" + struct.pack("<H", value)
        elif -(1 << 31) <= value < (1 << 31):
            self.out += b"J" + struct.pack("<i", value)
        else:
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def glob(self, module, name):
        self.out += b"c" + f"{module}\n{name}\n".encode()
        self.put()

    def ints(self, values):
        """A tuple of ints: TUPLE1-3 for up to three items, MARK ... TUPLE beyond."""
        if not values:
            self.out += b")"
            return
        if len(values) > 3:
            self.out += b"("
        for value in values:
            self.int(value)
        self.out += b"t" if len(values) > 3 else b"\x84\x85\x86\x87"[len(values):len(values) + 1]
        self.put()

    def strs(self, texts):
        self.out += b"]"
        self.put()
        for start in range(0, len(texts), _BATCH):
            batch = texts[start:start + _BATCH]
            if len(batch) > 1:
                self.out += b"("
            for text in batch:
                self.str(text)
            self.out += b"e" if len(batch) > 1 else b"a"


def _pickle(ids, shape):
    rows, cols = shape
    p = _Pickle()
    p.out += b"}"
    p.put()
    p.out += b"("
    p.str("ids")
    p.strs(ids)
    p.str("data")
    p.glob("torch._utils", "_rebuild_tensor_v2")
    p.out += b"(("  # the rebuild's arguments, then the storage's persistent id
    p.str("storage")
    p.glob("torch", "FloatStorage")
    p.str("0")
    p.str("cpu")
    p.int(rows * cols)
    p.out += b"t"
    p.put()
    p.out += b"Q"  # BINPERSID: storage '0' is the record data/0
    p.int(0)  # storage offset
    p.ints((rows, cols))
    p.ints((max(cols, 1), 1))  # contiguous strides, as torch computes them (a size of 0 counts as 1)
    p.out += b"\x89"  # requires_grad=False
    p.glob("collections", "OrderedDict")
    p.out += b")R"  # no backward hooks: OrderedDict()
    p.put()
    p.out += b"t"
    p.put()
    p.out += b"R"
    p.put()
    p.out += b"u."
    return bytes(p.out)


def _add(archive, handle, name, payload):
    """One stored record, padded in its local header so that its bytes start at a multiple of ALIGNMENT."""
    size = memoryview(payload).nbytes
    zip64 = size >= ZIP64_FROM
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header = 30 + len(name.encode("utf-8")) + 4 + (20 if zip64 else 0)
    pad = -(handle.tell() + header) % ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad  # the padding field that torch writes
    with archive.open(info, "w", force_zip64=zip64) as record:
        if handle.tell() % ALIGNMENT:
            raise RuntimeError(f"{name}: record bytes at {handle.tell()} are not {ALIGNMENT}-aligned")
        record.write(payload)


def save_ids_and_matrix(path, ids, data):
    """Write `{'ids': ids, 'data': data}` to `path` atomically, as torch.save writes it (data as float32)."""
    ids = list(ids)
    data = np.ascontiguousarray(data, dtype="<f4")
    if data.ndim != 2 or data.shape[0] != len(ids) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"{path}: need one str id per row of a 2-D array, got {len(ids)} ids and shape {data.shape}")
    name = Path(path).stem or "archive"  # torch names the records after the file
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            _add(archive, handle, f"{name}/data.pkl", _pickle(ids, data.shape))
            _add(archive, handle, f"{name}/.format_version", b"1")
            _add(archive, handle, f"{name}/.storage_alignment", str(ALIGNMENT).encode())
            _add(archive, handle, f"{name}/byteorder", b"little")
            _add(archive, handle, f"{name}/data/0", data.reshape(-1).view(np.uint8).data)
            _add(archive, handle, f"{name}/version", b"3\n")
