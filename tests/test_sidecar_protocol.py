"""Sidecar wire format: self-describing versioned headers, raw float32 frames, checked ids, no pickle."""

import json

import numpy as np
import pytest

from sidecar import protocol

pytestmark = pytest.mark.unit


def test_embed_request_round_trip():
    frames = protocol.embed("esm2", ["a", "b"], ["MK", "LV"], request_id="r1")
    assert len(frames) == 1
    head = protocol.decode_header(frames[0])
    assert head == {"proto": protocol.PROTOCOL, "v": protocol.VERSION, "type": "embed", "id": "r1",
                    "model": "esm2", "ids": ["a", "b"], "seqs": ["MK", "LV"]}
    assert protocol.check_embed_request(head, [], ["esm2"]) == ("esm2", ["a", "b"], ["MK", "LV"])


def test_result_round_trip_is_bit_exact_little_endian_float32():
    array = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    frames = protocol.result("r1", "esm2", ["x", "y", "z"], array, {"tokens": 9})
    head = protocol.decode_header(frames[0])
    assert head["shape"] == [3, 5] and head["dtype"] == "<f4" and head["ids"] == ["x", "y", "z"]
    assert frames[1] == array.astype("<f4").tobytes()
    back = protocol.decode_result(head, frames[1:], ["x", "y", "z"])
    assert back.dtype == np.float32 and np.array_equal(back, array)
    back[0, 0] = 1.0  # the decoded array is the caller's own, writable


@pytest.mark.parametrize("mutate, message", [
    (lambda h, f: (dict(h, ids=["x", "z", "y"]), f), "ids"),
    (lambda h, f: (dict(h, shape=[2, 5]), f), "rows"),
    (lambda h, f: (h, [f[0][:-4]]), "bytes"),
    (lambda h, f: (dict(h, dtype="<f8"), f), "dtype"),
    (lambda h, f: (h, f + [b""]), "one data frame"),
])
def test_result_checks(mutate, message):
    frames = protocol.result("r1", "esm2", ["x", "y", "z"], np.zeros((3, 5), np.float32))
    head, data = mutate(protocol.decode_header(frames[0]), frames[1:])
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.decode_result(head, data, ["x", "y", "z"])


@pytest.mark.parametrize("frame, message", [
    (b"\x80\x03cos\nsystem\n.", "UTF-8 JSON"),  # a pickle is just rejected
    (b"[1, 2]", "JSON object"),
    (json.dumps({"proto": "other", "v": 1, "type": "ping", "id": "x"}).encode(), "not a"),
    (json.dumps({"proto": protocol.PROTOCOL, "v": 99, "type": "ping", "id": "x"}).encode(), "version 99"),
    (json.dumps({"proto": protocol.PROTOCOL, "v": 1, "type": "ping"}).encode(), "'id'"),
])
def test_bad_headers(frame, message):
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.decode_header(frame)


@pytest.mark.parametrize("fields, error, message", [
    ({"model": "bert"}, protocol.UnknownModel, "not served"),
    ({"ids": ["a"]}, protocol.ProtocolError, "1 ids but 2"),
    ({"ids": [], "seqs": []}, protocol.ProtocolError, "no sequences"),
    ({"seqs": ["MK", ""]}, protocol.ProtocolError, "empty"),
    ({"seqs": ["MK", 3]}, protocol.ProtocolError, "strings"),
    ({"ids": "ab"}, protocol.ProtocolError, "lists"),
])
def test_embed_request_checks(fields, error, message):
    head = protocol.decode_header(protocol.embed("esm2", ["a", "b"], ["MK", "LV"])[0])
    head.update(fields)
    with pytest.raises(error, match=message):
        protocol.check_embed_request(head, [], ["esm2", "dnabert_s"])


def test_errors_are_one_line_and_typed():
    head = protocol.decode_header(protocol.error("r", protocol.BUSY, "queue\nfull  now")[0])
    assert head["type"] == "error" and head["code"] == "busy" and head["retryable"] is True
    assert head["message"] == "queue full now"
    head = protocol.decode_header(protocol.error("r", protocol.UNKNOWN_MODEL, "no")[0])
    assert head["retryable"] is False


def test_an_embed_request_may_name_its_part():
    """Both models' requests of a part carry one `part` key (the sidecar computes the oldest part first);
    without one the request is as before, and a key that is not a short string is refused."""
    head = protocol.decode_header(protocol.embed("esm2", ["a"], ["MKV"], part="p1")[0])
    assert protocol.embed_part_key(head) == "p1"
    assert protocol.embed_part_key(protocol.decode_header(protocol.embed("esm2", ["a"], ["MKV"])[0])) is None
    for bad in (7, "x" * 10_000, ["p"]):
        with pytest.raises(protocol.ProtocolError, match="'part'"):
            protocol.embed_part_key(dict(head, part=bad))
