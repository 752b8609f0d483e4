"""`virnucflow run`: sample names, options, the config it writes, bad input (exit 2, nothing written), the
packaged workflow of a built wheel, and one real demo run followed by a rerun that does nothing."""

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from virnucflow import fetch
from virnucflow.fingerprint import ORIGINAL_CLASSIFIER_BLOBS
from virnucflow.cli import build_parser, main
from virnucflow.embedding_settings import EmbeddingSettings
from virnucflow.errors import InputError
from virnucflow.run_command import parse_gpus, prepare, sample_name, write_if_changed
from virnucflow.workflow_files import workflow_root

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo"
DEMO_INPUTS = ["-i", str(DEMO / "phage_mix.fa"), "-i", str(DEMO / "reads.fa.gz")]


@pytest.mark.unit
@pytest.mark.parametrize("name, sample", [
    ("phage_mix.fa", "phage_mix"), ("reads.fa.gz", "reads"), ("gut.FASTA.GZ", "gut"), ("a.b.fna", "a.b"),
    ("contigs", "contigs"), ("x.fasta.bak", "x.fasta.bak"), (".fa", ".fa"),
])
def test_sample_names_are_file_names_without_fasta_suffixes(name, sample):
    assert sample_name(f"/data/{name}") == sample


@pytest.mark.unit
def test_gpus_are_distinct_ordinals():
    assert parse_gpus("0,1") == [0, 1] and parse_gpus("3") == [3] and parse_gpus(None) is None
    for bad in ("", "a", "0,,1", "-1", "0,0", "1.5"):
        with pytest.raises(InputError, match="such as --gpus 0,1"):
            parse_gpus(bad)


@pytest.mark.unit
def test_the_workflow_is_found_in_a_checkout():
    assert workflow_root() == REPO


