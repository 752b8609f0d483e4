"""Wire format of the sidecar: versioned JSON header frames, raw float32 result frames, typed errors, limits.

A message is a ZeroMQ multipart message. Frame 0 is a UTF-8 JSON object (the header); an embedding
result adds frame 1, the raw little-endian float32 matrix whose shape is in the header. Nothing from
a socket is ever unpickled: headers go through `json.loads`, data through `numpy.frombuffer`.
Decoding is bounded: the frame's size and its JSON nesting depth are checked before `json.loads`
runs, and every field has an exact type. `Limits` holds every bound, once, for server and client.
This module imports only the standard library and numpy, so both the server and the torch-free client
can use it.
"""

import dataclasses
import json
import re
import string
import uuid

import numpy as np

PROTOCOL = "virnucflow-sidecar"
VERSION = 1
MODELS = ("esm2", "dnabert_s")
DTYPE = "<f4"

# Request types (client -> server) and reply types (server -> client).
PING, STATUS, EMBED, STOP = "ping", "status", "embed", "stop"
REQUEST_TYPES = (PING, STATUS, EMBED, STOP)
PONG, STATUS_REPLY, RESULT, STOPPING, ERROR = "pong", "status", "result", "stopping", "error"

# Server states reported by pong and status.
LOADING, READY, DRAINING, FAILED = "loading", "ready", "stopping", "failed"

# Error codes; `retryable` tells the client whether sending the same request again may succeed.
BAD_REQUEST = "bad_request"
UNKNOWN_MODEL = "unknown_model"
BUSY = "busy"
NOT_READY = "not_ready"
SHUTTING_DOWN = "shutting_down"
LOAD_FAILED = "load_failed"
INTERNAL = "internal"
RETRYABLE = {BUSY: True, NOT_READY: True}

# The characters a sequence may hold, per model. ESM-2: the 25 one-letter amino-acid tokens of fair-esm's
# ESM-1b alphabet (the 20 standard ones and X B U Z O); fair-esm raises KeyError on any other letter, reads
# "<mask>" and the like as special tokens, and the workflow's proteins are made of the 20 standard letters.
# DNABERT-S: the upper-case letters and the gap/stop symbols * - . that virnucflow's FASTA reader accepts,
# because the workflow upper-cases a chunk and sends any of them inside a kept frame; its tokenizer maps
# everything but A C G T to [UNK]. Refused: lower case (silently all [UNK]), white space (silently dropped by
# the tokenizer), brackets (text such as "[CLS]" is read as a special token), anything non-ASCII.
ALPHABETS = {"esm2": "ACDEFGHIKLMNPQRSTVWYXBUZO", "dnabert_s": string.ascii_uppercase + "*-."}
UNITS = {"esm2": "residues", "dnabert_s": "nucleotides"}
_ALPHABET_NAMES = {"esm2": "the 25 amino-acid letters of ESM-2 (ACDEFGHIKLMNPQRSTVWY and XBUZO), upper case",
                   "dnabert_s": "upper-case letters and the gap/stop symbols * - ."}
_REFUSED = {model: re.compile(f"[^{re.escape(chars)}]") for model, chars in ALPHABETS.items()}


