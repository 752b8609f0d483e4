"""What runs is what the user configured, and every result says what produced it (real snakemake runs).

One run on real model files (tiny, made in the real formats, not the demo's workflow-made ones), then:
its run_info.json; dry runs that show exactly what each kind of change reruns; a real rerun after the
ESM-2 checkpoint changed; a sidecar that serves other models or another mode refused by the client.
"""

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from virnucflow.classifier import write_random_classifier
from virnucflow.models.esm2 import write_tiny_esm2_checkpoint
from workflow_runs import DEMO_DATA, job_counts, snakemake, wait_for, write_config

# a re-embed splits the temp() parts again and starts a sidecar
# no `sidecar` job: once a sample's parts are counted, its embed jobs start their sidecar themselves
# (--ensure), so that a sidecar job, which makes its flag anew, never marks finished parts for a rerun
EMBED_RULES = {"embedding_identity", "split_part", "embed", "merge"}
CLASSIFY_ON = {"classify_part", "classify", "run_info", "contig_calls", "score_tracks", "report_plots", "all"}


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(demo_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("provenance")
    models = workdir / "models"
    shutil.copytree(demo_models, models)
    config = write_config(
        workdir, demo_models=False,
        models={"esm2": str(models / "esm2_t2_demo.pt"), "dnabert_s": str(models / "dnabert_s_demo"),
                "classifiers": {"300": str(models / "300_model.pth"), "500": str(models / "500_model.pth")}},
    )
    (workdir / "samples.tsv").write_text(f"sample\tfasta\nphage_mix\t{DEMO_DATA / 'phage_mix.fa'}\n")
    snakemake(workdir, "--cores", "2")
    return workdir, config, models


def plan(workdir, config, **changes):
    """The rules a dry run would run after `changes` to the config (the config is restored after)."""
    original = config.read_text()
    changed = yaml.safe_load(original)
    for key, value in changes.items():
        if isinstance(value, dict):
            changed.setdefault(key, {}).update(value)
        else:
            changed[key] = value
    try:
        config.write_text(yaml.safe_dump(changed))
        return set(job_counts(snakemake(workdir, "--cores", "2", "-n").stdout))
    finally:
        config.write_text(original)


@pytest.mark.workflow
def test_run_info_says_what_produced_the_results(run):
    workdir, _, models = run
    info = json.loads((workdir / "results" / "phage_mix" / "run_info.json").read_text())
    assert info["embedding"]["fingerprints"]["esm2"] == sha256(models / "esm2_t2_demo.pt")
    assert len(info["embedding"]["fingerprints"]["dnabert_s"]) == 64
    assert info["classifier"]["sha256"] == sha256(models / "500_model.pth")
    assert info["embedding"]["mode"] == "exact" and info["embedding"]["transport"] == "sidecar"
    assert info["embedding"]["devices"] == {"device": "cpu", "gpu_name": None}
    assert info["versions"]["torch"] == torch.__version__ and info["versions"]["snakemake"]
    assert info["embedding"]["versions"]["fair-esm"] == "2.0.0"
    assert info["chunk_size"] == 500 and info["ended_at"] and info["virnucflow"]["version"]
    header = (workdir / "results" / "phage_mix" / "prediction_results.txt").read_text().splitlines()[0]
    assert header == "Sequence_ID\tPrediction\tscore1\tscore2"  # the original's outputs stay as they were


@pytest.mark.workflow
def test_each_change_reruns_exactly_what_it_affects(run, tmp_path):
    workdir, config, models = run
    assert plan(workdir, config) == set()  # nothing changed: nothing to do
    assert plan(workdir, config, report={"top_contigs": 3}) == {"score_tracks", "all"}
    other = tmp_path / "500_other.pth"
    write_random_classifier(other, input_dim=96, seed=7)
    classifiers = {"300": str(models / "300_model.pth"), "500": str(other)}
    assert plan(workdir, config, models={"classifiers": classifiers}) == CLASSIFY_ON
    assert plan(workdir, config, embedding={"mode": "fast"}) == EMBED_RULES | CLASSIFY_ON | {"embedding_settings"}
    # same models, same mode: the settings file is written again, no vector is
    assert plan(workdir, config, embedding={"sidecar": False, "idle_timeout": 5}) == {"embedding_settings"}
    # fast mode's DNABERT-S precision changes no vector of exact mode
    assert plan(workdir, config, embedding={"fast_dnabert_precision": "fp32"}) == {"embedding_settings"}
    assert {"shard", "prepare_shard", "concatenate_shards"} <= plan(workdir, config, chunk_size=300)


@pytest.mark.workflow
def test_a_changed_checkpoint_re_embeds_and_the_results_say_so(run):
    workdir, config, models = run
    chunked = workdir / "results" / "phage_mix" / "chunked.fa"
    before = chunked.stat().st_mtime_ns
    write_tiny_esm2_checkpoint(models / "esm2_t2_demo.pt", seed=5)  # a new checkpoint at the same path
    assert plan(workdir, config) == EMBED_RULES | CLASSIFY_ON
    snakemake(workdir, "--cores", "2")
    info = json.loads((workdir / "results" / "phage_mix" / "run_info.json").read_text())
    assert info["embedding"]["fingerprints"]["esm2"] == sha256(models / "esm2_t2_demo.pt")
    assert chunked.stat().st_mtime_ns == before
    assert plan(workdir, config) == set()


def _embed(workdir, endpoint, esm2, dnabert, *extra):
    part = workdir / "part"
    part.mkdir(exist_ok=True)
    (part / "p.fa").write_text(">a\nATGAAAGTTCTG\n")
    (part / "p.faa").write_text(">a\nMKVL\n")
    return subprocess.run(
        [sys.executable, "-m", "virnucflow", "embed", "--transport", "sidecar", "--endpoint-file", str(endpoint),
         "--esm2", str(esm2), "--dnabert-s", str(dnabert), "--nucleotide", str(part / "p.fa"),
         "--protein", str(part / "p.faa"), "--dnabert-out", str(part / "a.npz"), "--esm-out", str(part / "b.npz"),
         *extra], capture_output=True, text=True, timeout=300)


@pytest.mark.process
def test_a_sidecar_with_other_models_or_mode_is_refused(demo_models, tmp_path):
    other = write_tiny_esm2_checkpoint(tmp_path / "esm2_t2_other.pt", seed=3)
    endpoint = tmp_path / "shared.json"
    server = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--endpoint-file", str(endpoint),
                               "--esm2", str(demo_models / "esm2_t2_demo.pt"),
                               "--dnabert-s", str(demo_models / "dnabert_s_demo"), "--device", "cpu"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(endpoint.exists, 60), "the sidecar wrote no endpoint file"
        ok = _embed(tmp_path, endpoint, demo_models / "esm2_t2_demo.pt", demo_models / "dnabert_s_demo")
        assert ok.returncode == 0, ok.stderr
        assert (tmp_path / "part" / "a.npz").exists()
        (tmp_path / "part" / "a.npz").unlink()
        wrong_model = _embed(tmp_path, endpoint, other, demo_models / "dnabert_s_demo")
        assert wrong_model.returncode == 1 and len(wrong_model.stderr.strip().splitlines()) == 1
        assert f"esm2 sha256 {sha256(demo_models / 'esm2_t2_demo.pt')[:12]}" in wrong_model.stderr
        assert f"asks for sha256 {sha256(other)[:12]}" in wrong_model.stderr
        wrong_mode = _embed(tmp_path, endpoint, demo_models / "esm2_t2_demo.pt", demo_models / "dnabert_s_demo",
                            "--mode", "fast")
        assert wrong_mode.returncode == 1 and "exact mode but this run asks for fast mode" in wrong_mode.stderr
        assert not (tmp_path / "part" / "a.npz").exists()  # nothing written when refused
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.process
def test_a_fast_sidecar_with_another_dnabert_precision_is_refused(demo_models, tmp_path):
    endpoint = tmp_path / "fast.json"
    models = ["--esm2", str(demo_models / "esm2_t2_demo.pt"), "--dnabert-s", str(demo_models / "dnabert_s_demo")]
    server = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--endpoint-file", str(endpoint), *models,
                               "--device", "cpu", "--mode", "fast", "--fast-dnabert-precision", "fp32"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(endpoint.exists, 60), "the sidecar wrote no endpoint file"
        wrong = _embed(tmp_path, endpoint, *models[1::2], "--mode", "fast")  # the default precision, fp16
        assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        assert "fast mode with DNABERT-S in fp32 but this run asks for fp16" in wrong.stderr
        assert not (tmp_path / "part" / "a.npz").exists()
        record = tmp_path / "part" / "provenance.json"
        same = _embed(tmp_path, endpoint, *models[1::2], "--mode", "fast", "--fast-dnabert-precision", "fp32",
                      "--provenance-out", str(record))
        assert same.returncode == 0, same.stderr
        assert json.loads(record.read_text())["fast_dnabert_precision"] == "fp32"  # and run_info.json says so
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.workflow
def test_a_wrong_model_stops_the_run_before_any_work(demo_models, tmp_path):
    models = {"esm2": str(demo_models / "500_model.pth"), "dnabert_s": str(demo_models / "dnabert_s_demo"),
              "classifiers": {"300": str(demo_models / "300_model.pth"), "500": str(demo_models / "500_model.pth")}}
    write_config(tmp_path, demo_models=False, models=models)
    proc = snakemake(tmp_path, "--cores", "2", check=False)
    assert proc.returncode != 0
    assert f"config models.esm2: {demo_models / '500_model.pth'} is not a fair-esm ESM-2 checkpoint" in proc.stdout
    assert not (tmp_path / "results").exists()  # nothing was chunked
    models["esm2"] = str(tmp_path / "missing.pt")
    write_config(tmp_path, demo_models=False, models=models)
    proc = snakemake(tmp_path, "--cores", "2", "-n", check=False)
    assert proc.returncode != 0 and "config models.esm2: ESM-2 checkpoint not found" in proc.stdout
