"""Bounded decoding and isolation of the sidecar: one regression test per finding of the protocol probe.

Deep JSON nesting, a `true`/`1.0` version, a lone surrogate batched with an innocent request, and a
64 MiB sequence each once hurt the server or another client; here each is refused with a one-line
`bad_request` while the server goes on answering, pings included, within a second.
"""

import json
import re
import string
import time

import numpy as np
import pytest

from sidecar import protocol
from sidecar.backends import WHOLE_REQUESTS, make_backend
from sidecar.batcher import Batcher, Job
from test_sidecar_support import Sidecar, model_args, pools, raw_dealer, recv_header

HEAD = {"proto": protocol.PROTOCOL, "v": protocol.VERSION, "type": "ping", "id": "p"}


def refused(frame, match):
    with pytest.raises(protocol.ProtocolError, match=match) as info:
        head = protocol.decode_header(frame)
        protocol.check_embed_request(head, [], list(protocol.MODELS))
    assert "\n" not in str(info.value)
    return str(info.value)


# ---- unit: decoding within the limits ---------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("depth", [17, 50_000, 100_000])
def test_deep_nesting_is_refused_before_json_parses_it(depth):
    for opening in "[{":
        inner = '{"a":' * (depth - 1) + "1" + "}" * (depth - 1) if opening == "{" else "[" * depth + "]" * depth
        frame = json.dumps(dict(HEAD, x=None)).replace("null", inner).encode()
        refused(frame, f"nests {depth + (opening == '[')} levels deep; the limit is 16")
    refused(b"[" * depth, f"nests {depth} levels")  # unterminated: the parser is never reached either


@pytest.mark.unit
def test_brackets_inside_strings_do_not_count_as_nesting():
    head = dict(HEAD, id='[{"\\' * 100 + "]")
    assert protocol.decode_header(json.dumps(head).encode()) == head
    assert protocol.json_depth(json.dumps([[1, "]]]"], {"a": ["[[[\\\"[["]}]).encode()) == 3


@pytest.mark.unit
@pytest.mark.parametrize("version", [True, 1.0, "1", [1], None, 2])
def test_only_the_integer_1_is_version_1(version):
    refused(json.dumps(dict(HEAD, v=version)).encode(), re.escape(f"protocol version {version!r} is not supported"))
    assert protocol.decode_header(json.dumps(HEAD).encode())["v"] == 1


@pytest.mark.unit
def test_oversized_frames_and_requests_are_refused_naming_the_limit():
    limits = protocol.LIMITS
    big = protocol.embed("dnabert_s", ["big"], ["A" * (64 * 2**20)])[0]
    start = time.monotonic()
    message = refused(big, f"exceeds the limit of {limits.max_header_bytes}")
    assert time.monotonic() - start < 0.5 and "fewer or shorter" in message
    cases = [
        ("dnabert_s", ["x"], ["A" * (limits.max_seq_len_dnabert_s + 1)],
         "10001 nucleotides; this sidecar takes at most 10000 for dnabert_s \\(--max-seq-len-dnabert-s\\)"),
        ("esm2", ["x"], ["M" * (limits.max_seq_len_esm2 + 1)], "10001 residues; .* \\(--max-seq-len-esm2\\)"),
        ("esm2", [str(i) for i in range(1025)], ["M"] * 1025, "1025 sequences in one request; the limit is 1024"),
        ("esm2", [str(i) for i in range(110)], ["M" * 10_000] * 110, f"exceed {limits.max_request_chars} characters"),
        ("esm2", ["i" * 1001], ["M"], "longer than 1000 characters"),
        ("esm2", ["a\ud800"], ["M"], "not valid Unicode"),
        ("esm2", [1], ["M"], "must be strings"),
    ]
    for model, ids, seqs, match in cases:
        refused(protocol.embed(model, ids, seqs)[0], match)
    at_limit = protocol.decode_header(protocol.embed("dnabert_s", ["x"], ["A" * 10_000])[0])
    assert protocol.check_embed_request(at_limit, [], ["dnabert_s"])[2] == ["A" * 10_000]


