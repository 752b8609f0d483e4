"""Fuzzing the sidecar's wire format: no frame stops the server, every bad frame is answered `bad_request`.

Unit tier (most of the volume): random bytes, JSON-ish token soup, mutated valid frames and structured
headers (wrong types, bool/float versions, surrogates, empty and oversized lists, huge numbers, deep
nesting) go through `decode_header` + `check_embed_request` and must give exactly the outcome that
`expected` (the protocol's rules written plainly, on top of the standard json parser) gives, with
ProtocolError as the only exception. Process tier: the same kinds of frames, plus extra frames, go to a
real `sidecar serve` with the tiny models; each gets exactly one reply of the right kind, and afterwards
the server answers a clean request with the very vectors it gave before the fuzzing. Reproducible
(derandomized); about 10,000 frames in all.
"""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sidecar import protocol
from test_sidecar_support import Sidecar, model_args, raw_dealer, recv_header

LIMITS = protocol.LIMITS
MODELS = list(protocol.MODELS)
PROTO = protocol.PROTOCOL


def fuzz(examples):
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# ---- the rules, written plainly -----------------------------------------------------------------

def _depth(value):
    """Nesting depth of a parsed JSON value (without recursion: json may parse ~1000 levels)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item if isinstance(item, list) else item.values()))
    return deepest


def _valid_text(text, limit):
    return len(text) <= limit and not any("\ud800" <= c <= "\udfff" for c in text)


def expected(frame):
    """'ok', 'bad_request' or 'unknown_model' for a header frame, decoded then (embed) checked."""
    bad = "bad_request"
    if len(frame) > LIMITS.max_header_bytes:
        return bad
    try:
        head = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return bad
    if _depth(head) > LIMITS.max_depth or type(head) is not dict or head.get("proto") != PROTO:
        return bad
    if type(head.get("v")) is not int or head["v"] != 1 or type(head.get("type")) is not str:
        return bad
    if type(head.get("id")) is not str or not _valid_text(head["id"], LIMITS.max_id_chars):
        return bad
    if head["type"] != "embed":
        return "ok"
    model, ids, seqs = head.get("model"), head.get("ids"), head.get("seqs")
    if type(model) is not str:
        return bad
    if model not in MODELS:
        return "unknown_model"
    if type(ids) is not list or type(seqs) is not list or len(ids) != len(seqs):
        return bad
    if not 1 <= len(seqs) <= LIMITS.max_request_seqs:
        return bad
    if not all(type(x) is str for x in ids + seqs) or not all(_valid_text(x, LIMITS.max_id_chars) for x in ids):
        return bad
    if sum(map(len, seqs)) > LIMITS.max_request_chars:
        return bad
    alphabet = set(protocol.ALPHABETS[model])
    if not all(0 < len(s) <= LIMITS.max_seq_len(model) and set(s) <= alphabet for s in seqs):
        return bad
    return "ok"


def outcome(frame):
    """What protocol.py does with the frame; any exception but ProtocolError fails the test."""
    try:
        head = protocol.decode_header(frame)
        if head["type"] == "embed":
            protocol.check_embed_request(head, [], MODELS)
    except protocol.ProtocolError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 1000
        return "unknown_model" if isinstance(exc, protocol.UnknownModel) else "bad_request"
    return "ok"


# ---- frame strategies ---------------------------------------------------------------------------

protein = st.text(alphabet=protocol.ALPHABETS["esm2"], min_size=1, max_size=30)
dna = st.text(alphabet=protocol.ALPHABETS["dnabert_s"], min_size=1, max_size=60)
VALID = [protocol.ping(request_id="p1")[0], protocol.status(request_id="s1")[0],
         protocol.embed("esm2", ["a", "b"], ["MKVL", "ACDEFGHIK"], request_id="e1")[0],
         protocol.embed("dnabert_s", ["x"], ["ACGTACGTNNACGT"], request_id="e2")[0],
         protocol.embed("esm2", ["only"], ["M"])[0]]
TOKENS = [b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"\\", b"\\u", b"d800", b"\\ud800", b"1", b"-", b".5",
          b"e999", b"true", b"false", b"null", b"NaN", b'"v"', b'"proto"', b'"type"', b'"id"', b'"embed"', b'"ping"',
          b'"model"', b'"ids"', b'"seqs"', b'"esm2"', b'"dnabert_s"', json.dumps(PROTO).encode(), b"\xff", b"\xc3",
          b"\x00"]
junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=6)
surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)


def text_with(base, extra):
    return st.builds(lambda a, b, i: a[:i] + b + a[i:], base, extra, st.integers(0, 30))


def long_seq(model):
    n = LIMITS.max_seq_len(model)
    return st.builds(lambda c, k: c * k, st.sampled_from(protocol.ALPHABETS[model][:4]), st.sampled_from([n, n + 1]))


token_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)


@st.composite
def mutated(draw, frames=VALID):
    """A valid frame with a few bytes flipped, inserted, deleted, cut or repeated."""
    frame = bytearray(draw(st.sampled_from(frames)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(frame)))
        op = draw(st.sampled_from(["set", "insert", "delete", "cut", "repeat"]))
        byte = draw(st.sampled_from(b'{}[]":,\\ 01tfnAZaz\x00\xff') | st.integers(0, 255))
        if op == "set" and i < len(frame):
            frame[i] = byte
        elif op == "insert":
            frame[i:i] = bytes([byte])
        elif op == "delete":
            del frame[i:i + draw(st.integers(1, 8))]
        elif op == "cut":
            del frame[i:]
        else:
            frame[i:i] = frame[i:i + draw(st.integers(1, 16))]
    return bytes(frame)


def seqs_for(model, short_only):
    good = protein if model == "esm2" else dna
    options = [good, good, st.just(""), text_with(good, surrogates), text_with(good, st.text(max_size=3)),
               text_with(good, st.sampled_from(["a", "J", "*", " ", "\n", "[CLS]", "<mask>", "é"])), junk]
    if not short_only:
        options.append(long_seq(model))
    return st.one_of(options)


@st.composite
def headers(draw, short_only=False, types=("ping", "status", "embed", "embed", "embed", "bogus", "")):
    """A header object: mostly right, with one or a few fields wrong in the ways the probe found."""
    model = draw(st.sampled_from(MODELS) | st.sampled_from(["bert", "ESM2", ""]) | junk)
    n = draw(st.integers(0, 5) | st.sampled_from([LIMITS.max_request_seqs + 1]))
    seq = seqs_for(model if model in MODELS else "esm2", short_only)
    one_id = st.text(max_size=6) | surrogates | st.just("i" * (LIMITS.max_id_chars + 1)) | junk
    if n > 5:  # an oversized list: elements repeated
        seqs, ids = [draw(protein)] * n, [draw(one_id)] * n
    else:
        seqs = draw(st.lists(seq, min_size=n, max_size=n))
        ids = draw(st.lists(one_id, min_size=n, max_size=n) | junk)
    head = {"proto": draw(st.just(PROTO) | st.just(PROTO) | junk),
            "v": draw(st.sampled_from([1, 1, 1, True, 1.0, 2, 0, -1, "1", None, 10**30])),
            "type": draw(st.sampled_from(types) | junk),
            "id": draw(st.text(max_size=12) | surrogates | st.just("r" * (LIMITS.max_id_chars + 1)) | junk),
            "model": model, "ids": ids, "seqs": seqs}
    for key in draw(st.lists(st.sampled_from(sorted(head)), max_size=2, unique=True)):
        del head[key]
    if draw(st.booleans()):
        head[draw(st.text(max_size=5))] = draw(junk)
    return head


def serialize(head, how):
    if how == "ascii":
        return json.dumps(head, ensure_ascii=True).encode()
    text = json.dumps(head, ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")  # lone surrogates make it invalid UTF-8


@st.composite
def raw_edge(draw):
    """Frames json.dumps cannot make: huge numbers, deep nesting, odd literals, in a ping's fields."""
    value = draw(st.sampled_from([b"9" * 5000, b"1" * 4300, b"1e999", b"-0", b"1.0", b"1E0", b"true", b"NaN",
                                  b"Infinity", b"100000000000000000000000000000001", b"01", b"1 ", b"[1]"]))
    depth = draw(st.sampled_from([1, 15, 16, 17, 1000, 50_000, 100_000]))
    nest = b"[" * depth + b"]" * depth if draw(st.booleans()) else b'{"a":' * depth + b"1" + b"}" * depth
    field = draw(st.sampled_from([b"v", b"x"]))
    rest = b'"type":"ping","id":"r"'
    if field == b"v":
        return b'{"proto":"%s","v":%s,%s}' % (PROTO.encode(), value, rest)
    return b'{"proto":"%s","v":1,%s,"x":%s}' % (PROTO.encode(), rest, nest)


