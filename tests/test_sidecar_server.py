"""The sidecar serving end to end: one shared `sidecar serve` process with the real tiny models, real sockets.

Readiness, status, 64 concurrent clients, parity of `sidecar embed` with in-process embedding, bad
requests, backpressure. Vectors are checked bit for bit against the models' own `embed`.
"""

import json
import random
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from sidecar import protocol
from sidecar.client import SidecarClient, SidecarError
from test_sidecar_support import REPO, Sidecar, model_args, pools, raw_dealer, recv_header

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def shared(models, tmp_path_factory):
    sidecar = Sidecar(tmp_path_factory.mktemp("shared_sidecar"), model_args(models), wait_file=False)
    yield sidecar
    sidecar.close()


# ---- readiness, status, concurrency, parity (one shared sidecar) ------------------------------

def test_endpoint_file_written_before_ready_then_ping_says_loading_then_ready(shared):
    info = shared.wait_file()
    assert info["pid"] == shared.proc.pid and info["protocol"] == protocol.PROTOCOL
    assert info["version"] == protocol.VERSION and info["auth"] is None
    assert set(info["models"]) == {"esm2", "dnabert_s"} and info["device"] == "cpu"
    with shared.client() as client:
        first = client.ping()
        assert first["state"] == "loading"  # torch alone takes seconds to import; the file came first
        sock = raw_dealer(info["endpoint"])
        sock.send_multipart(protocol.embed("esm2", ["a"], ["MKV"], request_id="early"))
        head, _ = recv_header(sock)
        assert (head["type"], head["code"], head["retryable"], head["id"]) == ("error", "not_ready", True, "early")
        models = client.wait_ready()
        assert models == {"esm2": {"dim": 32, "name": "esm2_tiny"},
                          "dnabert_s": {"dim": 64, "name": shared.wait_file()["models"]["dnabert_s"]["source"]}}
        assert client.ping()["state"] == "ready"


def test_ipc_socket_is_private(shared):
    endpoint = shared.wait_file()["endpoint"]
    assert endpoint.startswith("ipc://")
    path = Path(endpoint[len("ipc://"):])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_single_requests_match_in_process_embedding(shared, models, reference):
    shared.wait_ready()
    with shared.client() as client:
        for model, seqs in pools().items():
            got = np.stack([client.embed(model, [f"s{i}"], [s])[0] for i, s in enumerate(seqs)])
            assert got.dtype == np.float32
            assert np.array_equal(got, reference[model])
            whole = client.embed(model, [f"s{i}" for i in range(len(seqs))], seqs)
            assert np.array_equal(whole, models[model].embed(seqs))  # exact ESM-2: the original's batches


def test_large_inputs_are_split_into_several_requests(shared, reference):
    """(Exact ESM-2 is split into the original's batches instead: test_exact_batching.)"""
    shared.wait_ready()
    seqs = pools()["dnabert_s"]
    with shared.client(max_request_seqs=7, window=2) as client:
        before = client.status()["models"]["dnabert_s"]["requests"]
        got = client.embed("dnabert_s", [f"x{i}" for i in range(len(seqs))], seqs)
        assert client.status()["models"]["dnabert_s"]["requests"] - before == 6  # ceil(40 / 7)
    assert np.array_equal(got, reference["dnabert_s"])


def test_64_clients_20_requests_each_get_their_own_vectors(shared, models):
    shared.wait_ready()
    pool = pools()
    context = zmq.Context()
    failures, results = [], {}

    def worker(c):
        rng = random.Random(c)
        try:
            with SidecarClient(shared.endpoint_file, context=context) as client:
                for r in range(20):
                    model = ("esm2", "dnabert_s")[(c + r) % 2]
                    picks = [rng.randrange(len(pool[model])) for _ in range(rng.randint(1, 4))]
                    ids = [f"c{c}r{r}s{i}p{p}" for i, p in enumerate(picks)]
                    got = client.embed(model, ids, [pool[model][p] for p in picks])
                    results[(c, r)] = (model, picks, got)
        except Exception as exc:  # surfaced below
            failures.append(f"client {c}: {exc}")

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(64)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - start
    context.term()
    assert not failures, failures[:3]
    assert len(results) == 64 * 20
    for model, picks, got in results.values():  # none lost, none swapped, bit-identical
        assert np.array_equal(got, models[model].embed([pool[model][p] for p in picks]))
    print(f"64 x 20 requests in {elapsed:.1f} s")


def test_status_reports_models_memory_queue_and_one_load_each(shared):
    shared.wait_ready()
    with shared.client() as client:
        status = client.status()
    assert status["state"] == "ready" and status["pid"] == shared.proc.pid and status["device"] == "cpu"
    assert status["uptime_s"] > 0 and status["memory"]["rss_bytes"] > 10_000_000
    assert status["queue"]["requests"] == 0 and status["queue"]["max_batch_tokens"] == 4096
    for model, dim in (("esm2", 32), ("dnabert_s", 64)):
        entry = status["models"][model]
        assert entry["loads"] == 1 and entry["dim"] == dim
        assert entry["requests"] >= 640 and entry["tokens"] > entry["sequences"] >= entry["requests"]
    log = shared.log.read_text()
    assert "queue_wait=" in log and "compute=" in log and "model=esm2" in log


