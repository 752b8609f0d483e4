"""Wire format of the sidecar: versioned JSON header frames, raw float32 result frames, typed errors.

A message is a ZeroMQ multipart message. Frame 0 is a UTF-8 JSON object (the header); an embedding
result adds frame 1, the raw little-endian float32 matrix whose shape is in the header. Nothing from
a socket is ever unpickled: headers go through `json.loads`, data through `numpy.frombuffer`.
This module imports only the standard library and numpy, so both the server and the torch-free client
can use it.
"""

import json
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


def decode_header(frame):
    """Parse and check a header frame; raises ProtocolError with a one-line reason."""
    try:
        head = json.loads(bytes(frame).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON ({exc.__class__.__name__})") from None
    if not isinstance(head, dict):
        raise ProtocolError("header is not a JSON object")
    if head.get("proto") != PROTOCOL:
        raise ProtocolError(f"not a {PROTOCOL} message")
    if head.get("v") != VERSION:
        raise ProtocolError(f"protocol version {head.get('v')!r} is not supported (this side speaks {VERSION})")
    if not isinstance(head.get("type"), str) or not isinstance(head.get("id"), str):
        raise ProtocolError("header lacks a string 'type' or 'id'")
    return head


# ---- requests -------------------------------------------------------------------------------

def ping(request_id=None):
    return encode(_header(PING, request_id or new_request_id()))


def status(request_id=None):
    return encode(_header(STATUS, request_id or new_request_id()))


def stop(request_id=None):
    return encode(_header(STOP, request_id or new_request_id()))


def embed(model, ids, seqs, request_id=None):
    return encode(_header(EMBED, request_id or new_request_id(), model=model, ids=list(ids), seqs=list(seqs)))


def check_embed_request(head, extra_frames, models_known):
    """Validate an embed header; returns (model, ids, seqs) or raises ProtocolError / UnknownModel."""
    if extra_frames:
        raise ProtocolError("an embed request has exactly one frame")
    model, ids, seqs = head.get("model"), head.get("ids"), head.get("seqs")
    if model not in models_known:
        raise UnknownModel(f"model {model!r} is not served here (served: {', '.join(models_known) or 'none'})")
    if not isinstance(ids, list) or not isinstance(seqs, list):
        raise ProtocolError("'ids' and 'seqs' must be lists")
    if len(ids) != len(seqs):
        raise ProtocolError(f"{len(ids)} ids but {len(seqs)} sequences")
    if not seqs:
        raise ProtocolError("no sequences")
    for name, seq in zip(ids, seqs):
        if not isinstance(name, str) or not isinstance(seq, str):
            raise ProtocolError("ids and sequences must be strings")
        if not seq:
            raise ProtocolError(f"sequence {name!r} is empty")
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
    message = " ".join(str(message).split())  # always one line
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
