"""Every way of starting a sidecar serves the configured mode: asked with `sidecar status` while it runs.

The ways: `sidecar ensure` (the workflow's `sidecar` rule), an embed job that starts one itself
(`virnucflow embed --ensure`, what a rerun or a retry does) and `sidecar serve` by hand, each reading
the settings file that the workflow writes. The SLURM job is in test_slurm.py; a whole local run's
mode is in test_provenance_workflow.py (run_info.json holds what its sidecar reported).
"""

import json
import subprocess
import sys

import pytest

from virnucflow.embedding_settings import EmbeddingSettings
from workflow_runs import wait_for

pytestmark = pytest.mark.process


def sidecar(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "sidecar", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def status_when_ready(endpoint):
    seen = {}

    def ready():
        proc = sidecar("status", "--endpoint-file", endpoint)
        seen["status"] = json.loads(proc.stdout) if proc.returncode == 0 else {}
        return seen["status"].get("state") == "ready"

    assert wait_for(ready, 120, step=0.5), seen
    return seen["status"]


@pytest.fixture(scope="module")
def settings_files(demo_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("settings")
    files = {}
    for mode in ("exact", "fast"):
        settings = EmbeddingSettings(esm2=str(demo_models / "esm2_t2_demo.pt"),
                                     dnabert_s=str(demo_models / "dnabert_s_demo"), device="cpu", mode=mode)
        files[mode] = out / f"{mode}.json"
        files[mode].write_text(settings.to_json())
    return files


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_sidecar_ensure_serves_the_settings_files_mode(settings_files, tmp_path, mode):
    endpoint = tmp_path / "gpu0.json"
    started = sidecar("ensure", "--endpoint-file", endpoint, "--settings-file", settings_files[mode])
    assert started.returncode == 0, started.stderr
    try:
        status = status_when_ready(endpoint)
        assert status["mode"] == mode and status["device"] == "cpu"
        assert set(status["fingerprints"]) == {"esm2", "dnabert_s"}
    finally:
        sidecar("stop", "--endpoint-file", endpoint)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_an_embed_job_that_starts_its_sidecar_passes_the_mode(settings_files, tmp_path, mode):
    (tmp_path / "p.fa").write_text(">a\nATGAAAGTTCTGGCC\n")
    (tmp_path / "p.faa").write_text(">a\nMKVLA\n")
    endpoint = tmp_path / "cpu.json"
    proc = subprocess.run(
        [sys.executable, "-m", "virnucflow", "embed", "--transport", "sidecar", "--endpoint-file", str(endpoint),
         "--ensure", "--settings-file", str(settings_files[mode]), "--nucleotide", str(tmp_path / "p.fa"),
         "--protein", str(tmp_path / "p.faa"), "--dnabert-out", str(tmp_path / "a.npz"),
         "--esm-out", str(tmp_path / "b.npz"), "--provenance-out", str(tmp_path / "p.json")],
        capture_output=True, text=True, timeout=300)
    try:
        assert proc.returncode == 0, proc.stderr
        assert status_when_ready(endpoint)["mode"] == mode
        assert json.loads((tmp_path / "p.json").read_text())["mode"] == mode
    finally:
        sidecar("stop", "--endpoint-file", endpoint)


def test_a_hand_started_sidecar_reads_the_settings_file_and_options_override_it(settings_files, tmp_path):
    """...and a fast one keeps torch.compile's caches where --compile-cache-dir says, per model fingerprints."""
    endpoint, kernels = tmp_path / "hand.json", tmp_path / "kernels"
    server = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--endpoint-file", str(endpoint),
                               "--settings-file", str(settings_files["exact"]), "--mode", "fast",
                               "--compile-cache-dir", str(kernels)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(endpoint.exists, 60)
        assert status_when_ready(endpoint)["mode"] == "fast"
        assert len(list(kernels.iterdir())) == 1 and (kernels.stat().st_mode & 0o777) == 0o700
    finally:
        server.terminate()
        server.wait(timeout=60)