# ---- unit tier ------------------------------------------------------------------------------------

@pytest.mark.unit
@fuzz(1500)
@given(st.binary(max_size=300) | token_soup)
def test_random_bytes_are_refused_cleanly(frame):
    assert outcome(frame) == expected(frame)


@pytest.mark.unit
@fuzz(3000)
@given(mutated())
def test_mutated_frames_match_the_rules(frame):
    assert outcome(frame) == expected(frame)


@pytest.mark.unit
@fuzz(2500)
@given(headers(), st.sampled_from(["ascii", "utf8"]))
def test_structured_headers_match_the_rules(head, how):
    frame = serialize(head, how)
    result = outcome(frame)
    assert result == expected(frame)
    if result == "ok" and head.get("type") == "embed":
        model, ids, seqs = protocol.check_embed_request(protocol.decode_header(frame), [], MODELS)
        assert (model, ids, seqs) == (head["model"], head["ids"], head["seqs"])


@pytest.mark.unit
@fuzz(500)
@given(raw_edge())
def test_raw_edge_cases_match_the_rules(frame):
    assert outcome(frame) == expected(frame)


@pytest.mark.unit
@fuzz(1000)
@given(junk, st.sampled_from(["ascii", "utf8"]))
def test_json_depth_is_the_parsers_depth(value, how):
    frame = serialize(value, how)
    assert outcome(frame) == expected(frame)
    try:
        parsed = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return
    assert protocol.json_depth(frame) == _depth(parsed)