@pytest.mark.unit
def test_a_request_at_every_limit_fits_in_the_header_limit():
    limits = protocol.LIMITS
    n = limits.max_request_seqs
    ids = ["\U0001F600" * limits.max_id_chars] * n  # the longest JSON escape: 12 bytes per character
    seqs = ["A" * (limits.max_request_chars // n)] * n
    frame = protocol.embed("dnabert_s", ids, seqs, request_id="r" * limits.max_id_chars)[0]
    assert len(frame) <= limits.max_header_bytes
    assert protocol.check_embed_request(protocol.decode_header(frame), [], ["dnabert_s"])[1] == ids


@pytest.mark.unit
@pytest.mark.parametrize("model, seq, position", [
    ("esm2", "MK\ud800V", 3), ("esm2", "MKJ", 3), ("esm2", "mkv", 1), ("esm2", "MK*", 3), ("esm2", "M<mask>", 2),
    ("dnabert_s", "ACGTacgt", 5), ("dnabert_s", "AC GT", 3), ("dnabert_s", "AC[CLS]", 3), ("dnabert_s", "ACGT\xe9", 5),
])
def test_sequences_outside_the_model_alphabet_are_refused(model, seq, position):
    bad = seq[position - 1]
    message = f"sequence 's' has {bad!r} at position {position}, which"
    refused(protocol.embed(model, ["s"], [seq])[0], re.escape(message))


@pytest.mark.unit
def test_the_alphabets_are_what_the_tokenizers_and_the_workflow_take(models):
    """ESM-2: exactly the one-letter tokens of fair-esm's alphabet that are letters (others raise KeyError
    there); every protein the workflow translates fits. DNABERT-S: every character virnucflow's FASTA
    reader accepts, upper-cased as the workflow does, tokenizes without error."""
    import esm

    from virnucflow.fasta import _SEQUENCE_CHARS
    from virnucflow.translation import CODON_TABLE

    tokens = esm.data.Alphabet.from_architecture("ESM-1b").tok_to_idx
    letters = {t for t in tokens if len(t) == 1 and t in string.ascii_letters}
    assert set(protocol.ALPHABETS["esm2"]) == letters
    assert set(CODON_TABLE.values()) - {"*"} <= letters
    fasta_chars = {c.upper() for c in string.printable if _SEQUENCE_CHARS.fullmatch(c)}
    assert fasta_chars == set(protocol.ALPHABETS["dnabert_s"])
    dna = models["dnabert_s"]
    assert dna.count_tokens(protocol.ALPHABETS["dnabert_s"]) >= 3
    unk = dna.tokenizer.token_to_id("[UNK]")
    assert set(dna.token_ids("acgt")[1:-1]) == {unk}  # why lower case is refused: it would embed as [UNK]s


@pytest.mark.unit
def test_limits_are_checked_together():
    assert protocol.LIMITS.check() is protocol.LIMITS
    import dataclasses

    with pytest.raises(ValueError, match="--max-seq-len-esm2 must be a positive integer"):
        dataclasses.replace(protocol.LIMITS, max_seq_len_esm2=0).check()
    with pytest.raises(ValueError, match="--max-seq-len-dnabert-s 2000000 exceeds"):
        dataclasses.replace(protocol.LIMITS, max_seq_len_dnabert_s=2_000_000).check()


# ---- unit: isolation in the batch path --------------------------------------------------------

@pytest.mark.unit
def test_a_sequence_that_fails_fails_alone_in_a_shared_batch(models):
    """The probe's path: an un-encodable sequence batched with an innocent request failed both (the dedup
    cache hashed the batch's text). The server refuses it at admission now; below admission too, the
    innocent request batched with it gets its exact vectors. (Exact ESM-2 batches no request with another:
    the bad request fails alone in its own batch.)"""
    for model, innocent_seqs, bad_seq, whole in (("dnabert_s", pools(n=3)["dnabert_s"], "AC\ud800GT", ()),
                                                 ("esm2", pools(n=3)["esm2"], "MK\ud800V", WHOLE_REQUESTS["exact"])):
        source = models["esm2_path" if model == "esm2" else "dnabert_path"]
        backend = make_backend(model, source, cache_bytes=2**20).load()
        batcher = Batcher(max_batch_tokens=10_000, whole_jobs=whole)
        innocent = Job(model, ["a", "b", "c"], innocent_seqs, [len(s) + 2 for s in innocent_seqs], backend.dim)
        bad = Job(model, ["bad"], [bad_seq], [6], backend.dim)
        batcher.submit(bad)
        batcher.submit(innocent)
        finished = []
        while len(finished) < 2:
            batch = batcher.next_batch(0)
            assert len(batch) == (4 if not whole else 1 if batch.parts[0][0] is bad else 3), model
            matrix, errors = backend.collect(backend.launch_rows(batch.seqs, batch.token_ids))
            finished += batcher.complete(batch, matrix, errors)
        assert set(finished) == {bad, innocent}
        assert bad.error and innocent.error is None, bad.error
        assert np.array_equal(innocent.result, models[model].embed(innocent_seqs))


# ---- process: a real server -------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    sidecar = Sidecar(tmp_path_factory.mktemp("limits_sidecar"),
                      model_args(models) + ["--max-seq-len-esm2", "500", "--dedup-cache-mb", "0"])  # every row computed
    sidecar.wait_ready()
    yield sidecar
    sidecar.close()


def ask(sock, frames, timeout=10.0):
    sock.send_multipart(frames)
    head, data = recv_header(sock, timeout)
    return head, data


def assert_alive(server, sock=None, timeout=1.0):
    """Ping (on `sock`, or on a new connection); returns the seconds the pong took."""
    own = sock is None
    sock = raw_dealer(server.wait_file()["endpoint"]) if own else sock
    start = time.monotonic()
    head, _ = ask(sock, protocol.ping(request_id="alive"), timeout)
    elapsed = time.monotonic() - start
    if own:
        sock.close()
    assert head["type"] == "pong" and head["state"] == "ready" and head["pid"] == server.proc.pid
    return elapsed


@pytest.mark.process
def test_server_refuses_deep_nesting_bool_version_and_huge_frames_and_goes_on(server):
    sock = raw_dealer(server.wait_file()["endpoint"])
    frames = [b"[" * 100_000, json.dumps(dict(HEAD, x=None)).replace("null", "[" * 50_000 + "]" * 50_000).encode(),
              json.dumps(dict(HEAD, v=True)).encode(), json.dumps(dict(HEAD, v=1.0)).encode(),
              protocol.embed("dnabert_s", ["big"], ["A" * (64 * 2**20)])[0]]
    for frame in frames:
        start = time.monotonic()
        head, _ = ask(sock, [frame])
        assert time.monotonic() - start < 2.0
        assert (head["type"], head["code"]) == ("error", "bad_request") and "\n" not in head["message"]
        assert assert_alive(server) < 1.0
    assert server.proc.poll() is None


@pytest.mark.process
def test_bad_sequence_fails_its_own_request_never_a_batch_mate(server):
    endpoint = server.wait_file()["endpoint"]
    innocent_seqs = pools()["esm2"][:8]
    with server.client() as client:
        clean = client.embed("esm2", list("abcdefgh"), innocent_seqs)  # the same request, alone
    bad, innocent = raw_dealer(endpoint), raw_dealer(endpoint)
    for round_ in range(5):  # sent back to back, from two clients and from one
        bad.send_multipart(protocol.embed("esm2", ["x", "y"], ["MKV", "M\ud800K"], request_id=f"bad{round_}"))
        innocent.send_multipart(protocol.embed("esm2", list("abcdefgh"), innocent_seqs, request_id=f"ok{round_}"))
        bad.send_multipart(protocol.embed("esm2", ["z"], ["mkv"], request_id=f"bad-lower{round_}"))
        head, data = recv_header(innocent)
        assert head["id"] == f"ok{round_}" and head["type"] == "result"
        assert np.array_equal(protocol.decode_result(head, data, list("abcdefgh")), clean)
        for expected, match in ((f"bad{round_}", "'y' has '\\ud800' at position 2"), (f"bad-lower{round_}", "'m'")):
            head, _ = recv_header(bad)
            assert (head["id"], head["code"]) == (expected, "bad_request") and match in head["message"]


@pytest.mark.process
def test_serve_option_sets_the_longest_sequence(server):
    sock = raw_dealer(server.wait_file()["endpoint"])
    head, _ = ask(sock, protocol.embed("esm2", ["long"], ["M" * 501]))
    assert head["code"] == "bad_request"
    assert "'long' has 501 residues; this sidecar takes at most 500 for esm2 (--max-seq-len-esm2)" in head["message"]
    head, _ = ask(sock, protocol.embed("esm2", ["ok"], ["M" * 500]))
    assert head["type"] == "result"
    head, _ = ask(sock, protocol.embed("dnabert_s", ["long"], ["A" * 10_001]))
    assert "at most 10000 for dnabert_s (--max-seq-len-dnabert-s)" in head["message"]
    with server.client() as client:
        assert client.status()["limits"]["max_seq_len_esm2"] == 500


@pytest.mark.process
def test_pings_answered_within_a_second_with_max_size_work_queued(spawn, models):
    """Requests at the size limits (1 MiB of 10,000-nt sequences each) keep the compute thread busy for
    minutes; the socket loop still answers every ping within a second."""
    sidecar = spawn(*model_args(models, ["dnabert_s"]), "--drain-timeout", "0")
    sidecar.wait_ready()
    limits = protocol.LIMITS
    n = limits.max_request_chars // limits.max_seq_len_dnabert_s
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    rng = np.random.default_rng(0)
    sock, pinger = raw_dealer(sidecar.wait_file()["endpoint"]), raw_dealer(sidecar.wait_file()["endpoint"])
    assert_alive(sidecar, pinger, timeout=5.0)  # connected before the flood
    for r in range(16):
        seqs = [bases[row].tobytes().decode() for row in rng.integers(0, 4, (n, limits.max_seq_len_dnabert_s))]
        sock.send_multipart(protocol.embed("dnabert_s", [f"{r}.{i}" for i in range(n)], seqs, request_id=f"big{r}"))
    busy, waits, deadline = 0, [], time.monotonic() + 120
    with sidecar.client() as client:
        while True:  # pings while the requests are admitted (the queue fills, the rest are told BUSY), then after
            waits.append(assert_alive(sidecar, pinger, timeout=5.0))
            while sock.poll(0):
                head, _ = recv_header(sock)
                assert head["code"] == "busy"
                busy += 1
            queue = client.status()["queue"]
            if queue["requests"] + busy == 16 and len(waits) >= 10:
                break
            assert time.monotonic() < deadline, queue
            time.sleep(0.1)
    assert queue["requests"] >= 8 and queue["tokens"] > 2_000_000  # minutes of work for the tiny model
    print(f"ping round trips: max {max(waits):.3f} s over {len(waits)}")
    assert max(waits) < 1.0, waits
