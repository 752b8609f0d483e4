"""bench/workflow_gpus.py (the whole workflow on 1 and 2 GPUs) runs end to end on the CPU with tiny models:
one snakemake run, its embedding stage measured from the benchmark files and the sidecar log, logs kept."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

pytestmark = pytest.mark.bench


def test_workflow_gpus_one_cpu_run(tmp_path):
    import real_models
    import workflow_gpus

    real_models.make(tmp_path / "models", "tiny")
    out, keep, work = tmp_path / "summary.json", tmp_path / "keep", tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/workflow_gpus.py"), "--models-dir", str(tmp_path / "models"),
         "--size", "tiny", "--device", "cpu", "--gpus", "1", "--frames", "60", "--samples", "1", "--parts", "2",
         "--cores", "2", "--work", str(work), "--keep", str(keep), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = json.loads(out.read_text())["runs"]["cpu1"]
    assert run["embed_jobs"] == 2
    assert 0 < run["embed_s"] <= run["embed_jobs_s"] + 1e-6 < run["wall_s"]
    assert run["sidecars"]["cpu"]["loads"] == 1 and run["load_s"] > 0
    assert run["models"]["esm2"]["seqs"] == 60 and run["models"]["dnabert_s"]["seqs"] == 60
    assert (keep / "cpu1" / "logs" / "sidecar" / "cpu.server.log").is_file()
    assert (keep / "cpu1" / "snakemake.out").is_file()
    same = workflow_gpus.compare(work / "cpu1", work / "cpu1")
    assert same["agree"] and same["rows"] == 60 and same["label_mismatches"] == 0
