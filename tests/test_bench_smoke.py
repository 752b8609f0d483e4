"""The benchmarks run at CI size on the CPU with tiny models and report sane figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.bench


def test_sidecar_vs_reload_benchmark_at_ci_size(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/sidecar_vs_reload.py"), "--size", "tiny", "--files", "3",
         "--per-file", "20", "--models-dir", str(tmp_path / "models"), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["bit_identical"]
    assert result["model_loads"] == {"esm2": 1, "dnabert_s": 1}
    # three fresh processes that each load both models cannot beat one resident server
    assert result["ratio_end_to_end"] > 1.0
    assert "ratio" in proc.stdout


def test_exact_vs_original_benchmark_at_ci_size(tmp_path):
    out = tmp_path / "exact.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/exact_vs_original.py"), "--size", "tiny", "--frames", "50",
         "--device", "cpu", "--models-dir", str(tmp_path / "models"), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for model in ("esm2", "dnabert_s"):  # the same features as the original's loops, on the same device
        assert result[model]["bit_identical"] and result[model]["max_abs_diff"] == 0.0
        assert result[model]["original_frames_per_s"] > 0 and result[model]["exact_frames_per_s"] > 0


def test_ready_time_script_at_ci_size(tmp_path):
    """bench/ready_time.sh starts a sidecar twice and prints the seconds to READY of each start."""
    import os

    models = tmp_path / "models"
    subprocess.run([sys.executable, str(REPO / "bench/real_models.py"), "--out", str(models), "--size", "tiny"],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ, MODELS=str(models), SIZE="tiny",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(REPO / "bench/ready_time.sh"), "cpu", "fast"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "READY after" in line]
    assert [line.split(":")[0] for line in lines] == ["start 1", "start 2"], proc.stdout


def test_part_order_benchmark_at_ci_size(tmp_path):
    """bench/part_order.py: with the oldest part first the parts finish one after another, so their mean
    finish comes before the arrival order's, where they all finish together."""
    out = tmp_path / "order.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench/part_order.py"), "--parts", "3", "--frames", "300",
                           "--request-seqs", "50", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    arrival, oldest = result["orders"]["arrival"], result["orders"]["oldest-part"]
    assert max(arrival["finish_s"]) - min(arrival["finish_s"]) < max(oldest["finish_s"]) - min(oldest["finish_s"])
    assert result["mean_finish_ratio"] < 0.9, result


def test_preparation_benchmark_at_ci_size(tmp_path):
    """bench/prepare.py drives the workflow's preparation commands as the jobs do (their options change with
    the rules: this keeps the script in step)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/prepare.py"), "--records", "20000", "--workdir", str(tmp_path / "p"),
         "--cores", "2", "--shard-mb", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shards"] > 4 and result["parts"] == -(-result["kept_frames"] // 10_000)
    assert set(result["steps"]) == {"shard", "prepare-shard", "shard-frames", "split-part", "concatenate-shards",
                                    "count-parts"}


def test_dnabert_profile_benchmark_at_ci_size(tmp_path):
    out = tmp_path / "profile.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/dnabert_profile.py"), "--models-dir", str(tmp_path / "m"), "--size", "tiny",
         "--device", "cpu", "--frames", "40", "--call", "20", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["precisions"]) == {"fp16", "fp16-split", "fp32"}
    for row in result["precisions"].values():
        assert row["500bp"]["tokens_per_s"] > 0 and row["300bp"]["tokens_per_s"] > 0
        assert row["profile_500bp_budget"]["frames"] == 40 and row["profile_500bp_budget"]["groups_ms"]


def test_dnabert_flex_study_at_ci_size(tmp_path):
    out = tmp_path / "flex.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/dnabert_flex.py"), "--models-dir", str(tmp_path / "m"), "--size", "tiny",
         "--device", "cpu", "--frames", "60", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["frames"] == 60 and result["cosine_flex_to_buckets"]["min"] > 0.99999