@dataclasses.dataclass(frozen=True)
class Limits:
    """Every bound on what a message may hold; the defaults are LIMITS. Why these numbers:

    The workflow sends frames of <= 500 bp chunks: <= 501 nucleotides and <= 167 residues per sequence,
    so 10,000 of either is generous for any real caller and still bounded work: a 10,000-residue protein
    costs ESM-2 3B about 32 GB of transient fp32 attention in exact mode (40 heads x L^2), a 10,000-nt
    sequence is ~2,100 DNABERT-S tokens; the cost of the Rust BPE grows faster than linearly (one 64 MiB
    sequence held the socket thread for minutes). A request holds at most 1,024 sequences and 1 MiB of
    sequence text (the sizes the client splits its input at), so checking and tokenizing one stays well
    under a second. Ids are at most 1,000 characters; even with every character JSON-escaped, a request
    at every limit fits in `max_header_bytes`, which bounds the JSON parse. Depth 16 covers every header
    of the protocol (status replies nest 4 deep). `max_message_bytes` is the socket's own cap (ZeroMQ
    MAXMSGSIZE): a larger frame is dropped with its connection, unanswered, so it is kept well above
    `max_header_bytes`, below which a request is still answered `bad_request`. The serve options
    --max-seq-len-esm2 / --max-seq-len-dnabert-s set the two sequence lengths.
    """

    max_header_bytes: int = 16 * 2**20
    max_depth: int = 16
    max_request_seqs: int = 1024
    max_request_chars: int = 2**20
    max_id_chars: int = 1000
    max_seq_len_esm2: int = 10_000
    max_seq_len_dnabert_s: int = 10_000
    max_message_bytes: int = 256 * 2**20

    def max_seq_len(self, model):
        return getattr(self, SEQ_LEN_FIELDS[model])

    def check(self):
        """Raise ValueError (one line) unless the limits are usable together; returns self."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or value < 1:
                name = option_name(field.name) if field.name in SEQ_LEN_FIELDS.values() else field.name
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        for field in SEQ_LEN_FIELDS.values():
            if getattr(self, field) > self.max_request_chars:
                raise ValueError(f"{option_name(field)} {getattr(self, field)} exceeds the {self.max_request_chars} "
                                 f"characters a request may hold")
        if self.max_message_bytes < self.max_header_bytes:
            raise ValueError("max_message_bytes must be at least max_header_bytes")
        return self


SEQ_LEN_FIELDS = {model: f"max_seq_len_{model}" for model in MODELS}
LIMITS = Limits()


def option_name(field):
    """The `sidecar serve` option that sets a Limits field."""
    return "--" + field.replace("_", "-")


class ProtocolError(Exception):
    """A message that does not follow this protocol (the one-line message says why)."""


def new_request_id():
    return uuid.uuid4().hex


def _header(kind, request_id, **fields):
    head = {"proto": PROTOCOL, "v": VERSION, "type": kind, "id": request_id}
    head.update(fields)
    return head


def encode(header, data=None):
    """Header dict (+ optional float32 matrix) -> list of frames."""
    frames = [json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")]
    if data is not None:
        array = np.ascontiguousarray(data, dtype=DTYPE)
        frames.append(array.tobytes())
    return frames


_BRACKETS, _OPENING = np.frombuffer(b"[]{}", dtype=np.uint8), np.frombuffer(b"[{", dtype=np.uint8)


def json_depth(data):
    """The deepest nesting of JSON arrays and objects in `data` (bytes), brackets inside strings not counted.

    Exact for the part of `data` that `json.loads` reads before it stops, so checking it first bounds
    the parser's recursion; a few C and numpy passes over the bytes, none of Python's recursion. Escaped
    backslashes, then escaped quotes, are removed first (left to right, as a JSON reader pairs them), so
    every quote left opens or closes a string.
    """
    codes = np.frombuffer(data.replace(b"\\\\", b"").replace(b'\\"', b""), dtype=np.uint8)
    outside = (np.cumsum(codes == ord('"'), dtype=np.int32) & 1) == 0
    brackets = codes[outside & np.isin(codes, _BRACKETS)]
    if not len(brackets):
        return 0
    steps = np.where(np.isin(brackets, _OPENING), np.int32(1), np.int32(-1))
    return max(int(np.cumsum(steps, dtype=np.int32).max()), 0)


def _short(value, size=60):
    """repr() of a client-supplied value, cut to `size` characters for a message."""
    text = repr(value)
    return text if len(text) <= size else text[:size] + "..."


def _encodable(text):
    return text.isascii() or not any("\ud800" <= c <= "\udfff" for c in text)


def decode_header(frame, limits=LIMITS):
    """Parse and check a header frame within `limits`; raises ProtocolError with a one-line reason."""
    data = bytes(frame)
    if len(data) > limits.max_header_bytes:
        raise ProtocolError(f"header frame of {len(data)} bytes exceeds the limit of {limits.max_header_bytes}; "
                            f"send fewer or shorter sequences per request")
    depth = json_depth(data) if data.count(b"[") + data.count(b"{") > limits.max_depth else 0
    if depth > limits.max_depth:
        raise ProtocolError(f"header nests {depth} levels deep; the limit is {limits.max_depth}")
    try:
        head = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON ({exc.__class__.__name__})") from None
    if type(head) is not dict:
        raise ProtocolError("header is not a JSON object")
    if head.get("proto") != PROTOCOL:
        raise ProtocolError(f"not a {PROTOCOL} message")
    version = head.get("v")
    if type(version) is not int or version != VERSION:  # true and 1.0 are not 1
        raise ProtocolError(f"protocol version {_short(version)} is not supported (this side speaks {VERSION})")
    if type(head.get("type")) is not str or type(head.get("id")) is not str:
        raise ProtocolError("header lacks a string 'type' or 'id'")
    if len(head["id"]) > limits.max_id_chars or not _encodable(head["id"]):
        raise ProtocolError(f"request id {_short(head['id'])} is longer than {limits.max_id_chars} characters "
                            f"or not valid Unicode")
    return head


# ---- requests -------------------------------------------------------------------------------

def ping(request_id=None, lease=None):
    """`lease`: the name of a lease file that the sender has just written in the sidecar's lease
    directory (sidecar.leases); the sidecar counts it as held from now on, unless it is stopping."""
    fields = {"lease": lease} if lease is not None else {}
    return encode(_header(PING, request_id or new_request_id(), **fields))


def status(request_id=None):
    return encode(_header(STATUS, request_id or new_request_id()))


def stop(request_id=None):
    return encode(_header(STOP, request_id or new_request_id()))


def embed(model, ids, seqs, request_id=None, part=None):
    """An embed request; `part` (optional) names the unit of work it belongs to, shared by the requests of
    both models of one part: the sidecar computes the oldest part's requests first."""
    fields = {"part": part} if part is not None else {}
    return encode(_header(EMBED, request_id or new_request_id(), model=model, ids=list(ids), seqs=list(seqs),
                          **fields))


