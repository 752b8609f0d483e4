"""bench/e2e.py (the whole workflow through snakemake, and the timeline of its stages) on the CPU with the
demo's models: one small run, every stage and the sidecar's figures are there."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.bench


def test_e2e_timeline_of_a_cpu_demo_run(tmp_path):
    out = tmp_path / "e2e.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/e2e.py"), "--demo", "--device", "cpu", "--frames", "60", "--parts", "2",
         "--cores", "2", "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    stages = result["stages"]
    assert all(stages[s] for s in ("preparation", "embedding", "classification", "tail")), stages
    assert stages["preparation"]["start"] <= stages["embedding"]["start"] <= stages["embedding"]["end"]
    assert result["rules"]["embed"]["jobs"] == 2
    (sidecar,) = result["sidecars"].values()
    assert sidecar["device"] == "cpu" and sidecar["loads"] == 1 and sidecar["compute_s"] > 0
    assert sidecar["start"] <= sidecar["ready"] <= sidecar["first_request"]
    assert result["wall_over_compute"] > 1
    assert "wall / sidecar compute" in proc.stdout and "preparation" in proc.stdout


def test_first_part_benchmark_at_ci_size(tmp_path):
    """bench/first_part.py on a sample of several shards, this checkout against itself: each run reports when
    the first part reached the sidecar (before the sample's parts were counted) and the ratio."""
    models = tmp_path / "models"
    subprocess.run([sys.executable, str(REPO / "bench/real_models.py"), "--out", str(models), "--size", "tiny"],
                   check=True, capture_output=True)
    out = tmp_path / "first.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/first_part.py"), "--records", "3000", "--models-dir", str(models),
         "--size", "tiny", "--device", "cpu", "--cores", "2", "--shard-mb", "0.3", "--records-per-file", "500",
         "--against", str(REPO), "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    from virnucflow.shards import shard_count

    assert result["shards"] == shard_count(result["bytes"], 300_000) >= 5 and len(result["runs"]) == 2 and result["first_embed_ratio"] > 0
    for run in result["runs"]:
        assert run["first_embed_started"] <= run["first_part_embedded"], run
