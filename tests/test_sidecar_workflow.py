"""The sidecar's lifecycle under real Snakemake runs (issue 3): one model load per run, failures that cost
one file, no sidecar outliving a killed run, recovery with --retries, and a hand-started sidecar shared by runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from workflow_runs import (
    job_counts, orf_workload as many_parts_config, pid_alive, snakemake, start_snakemake, wait_for,
)

pytestmark = pytest.mark.workflow
RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv")


def sidecar_pids():
    """Pids of every `sidecar serve` process on this machine that runs from a test workdir of ours."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {int(line.split(None, 1)[0]) for line in out.splitlines() if "sidecar serve" in line}


def status(endpoint_file):
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", "status", "--endpoint-file", str(endpoint_file)],
        capture_output=True, text=True, timeout=60,
    )
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def merged_count(workdir, sample="orfs"):
    return len(list((workdir / "results" / sample / "merged").glob("output_*_merged.pt")))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The in-process path on the 12-part workload: what every sidecar run below must reproduce."""
    workdir = tmp_path_factory.mktemp("reference")
    many_parts_config(workdir, 12, embedding={"sidecar": False, "device": "cpu"})
    snakemake(workdir, "--cores", "2")
    return workdir


def same_results(a, b, sample="orfs"):
    return all(
        (a / "results" / sample / name).read_bytes() == (b / "results" / sample / name).read_bytes()
        for name in RESULTS
    )


def test_200_files_two_cores_one_model_load_bounded_memory(tmp_path):
    workdir = tmp_path / "w200"
    many_parts_config(workdir, 200, embedding={"sidecar": True, "device": "cpu"})
    endpoint = workdir / ".virnucflow/sidecar/cpu.json"
    proc = start_snakemake(workdir, "--cores", "2")
    samples = []
    while proc.poll() is None:
        if endpoint.exists():
            st = status(endpoint)
            if st and st["state"] == "ready":
                samples.append(st)
        time.sleep(1.0)
    assert proc.returncode == 0, (workdir / "snakemake.out").read_text()[-4000:]
    assert merged_count(workdir) == 200
    assert samples, "the sidecar was never seen ready"
    assert len({s["pid"] for s in samples}) == 1, "more than one sidecar served the run"
    last = samples[-1]
    assert last["models"]["esm2"]["loads"] == 1 and last["models"]["dnabert_s"]["loads"] == 1
    assert last["models"]["esm2"]["requests"] >= 150
    rss = [s["memory"]["rss_bytes"] for s in samples]
    assert max(rss) < 2 * rss[0] + 200e6, f"sidecar memory grew from {rss[0]} to {max(rss)} bytes"
    log = (workdir / "logs/sidecar/cpu.server.log").read_text()
    assert log.count("loaded esm2") == 1 and log.count("loaded dnabert_s") == 1
    assert wait_for(lambda: not pid_alive(last["pid"]), 30)


def test_a_failed_file_costs_only_that_file_and_a_rerun_redoes_only_it(tmp_path, reference_run):
    workdir = tmp_path / "fail"
    many_parts_config(workdir, 12, keep_intermediate=True, embedding={"sidecar": True, "device": "cpu"})
    parts = [f"results/orfs/parts/output_{k}.fa" for k in range(1, 13)]
    snakemake(workdir, "--cores", "2", *parts)  # the parts, and nothing after them
    part = workdir / "results/orfs/parts/output_7.fa"
    good = part.read_bytes()
    part.write_bytes(good + b"\x00\x01binary junk\n")
    proc = snakemake(workdir, "--cores", "2", "--keep-going", check=False)
    assert proc.returncode != 0
    assert merged_count(workdir) == 11, "a failure cost more than its own file"
    log = (workdir / "logs/orfs/embed/output_7.log").read_text()
    assert "binary data" in log and "Traceback" not in log

    part.write_bytes(good)
    plan = job_counts(snakemake(workdir, "--cores", "2", "-n").stdout)
    assert plan["embed"] == 1 and plan["merge"] == 1, plan
    snakemake(workdir, "--cores", "2")
    assert same_results(workdir, reference_run)


def test_no_sidecar_survives_a_killed_snakemake(tmp_path):
    workdir = tmp_path / "kill"
    many_parts_config(workdir, 40, embedding={"sidecar": True, "device": "cpu"})
    before = sidecar_pids()
    proc = start_snakemake(workdir, "--cores", "2")
    assert wait_for(lambda: merged_count(workdir) >= 2, 120), (workdir / "snakemake.out").read_text()[-3000:]
    ours = sidecar_pids() - before
    assert ours, "no sidecar was running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert wait_for(lambda: not any(pid_alive(p) for p in ours), 60), "a sidecar outlived Snakemake by 60 s"
    assert not (workdir / ".virnucflow/sidecar/cpu.json").exists()


def test_a_dead_sidecar_fails_its_clients_clearly_and_retries_recover(tmp_path, reference_run):
    workdir = tmp_path / "retry"
    many_parts_config(workdir, 12, embedding={"sidecar": True, "device": "cpu"})
    endpoint = workdir / ".virnucflow/sidecar/cpu.json"
    proc = start_snakemake(workdir, "--cores", "2", "--retries", "2")
    assert wait_for(lambda: merged_count(workdir) >= 2, 120), (workdir / "snakemake.out").read_text()[-3000:]
    first = json.loads(endpoint.read_text())["pid"]
    os.kill(first, signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, (workdir / "snakemake.out").read_text()[-4000:]
    assert same_results(workdir, reference_run)
    logs = "".join(p.read_text() for p in (workdir / "logs/orfs/embed").glob("*.log"))
    server_log = (workdir / "logs/sidecar/cpu.server.log").read_text()
    assert server_log.count("loaded esm2") == 2, "the retry did not start a fresh sidecar"
    if "died" not in logs:  # the kill may fall between two clients; then no client saw it mid-request
        assert "Error" not in logs


def test_a_hand_started_sidecar_serves_several_runs(tmp_path, reference_run):
    models = reference_run / "resources/demo_models"
    endpoint = tmp_path / "shared_sidecar.json"
    server = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--endpoint-file", str(endpoint),
         "--esm2", str(models / "esm2_t2_demo.pt"), "--dnabert-s", str(models / "dnabert_s_demo"),
         "--log", str(tmp_path / "shared_sidecar.log")],
    )
    try:
        for name in ("run1", "run2"):
            workdir = tmp_path / name
            many_parts_config(workdir, 12, embedding={"sidecar": True, "endpoint_file": str(endpoint)})
            out = snakemake(workdir, "--cores", "2").stdout
            assert "rule sidecar:" not in out
            assert same_results(workdir, reference_run)
        st = status(endpoint)
        assert st["pid"] == server.pid and server.poll() is None
        assert st["models"]["esm2"]["loads"] == 1 and st["models"]["esm2"]["requests"] >= 24
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    assert not endpoint.exists()