def embed_part_key(head, limits=LIMITS):
    """The `part` of an embed header (None without one); a bad one is a ProtocolError."""
    part = head.get("part")
    if part is not None and (type(part) is not str or len(part) > limits.max_id_chars or not _encodable(part)):
        raise ProtocolError(f"'part' {_short(part)} must be a string of at most {limits.max_id_chars} characters")
    return part


def check_embed_request(head, extra_frames, models_known, limits=LIMITS):
    """Validate an embed header within `limits`; returns (model, ids, seqs) or raises ProtocolError /
    UnknownModel. Every sequence is checked here, so none that its model cannot take reaches a batch."""
    if extra_frames:
        raise ProtocolError("an embed request has exactly one frame")
    model, ids, seqs = head.get("model"), head.get("ids"), head.get("seqs")
    if type(model) is not str:
        raise ProtocolError("'model' must be a string")
    if model not in models_known:
        raise UnknownModel(f"model {_short(model)} is not served here (served: {', '.join(models_known) or 'none'})")
    if type(ids) is not list or type(seqs) is not list:
        raise ProtocolError("'ids' and 'seqs' must be lists")
    if len(ids) != len(seqs):
        raise ProtocolError(f"{len(ids)} ids but {len(seqs)} sequences")
    if not seqs:
        raise ProtocolError("no sequences")
    if len(seqs) > limits.max_request_seqs:
        raise ProtocolError(f"{len(seqs)} sequences in one request; the limit is {limits.max_request_seqs}")
    max_len, unit, total = limits.max_seq_len(model), UNITS[model], 0
    for name, seq in zip(ids, seqs):
        if type(name) is not str or type(seq) is not str:
            raise ProtocolError("ids and sequences must be strings")
        if len(name) > limits.max_id_chars or not _encodable(name):
            raise ProtocolError(f"id {_short(name)} is longer than {limits.max_id_chars} characters "
                                f"or not valid Unicode")
        if not seq:
            raise ProtocolError(f"sequence {_short(name)} is empty")
        if len(seq) > max_len:
            raise ProtocolError(f"sequence {_short(name)} has {len(seq)} {unit}; this sidecar takes at most {max_len} "
                                f"for {model} ({option_name(SEQ_LEN_FIELDS[model])}); split it")
        total += len(seq)
        if total > limits.max_request_chars:
            raise ProtocolError(f"the sequences of one request exceed {limits.max_request_chars} characters; "
                                f"send them in several requests")
        bad = _REFUSED[model].search(seq)
        if bad:
            raise ProtocolError(f"sequence {_short(name)} has {_short(bad.group())} at position {bad.start() + 1}, "
                                f"which {model} does not take (allowed: {_ALPHABET_NAMES[model]})")
    return model, ids, seqs


class UnknownModel(ProtocolError):
    pass


# ---- replies --------------------------------------------------------------------------------

def pong(request_id, state, **fields):
    return encode(_header(PONG, request_id, state=state, **fields))


def status_reply(request_id, fields):
    return encode(_header(STATUS_REPLY, request_id, **fields))


def stopping(request_id):
    return encode(_header(STOPPING, request_id))


def error(request_id, code, message):
    message = " ".join(str(message).split())[:1000]  # always one line, and short
    return encode(_header(ERROR, request_id or "", code=code, message=message, retryable=RETRYABLE.get(code, False)))


def result(request_id, model, ids, array, timing=None):
    array = np.ascontiguousarray(array, dtype=DTYPE)
    head = _header(RESULT, request_id, model=model, ids=list(ids), dtype=DTYPE, shape=list(array.shape),
                   timing=timing or {})
    return encode(head, array)


def decode_result(head, frames, expected_ids):
    """Turn a result header + data frame into an [N, dim] float32 array, checking ids and size."""
    if len(frames) != 1:
        raise ProtocolError(f"a result carries exactly one data frame, got {len(frames)}")
    if head.get("dtype") != DTYPE:
        raise ProtocolError(f"unexpected dtype {head.get('dtype')!r}")
    shape = head.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(x, int) and x >= 0 for x in shape)):
        raise ProtocolError(f"bad shape {shape!r}")
    if head.get("ids") != list(expected_ids):
        raise ProtocolError("the ids in the reply differ from the ids sent")
    if shape[0] != len(expected_ids):
        raise ProtocolError(f"reply has {shape[0]} rows for {len(expected_ids)} ids")
    buf = frames[0]
    if len(buf) != shape[0] * shape[1] * 4:
        raise ProtocolError(f"data frame holds {len(buf)} bytes, shape {shape} needs {shape[0] * shape[1] * 4}")
    return np.frombuffer(buf, dtype=DTYPE).reshape(shape).astype(np.float32)