# ---- process tier -------------------------------------------------------------------------------

CLEAN = {"esm2": (["c1", "c2"], ["MKVLAGHW", "ACDEFGHIKLMNPQRSTVWY"]), "dnabert_s": (["n1"], ["ACGTTGCAACGTNNGT"])}


@pytest.fixture(scope="module")
def fuzzed(models, tmp_path_factory):
    """One server for all the process-tier fuzzing (no dedup cache: every vector is computed); its
    vectors for the clean requests, taken before any fuzzing; one raw connection."""
    sidecar = Sidecar(tmp_path_factory.mktemp("fuzz_sidecar"), model_args(models) + ["--dedup-cache-mb", "0"])
    sidecar.wait_ready()
    with sidecar.client() as client:
        before = {model: client.embed(model, *CLEAN[model]) for model in CLEAN}
    sock = raw_dealer(sidecar.wait_file()["endpoint"])
    yield sidecar, sock, before
    sock.close()
    sidecar.close()


def send(fuzzed, frames, models):
    """Send one message; exactly one reply must come, of the kind the rules say."""
    sidecar, sock, _ = fuzzed
    want = expected(frames[0])
    if want != "bad_request":
        request = json.loads(frames[0].decode())
        kind = request["type"]
        assume(kind != protocol.STOP)  # a valid stop is the one frame meant to stop the server
        if len(frames) > 1 or kind not in protocol.REQUEST_TYPES:
            want = "bad_request"
    sock.send_multipart(frames)
    head, data = recv_header(sock, timeout=20)
    assert not sock.poll(0), "more than one reply"
    if want != "ok":
        assert (head["type"], head["code"]) == ("error", want), head
        assert "\n" not in head["message"]
        return
    reply = {"ping": "pong", "status": "status", "embed": "result"}[kind]
    assert head["type"] == reply and head["id"] == request["id"], head
    if kind == "embed":
        got = protocol.decode_result(head, data, request["ids"])
        assert np.allclose(got, models[request["model"]].embed(request["seqs"]), atol=1e-5)


@pytest.mark.process
@fuzz(300)
@given(st.binary(max_size=300) | token_soup)
def test_server_fuzz_random_bytes(fuzzed, models, frame):
    send(fuzzed, [frame], models)


@pytest.mark.process
@fuzz(500)
@given(mutated())
def test_server_fuzz_mutated_frames(fuzzed, models, frame):
    send(fuzzed, [frame], models)


@pytest.mark.process
@fuzz(500)
@given(headers(short_only=True, types=("ping", "status", "embed", "embed", "bogus")),
       st.sampled_from(["ascii", "utf8"]))
def test_server_fuzz_structured_headers(fuzzed, models, head, how):
    send(fuzzed, [serialize(head, how)], models)


@pytest.mark.process
@fuzz(200)
@given(raw_edge() | st.sampled_from(VALID).flatmap(lambda f: st.lists(st.binary(max_size=20), min_size=1, max_size=3)
                                                          .map(lambda extra: [f] + extra)))
def test_server_fuzz_edge_cases_and_extra_frames(fuzzed, models, frames):
    send(fuzzed, frames if isinstance(frames, list) else [frames], models)


@pytest.mark.process
def test_after_the_fuzzing_the_server_is_alive_and_its_vectors_unchanged(fuzzed):
    """Runs after the fuzz tests above (file order): same process, ready, and the clean requests give the
    very vectors they gave before."""
    sidecar, _, before = fuzzed
    assert sidecar.proc.poll() is None
    with sidecar.client() as client:
        assert client.ping()["state"] == "ready" and client.ping()["pid"] == sidecar.proc.pid
        for model in CLEAN:
            assert np.array_equal(client.embed(model, *CLEAN[model]), before[model])
        status = client.status()
    assert status["queue"]["requests"] == 0 and status["queue"]["admitting"] == 0
    assert "Traceback" not in sidecar.log.read_text()
