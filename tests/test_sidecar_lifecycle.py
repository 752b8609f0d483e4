"""The sidecar's lifecycle end to end: shutdown, orphan exits, a dead sidecar, TCP secrets, the launcher.

Each test runs its own `sidecar serve` child process with the real tiny models.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from sidecar import auth, protocol
from sidecar.client import SidecarClient, SidecarError
from sidecar.launcher import ensure_sidecar
from test_sidecar_support import REPO, model_args, pools, raw_dealer, recv_header, wait_until

pytestmark = pytest.mark.process


# ---- shutdown and orphan handling -------------------------------------------------------------

def test_sigterm_finishes_in_flight_work_then_exits_cleanly(spawn, models):
    sidecar = spawn(*model_args(models, ["esm2"]))
    sidecar.wait_ready()
    endpoint = sidecar.wait_file()["endpoint"]
    socket_dir = Path(endpoint[len("ipc://"):]).parent
    pool = pools()["esm2"]
    big = pool * 15
    outcome = {}

    def work():  # one request (a client would send exact ESM-2 as several, one per batch of the original's)
        ids = [str(i) for i in range(len(big))]
        sock = raw_dealer(endpoint)
        sock.send_multipart(protocol.embed("esm2", ids, big, request_id="big"))
        head, data = recv_header(sock, timeout=30)
        outcome["vectors"] = protocol.decode_result(head, data, ids)

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 10
    with sidecar.client() as client:
        while client.status()["queue"]["requests"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    sidecar.proc.send_signal(signal.SIGTERM)
    with sidecar.client() as client:
        while client.ping()["state"] != "stopping":
            assert time.monotonic() < deadline
    late = raw_dealer(endpoint)
    late.send_multipart(protocol.embed("esm2", ["late"], ["MKV"], request_id="late"))
    head, _ = recv_header(late)
    assert head["code"] == "shutting_down"
    thread.join(30)
    assert np.array_equal(outcome["vectors"], models["esm2"].embed(big))
    assert sidecar.wait_exit(15) == 0
    assert not sidecar.endpoint_file.exists() and not socket_dir.exists()
    assert "SIGTERM received" in sidecar.log.read_text()


def test_a_request_read_after_a_stop_request_is_refused(spawn, models):
    """A stop request and an embed request read in the same round: the embed is refused, as the sidecar's pong
    would say once the stop was asked for (a stop that lands between a round's check and its reads)."""
    sidecar = spawn(*model_args(models, ["esm2"]))
    sidecar.wait_ready()
    sock = raw_dealer(sidecar.wait_file()["endpoint"])
    sock.send_multipart(protocol.stop("stop"))
    sock.send_multipart(protocol.embed("esm2", ["late"], ["MKV"], request_id="late"))
    replies = {head["id"]: head for head, _ in (recv_header(sock) for _ in range(2))}
    assert replies["stop"]["type"] == protocol.STOPPING
    assert replies["late"].get("code") == protocol.SHUTTING_DOWN, replies
    assert sidecar.wait_exit(15) == 0


def test_exits_when_the_watched_process_is_gone(spawn, models):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        sidecar = spawn(*model_args(models, ["dnabert_s"]), "--watch-pid", parent.pid)
        sidecar.wait_ready()
    finally:
        parent.kill()
        parent.wait()
    start = time.monotonic()
    assert sidecar.wait_exit(10) == 0
    assert time.monotonic() - start < 3
    assert not sidecar.endpoint_file.exists()
    assert f"watched pid {parent.pid} is gone" in sidecar.log.read_text()


def test_a_watched_process_gone_before_the_start_means_no_start(models, tmp_path):
    """What a job left running by a killed Snakemake gets when it tries to start its sidecar: one line, and
    no endpoint file that would outlive the run."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    endpoint_file = tmp_path / "e.json"
    proc = subprocess.run([sys.executable, "-m", "sidecar", "serve", "--endpoint-file", str(endpoint_file),
                           *model_args(models, ["dnabert_s"]), "--watch-pid", str(gone.pid)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and not endpoint_file.exists()
    assert proc.stderr.strip() == f"sidecar serve: watched pid {gone.pid} is already gone; not starting"


def test_exits_when_its_endpoint_file_is_removed_even_while_loading(spawn, models):
    sidecar = spawn(*model_args(models, ["dnabert_s"]))
    socket_dir = Path(sidecar.wait_file()["endpoint"][len("ipc://"):]).parent
    sidecar.endpoint_file.unlink()
    removed = time.monotonic()
    assert sidecar.wait_exit(10) == 0
    assert time.monotonic() - removed < 2  # it does not wait for the models to finish loading
    assert not socket_dir.exists()
    assert "was removed" in sidecar.log.read_text()


def test_ends_once_every_lease_is_given_back_and_gives_back_the_rest_when_stopped(spawn, models, tmp_path):
    """--lease-dir (SLURM, one lease per sample): no lease yet is no reason to end; the last lease removed
    is, after the grace; stopped for another reason (SIGTERM here) it removes the leases left."""
    leases = tmp_path / "cpu"
    leases.mkdir()
    sidecar = spawn(*model_args(models, ["dnabert_s"]), "--lease-dir", leases, name="leased.json")
    sidecar.wait_ready()
    time.sleep(1.0)
    assert sidecar.proc.poll() is None  # never held a lease: waits for its first
    for sample in ("a", "b"):
        (leases / f"{sample}.started").write_text("{}")
    time.sleep(1.0)
    (leases / "a.started").unlink()
    time.sleep(6.0)
    assert sidecar.proc.poll() is None  # b still holds one
    (leases / "b.started").unlink()
    released = time.monotonic()
    assert sidecar.wait_exit(15) == 0
    assert 4.0 < time.monotonic() - released < 9
    assert "no sample holds a lease any more" in sidecar.log.read_text()

    other = spawn(*model_args(models, ["dnabert_s"]), "--lease-dir", leases, name="stopped.json")
    (leases / "c.started").write_text("{}")
    other.wait_ready()
    other.proc.send_signal(signal.SIGTERM)
    assert other.wait_exit(15) == 0
    assert not list(leases.iterdir()) and "removed 1 lease(s)" in other.log.read_text()


def test_a_lease_announced_in_a_ping_holds_and_a_stopping_sidecar_never_takes_one(spawn, models, tmp_path):
    """The reuse of a SLURM sidecar job (workflow/scripts/slurm_sidecar.py): a taker writes its lease, then
    announces it in a ping. A lease whose file the sidecar's listing does not show yet (a shared file
    system's cached listing) still holds it; a sidecar that has decided to end answers "stopping" and
    leaves the lease for the next sidecar job."""
    leases = tmp_path / "leases"
    leases.mkdir()
    sidecar = spawn(*model_args(models, ["esm2"]), "--lease-dir", leases, name="announced.json")
    sidecar.wait_ready()
    (leases / "a.started").write_text("{}")
    time.sleep(1.5)
    (leases / "a.started").unlink()
    time.sleep(2.0)
    with sidecar.client() as client:
        assert client.ping(lease="b.started")["state"] == "ready"  # its file not visible (yet)
        bad = client.ping(lease="../elsewhere")
    assert bad["type"] == "error" and "not a lease file name" in bad["message"]
    time.sleep(7.0)
    assert sidecar.proc.poll() is None  # a's grace is long over: the announced lease holds it
    (leases / "b.started").write_text("{}")
    time.sleep(1.5)  # seen in the listing: from now on the file alone counts
    (leases / "b.started").unlink()
    assert sidecar.wait_exit(15) == 0
    assert "lease b.started announced" in sidecar.log.read_text()

    # a sidecar that is ending: leases given back while it still computes queued work
    busy = spawn(*model_args(models, ["esm2"]), "--lease-dir", leases, "--drain-timeout", "5", name="ending.json")
    busy.wait_ready()
    (leases / "c.started").write_text("{}")
    time.sleep(1.5)  # seen in the listing
    sock = raw_dealer(busy.wait_file()["endpoint"])
    proteins = [p * 8 for p in pools(seed=5, n=250)["esm2"]]
    for i in range(100):  # far more than the grace period's worth of work, queued (up to the queue bound)
        sock.send_multipart(protocol.embed("esm2", [f"q{j}" for j in range(len(proteins))], proteins,
                                           request_id=f"busy{i}"))
    with busy.client() as client:
        wait_until(lambda: client.status()["queue"]["requests"] > 0, 30, "the work to be queued")
        (leases / "c.started").unlink()
        wait_until(lambda: client.ping()["state"] == "stopping", 30, "the sidecar to decide to end")
        (leases / "d.started").write_text("{}")  # a taker's lease, written before its ping
        assert client.ping(lease="d.started")["state"] == "stopping"
    assert busy.wait_exit(60) == 0
    assert "lease d.started announced" not in busy.log.read_text()
    assert (leases / "d.started").exists()  # left for the sidecar job that the taker submits next


def test_exits_after_the_idle_timeout(spawn, models):
    sidecar = spawn(*model_args(models, ["dnabert_s"]), "--idle-timeout", "1.5")
    sidecar.wait_ready()
    with sidecar.client() as client:
        client.embed("dnabert_s", ["a"], ["ACGTACGT"])
        time.sleep(1.0)
        client.embed("dnabert_s", ["a"], ["ACGTACGT"])  # a request resets the clock
    start = time.monotonic()
    assert sidecar.wait_exit(10) == 0
    assert 1.0 < time.monotonic() - start < 4
    assert "idle for 1.5 s" in sidecar.log.read_text()


def test_a_second_server_refuses_a_live_endpoint_file(spawn, models, tmp_path):
    first = spawn(*model_args(models, ["dnabert_s"]))
    first.wait_file()
    proc = subprocess.run([sys.executable, "-m", "sidecar", "serve", "--endpoint-file", str(first.endpoint_file),
                           *model_args(models, ["dnabert_s"])], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "already names a running sidecar pid" in proc.stderr
    assert json.loads(first.endpoint_file.read_text())["pid"] == first.proc.pid


def test_failed_model_load_is_reported_to_waiting_clients(spawn, tmp_path):
    sidecar = spawn("--esm2", tmp_path / "missing_esm2.pt")
    with sidecar.client(ready_timeout=30) as client:
        with pytest.raises(SidecarError, match="could not load its models: .*missing_esm2"):
            client.wait_ready()


# ---- a dead sidecar ---------------------------------------------------------------------------

def test_a_killed_sidecar_gives_its_clients_a_clear_error_fast(spawn, models, tmp_path):
    sidecar = spawn(*model_args(models))
    sidecar.wait_ready()
    proteins = pools(n=2000)["esm2"]  # distinct (no cache hits): seconds of work, still running when it dies
    (tmp_path / "big.faa").write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(proteins)))
    (tmp_path / "big.fa").write_text(">d0\nACGTACGTAA\n")
    out = tmp_path / "out"
    embed = subprocess.Popen([sys.executable, "-m", "sidecar", "embed", "--endpoint-file", str(sidecar.endpoint_file),
                              "--nucleotide", str(tmp_path / "big.fa"), "--protein", str(tmp_path / "big.faa"),
                              "--dnabert-out", str(out / "A.npz"), "--esm-out", str(out / "B.npz")],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    with sidecar.client() as client:
        while client.status()["models"]["esm2"]["requests"] == 0:
            assert time.monotonic() < deadline and embed.poll() is None
            time.sleep(0.01)
    socket_dir = Path(sidecar.wait_file()["endpoint"][len("ipc://"):]).parent
    sidecar.proc.kill()
    killed = time.monotonic()
    _, stderr = embed.communicate(timeout=30)
    assert time.monotonic() - killed < 3
    assert embed.returncode == 3
    assert stderr.count("\n") == 1, stderr
    assert f"sidecar pid {sidecar.proc.pid}" in stderr and "died while embedding" in stderr
    assert "big.fa and " in stderr and "big.faa" in stderr and "--retries" in stderr  # the part, both files
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    shutil.rmtree(socket_dir)  # what a SIGKILLed sidecar leaves; its successor would remove it


def test_no_sidecar_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sidecar", "status", "--endpoint-file", str(tmp_path / "none.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


# ---- TCP with a shared secret -----------------------------------------------------------------

def test_tcp_needs_the_secret(spawn, models, tmp_path):
    secret = tmp_path / "secret.json"
    sidecar = spawn(*model_args(models, ["dnabert_s"]), "--tcp", "0", "--secret-file", secret)  # HOST: loopback
    info = sidecar.wait_file()
    assert info["endpoint"].startswith("tcp://127.0.0.1:")
    assert info["auth"]["mechanism"] == "curve" and info["auth"]["secret_file"] == str(secret)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    with sidecar.client() as client:  # the secret named by the endpoint file
        client.wait_ready()
        assert client.embed("dnabert_s", ["a"], ["ACGTACGT"]).shape == (1, 64)

    plain = raw_dealer(info["endpoint"])  # no CURVE at all: nothing comes back
    plain.send_multipart(protocol.ping())
    plain.send_multipart(protocol.embed("dnabert_s", ["a"], ["ACGT"]))
    assert plain.poll(1500) == 0

    wrong = auth.create(tmp_path / "other.json")
    keys = auth.load(secret)
    impostor = zmq.Context.instance().socket(zmq.DEALER)  # knows the server key, not the client secret
    impostor.setsockopt(zmq.LINGER, 0)
    auth.setup_client(impostor, dict(wrong, server_public=keys["server_public"]))
    impostor.connect(info["endpoint"])
    impostor.send_multipart(protocol.ping())
    assert impostor.poll(1500) == 0
    with sidecar.client(secret_file=tmp_path / "other.json") as client:
        with pytest.raises(SidecarError, match="refused the connection"):
            client.ping(timeout=5)
    with sidecar.client() as client:
        assert client.status()["models"]["dnabert_s"]["requests"] == 1


def test_tcp_without_a_secret_file_does_not_start(tmp_path, models):
    proc = subprocess.run([sys.executable, "-m", "sidecar", "serve", "--endpoint-file", str(tmp_path / "e.json"),
                           *model_args(models, ["dnabert_s"]), "--tcp", "127.0.0.1:0"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "--secret-file" in proc.stderr and not (tmp_path / "e.json").exists()


def test_an_open_secret_file_is_refused(tmp_path):
    path = tmp_path / "s.json"
    auth.create(path)
    os.chmod(path, 0o644)
    with pytest.raises(auth.SecretError, match="chmod 600"):
        auth.load(path)


# ---- the launcher -----------------------------------------------------------------------------

def test_ensure_starts_one_detached_sidecar_for_many_callers(models, tmp_path):
    endpoint_file = tmp_path / "run" / "gpu0.json"
    serve = [*model_args(models, ["dnabert_s"]), "--threads", "1"]
    (tmp_path / "run").mkdir()
    endpoint_file.write_text(json.dumps({"protocol": protocol.PROTOCOL, "version": protocol.VERSION,
                                         "endpoint": "ipc:///nonexistent", "pid": 999999, "host": os.uname()[1]}))
    infos, errors = [], []

    def call():
        try:
            infos.append(ensure_sidecar(endpoint_file, serve, timeout=30))
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=call) for _ in range(6)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    bound_after = time.monotonic() - start
    assert not errors, errors
    pids = {info["pid"] for info in infos}
    assert len(pids) == 1 and 999999 not in pids  # the stale file was replaced, by one server only
    pid = pids.pop()
    try:
        assert os.getsid(pid) == pid  # its own session: a Ctrl-C or group kill of the caller spares it
        with SidecarClient(endpoint_file) as client:
            print(f"bound after {bound_after:.2f} s, state then {client.ping()['state']}")
            client.wait_ready()
        again = ensure_sidecar(endpoint_file, serve, wait="ready")
        assert again["pid"] == pid
        proc = subprocess.run([sys.executable, "-m", "sidecar", "stop", "--endpoint-file", str(endpoint_file)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert not endpoint_file.exists()
        assert "loaded dnabert_s" in (tmp_path / "run" / "gpu0.json.log").read_text()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ensure_reports_a_server_that_cannot_start(tmp_path):
    with pytest.raises(SidecarError, match="exited with code"):
        ensure_sidecar(tmp_path / "e.json", ["--tcp", "127.0.0.1:0"], timeout=30)


def test_embed_with_ensure_replaces_a_killed_sidecar(models, tmp_path):
    endpoint_file = tmp_path / "ep.json"
    serve = [*model_args(models, ["dnabert_s"]), "--threads", "1", "--idle-timeout", "60"]
    first = ensure_sidecar(endpoint_file, serve)["pid"]
    os.kill(first, signal.SIGKILL)
    dna = pools(n=6)["dnabert_s"]
    (tmp_path / "x.fa").write_text("".join(f">d{i}\n{s}\n" for i, s in enumerate(dna)))
    proc = subprocess.run([sys.executable, "-m", "sidecar", "embed", "--endpoint-file", str(endpoint_file),
                           "--nucleotide", str(tmp_path / "x.fa"), "--dnabert-out", str(tmp_path / "A.npz"),
                           "--ensure", *serve], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    second = json.loads(endpoint_file.read_text())["pid"]
    try:
        assert second != first
        from virnucflow.embedding_files import load_embeddings

        ids, data = load_embeddings(tmp_path / "A.npz")
        assert ids == [f"d{i}" for i in range(6)] and np.array_equal(data, models["dnabert_s"].embed(dna))
    finally:
        with SidecarClient(endpoint_file) as client:
            client.stop()
