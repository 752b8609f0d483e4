"""Run-time assignment (issue 13): each part goes to the sidecar that will finish it first. Two real CPU
sidecars, one of them really slowed down (SIGSTOP/SIGCONT), and parts sent through the real embed step;
plus the choice itself on given pongs."""

import json
import sys
from pathlib import Path

import pytest

from sidecar.assign import choose, estimates
from sidecar.client import SidecarDied

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def pong(tokens, rate, state="ready"):
    return {"state": state, "queue": {"requests": 1, "tokens": tokens}, "rate_tokens_per_s": rate}


@pytest.mark.unit
def test_the_estimate_weighs_outstanding_work_by_throughput():
    pongs = {"a": pong(9000, 1000.0), "b": pong(1000, 100.0), "c": pong(0, None), "d": pong(0, 50.0, "loading"),
             "e": None}
    got = estimates(pongs, 1000)
    assert set(got) == {"a", "b", "c"}  # a loading or silent sidecar is not a candidate
    assert got["a"] == pytest.approx(10.0) and got["b"] == pytest.approx(20.0)
    assert got["c"] == pytest.approx(1000 / 550.0)  # not measured yet: the mean of the others' rates


@pytest.mark.unit
def test_no_sidecar_at_any_endpoint_file_is_one_line(tmp_path):
    with pytest.raises(SidecarDied) as err:
        choose([tmp_path / "a.json", tmp_path / "b.json"], 100)
    assert "no sidecar answers" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.process
def test_the_slowed_sidecar_gets_fewer_parts_and_every_part_names_its_sidecar(tmp_path, demo_models):
    import assignment
    from virnucflow.demo_models import DNABERT_DIR, ESM2_FILE

    esm2, dnabert = demo_models / ESM2_FILE, demo_models / DNABERT_DIR
    parts = assignment.write_parts(tmp_path, 10, 60)
    sidecars = assignment.Sidecars(tmp_path, esm2, dnabert).wait_ready()
    fast, slow = sidecars.pids()
    try:
        with assignment.DutyCycle(slow, stopped=0.8, period=0.2):
            summary = assignment.run_parts(parts, sidecars.files, "runtime", 2, tmp_path / "out",
                                           ["--esm2", str(esm2), "--dnabert-s", str(dnabert)])
    finally:
        sidecars.close()
    served = summary["sidecars"]
    assert sum(e["parts"] for e in served.values()) == 10
    assert served.get(slow, {"parts": 0})["parts"] < served[fast]["parts"], served
    records = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")]
    assert len(records) == 10 and {r["device"] for r in records} == {"cpu"}
    assert {r["sidecar"]["pid"] for r in records} <= {fast, slow}