def test_cli_embed_writes_the_in_process_vectors_and_never_imports_torch(shared, models, tmp_path):
    shared.wait_ready()
    pool = pools(seed=5, n=25)
    (tmp_path / "x.fa").write_text("".join(f">r{i} desc\n{s}\n" for i, s in enumerate(pool["dnabert_s"])))
    (tmp_path / "x.faa").write_text("".join(f">r{i}\n{s}\n" for i, s in enumerate(pool["esm2"])))
    script = (
        "import sys, time\n"
        "start = time.monotonic()\n"
        "from sidecar.cli import main\n"
        f"rc = main(['embed', '--endpoint-file', {str(shared.endpoint_file)!r}, "
        f"'--nucleotide', {str(tmp_path / 'x.fa')!r}, '--protein', {str(tmp_path / 'x.faa')!r}, "
        f"'--dnabert-out', {str(tmp_path / 'out' / 'A.npz')!r}, '--esm-out', {str(tmp_path / 'out' / 'B.npz')!r}])\n"
        "assert rc == 0, rc\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'esm', 'tokenizers', 'transformers'))\n"
        "print('HEAVY', heavy, 'SECONDS', round(time.monotonic() - start, 3))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY [] " in proc.stdout, proc.stdout
    from virnucflow.embedding_files import load_embeddings

    ids, dna = load_embeddings(tmp_path / "out" / "A.npz")
    assert ids == [f"r{i}" for i in range(25)]
    assert np.array_equal(dna, models["dnabert_s"].embed(pool["dnabert_s"]))
    ids, prot = load_embeddings(tmp_path / "out" / "B.npz")
    assert ids == [f"r{i}" for i in range(25)]
    assert np.array_equal(prot, models["esm2"].embed(pool["esm2"]))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["A.npz", "B.npz"]


def test_cli_status_and_bad_requests(shared):
    shared.wait_ready()
    proc = subprocess.run([sys.executable, "-m", "sidecar", "status", "--endpoint-file", str(shared.endpoint_file)],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and json.loads(proc.stdout)["models"]["esm2"]["loads"] == 1
    sock = raw_dealer(shared.wait_file()["endpoint"])
    cases = [
        ([b"not json"], "bad_request"),
        (protocol.embed("bert", ["a"], ["ACGT"]), "unknown_model"),
        (protocol.embed("esm2", ["a", "b"], ["MK", ""]), "bad_request"),
        ([protocol.embed("esm2", ["a"], ["MK"])[0], b"extra"], "bad_request"),
    ]
    for frames, code in cases:
        sock.send_multipart(frames)
        head, _ = recv_header(sock)
        assert head["type"] == "error" and head["code"] == code and "\n" not in head["message"]
    with shared.client() as client:
        with pytest.raises(SidecarError, match="does not serve 'bert'"):
            client.embed("bert", ["a"], ["ACGT"])


# ---- backpressure -----------------------------------------------------------------------------

def test_full_queue_answers_busy_and_clients_retry_until_served(spawn, models):
    sidecar = spawn(*model_args(models, ["esm2"]), "--max-queued-requests", "1", "--max-batch-tokens", "64")
    sidecar.wait_ready()
    pool = pools()["esm2"]
    sock = raw_dealer(sidecar.wait_file()["endpoint"])
    big = pool * 10  # 400 sequences keep the only queue slot busy for a while
    sock.send_multipart(protocol.embed("esm2", [str(i) for i in range(len(big))], big, request_id="big"))
    sock.send_multipart(protocol.embed("esm2", ["x"], [pool[0]], request_id="small"))
    head, _ = recv_header(sock)
    assert (head["id"], head["type"], head["code"], head["retryable"]) == ("small", "error", "busy", True)
    head, data = recv_header(sock)
    assert head["id"] == "big"
    assert np.array_equal(protocol.decode_result(head, data, [str(i) for i in range(len(big))]),
                          models["esm2"].embed(big))

    busy, failures = [], []

    def worker(c):
        try:
            with sidecar.client() as client:
                for r in range(5):
                    got = client.embed("esm2", ["a", "b"], [pool[c], pool[r]])
                    assert np.array_equal(got, models["esm2"].embed([pool[c], pool[r]]))
                busy.append(client.busy_replies)
        except Exception as exc:
            failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures and len(busy) == 8
    assert sum(busy) > 0  # the bound was hit, and every request still got through
    with sidecar.client() as client:
        assert client.status()["models"]["esm2"]["requests"] == 1 + 8 * 5