@pytest.mark.unit
def test_every_package_is_installed():
    """pyproject.toml lists the packages by hand (to ship the workflow inside one): none may be missing."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for top in ("virnucflow", "sidecar")
             for p in (REPO / top).rglob("__init__.py")}
    assert listed - {"virnucflow._pipeline"} == found


@pytest.mark.unit
def test_a_file_is_rewritten_only_when_its_content_changes(tmp_path):
    path = tmp_path / "config.yaml"
    assert write_if_changed(path, "a: 1\n")
    os.utime(path, ns=(1, 1))
    assert not write_if_changed(path, "a: 1\n") and path.stat().st_mtime_ns == 1
    assert write_if_changed(path, "a: 2\n") and path.read_text() == "a: 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temp file left


def _fetched_layout(dest, demo_models):
    """A directory laid out as `virnucflow fetch-models --dest DIR` lays it out, holding the demo models."""
    (dest / fetch.ESM2_PATH).parent.mkdir(parents=True)
    (dest / fetch.ESM2_PATH).symlink_to(demo_models / "esm2_t2_demo.pt")
    (dest / fetch.DNABERT_DIR).symlink_to(demo_models / "dnabert_s_demo")
    for name in ORIGINAL_CLASSIFIER_BLOBS:
        (dest / name).symlink_to(demo_models / name)
    return dest


@pytest.mark.unit
def test_models_dir_and_settings_become_the_config(tmp_path, demo_models):
    """What the workflow reads from the written config: the fetched models and the embedding settings."""
    models = _fetched_layout(tmp_path / "models", demo_models)
    out = tmp_path / "out"
    args = build_parser().parse_args(["run", *DEMO_INPUTS, "-o", str(out), "--chunk-size", "300", "--models",
                                      str(models), "--mode", "fast", "--gpus", "0,1", "--profile", "slurm"])
    cmd, _, _ = prepare(args)
    config = yaml.safe_load((out / "config.yaml").read_text())
    settings = EmbeddingSettings.from_config(config)
    assert settings.esm2 == str(models / fetch.ESM2_PATH) and settings.dnabert_s == str(models / fetch.DNABERT_DIR)
    assert config["models"]["classifiers"]["300"] == str(models / "300_model.pth")
    assert settings.mode == "fast" and config["embedding"]["gpus"] == [0, 1] and config["chunk_size"] == 300
    assert settings.device == "auto"
    assert config["demo_models"] is False
    assert (out / "samples.tsv").read_text() == (f"sample\tfasta\nphage_mix\t{DEMO / 'phage_mix.fa'}\n"
                                                 f"reads\t{DEMO / 'reads.fa.gz'}\n")
    assert cmd[cmd.index("--configfile") + 1] == str(out / "config.yaml")
    assert cmd[cmd.index("--profile") + 1] == str(REPO / "workflow" / "profiles" / "slurm")
    assert "--cores" not in cmd  # the profile's


@pytest.mark.unit
@pytest.mark.parametrize("args, message", [
    (["-i", "missing.fa"], "missing.fa: no such FASTA file"),
    (["-o", "a_file"], "is a file; give a directory"),
    (["--gpus", "0,x"], "--gpus '0,x': give distinct GPU ordinals"),
    (["-i", str(DEMO / "phage_mix.fa")], "also that of"),
    (["--chunk-size", "400"], "chunk_size is 400: allowed values are 300, 500"),
    (["--mode", "exact", "--device", "gpu"], "embedding.device is 'gpu': expected auto"),
    (["--models", "no_models"], "--models no_models: no such directory; fetch them with `virnucflow fetch-models"),
    (["--cores", "0"], "--cores '0': give a number of cores"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    Path("a_file").write_text("")
    options = {"-o": "out", "--chunk-size": "500"}
    extra = []
    for flag, value in zip(args[::2], args[1::2]):
        if flag in options:
            options[flag] = value
        else:
            extra += [flag, value]
    if "--models" not in extra:
        extra.append("--demo-models")
    argv = ["run", *DEMO_INPUTS, *[x for kv in options.items() for x in kv], *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("virnucflow run: error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.unit
def test_models_are_required(tmp_path, capsys):
    assert main(["run", *DEMO_INPUTS, "-o", str(tmp_path / "out"), "--chunk-size", "500"]) == 2
    assert "give the models: --models DIR" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.process
def test_an_installed_copy_runs_its_packaged_workflow(tmp_path):
    """The wheel that `pip install .` installs holds the workflow, and `virnucflow run` from it (not from
    this checkout) finds it: a dry run of the demo from another directory."""
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:  # a copy of the checkout, so that the build leaves nothing in it
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / "src" / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "-w", str(tmp_path / "wheel"), str(tmp_path / "src")], check=True, capture_output=True, timeout=300)
    site = tmp_path / "site"
    with zipfile.ZipFile(next((tmp_path / "wheel").glob("virnucflow-*.whl"))) as wheel:
        wheel.extractall(site)
    shipped = {p.relative_to(site / "virnucflow" / "_pipeline") for p in (site / "virnucflow" / "_pipeline").rglob("*")
               if p.is_file()}
    assert {Path(p) for p in tracked if p == "Snakefile" or p.split("/")[0] in ("workflow", "config")} <= shipped
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-m", "virnucflow", "run", *DEMO_INPUTS, "-o", "out", "--chunk-size", "500",
                           "--demo-models", "--dry-run"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(site)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"--snakefile {site / 'virnucflow' / '_pipeline' / 'Snakefile'}" in proc.stderr
    assert "make_demo_models" in proc.stdout + proc.stderr and not (cwd / "out" / "results").exists()


@pytest.mark.workflow
def test_demo_run_then_a_rerun_that_does_nothing(tmp_path):
    """The README's first command: the demo from an empty directory; then the same command again resumes,
    finds everything up to date and touches nothing; then other inputs rewrite the sample sheet."""
    cwd = tmp_path / "empty"
    cwd.mkdir()
    command = [sys.executable, "-m", "virnucflow", "run", *DEMO_INPUTS, "-o", "out", "--chunk-size", "500",
               "--demo-models", "--cores", "2"]

    def run(*extra):
        proc = subprocess.run(command + list(extra), cwd=cwd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        return proc

    first = run()
    out = cwd / "out"
    for sample in ("phage_mix", "reads"):
        for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "virus_contigs.tsv"):
            assert (out / "results" / sample / name).stat().st_size > 0
        assert f"  {sample}: " in first.stdout and "prediction_results.txt" in first.stdout
    assert (out / "summary" / "run_stats.tsv").is_file()
    assert f"results per sample, in {out / 'results'}/<sample>/" in first.stdout and "--report" in first.stdout
    # every output and log but Snakemake's records and the sidecar's (it removes its endpoint file as it exits)
    files = [p for p in out.rglob("*") if p.is_file() and not {".snakemake", "sidecar"} & set(p.parts)]
    mtimes = {p: p.stat().st_mtime_ns for p in files}

    again = run()
    assert "Nothing to be done" in again.stderr and "rule " not in again.stderr, again.stderr[-3000:]
    assert [p for p in files if p.stat().st_mtime_ns != mtimes[p]] == []

    reads = command.index(str(DEMO / "reads.fa.gz"))
    del command[reads - 1:reads + 1]  # only phage_mix now
    run("--dry-run")
    assert (out / "samples.tsv").read_text() == f"sample\tfasta\nphage_mix\t{DEMO / 'phage_mix.fa'}\n"
    assert (out / "config.yaml").stat().st_mtime_ns == mtimes[out / "config.yaml"]
    assert not list(out.glob(".*.tmp"))
