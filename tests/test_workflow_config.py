"""Config validation through dry runs of the real `snakemake`: the plan, and mistakes caught before anything runs.
(`snakemake --lint` with the demo config is a step of .ci/run's lint stage.)"""

import pytest

from workflow_runs import REPO, snakemake, write_config

pytestmark = pytest.mark.process


@pytest.mark.parametrize("sidecar", [True, False])
def test_dry_run_plans_the_whole_pipeline(tmp_path, sidecar):
    write_config(tmp_path, embedding={"sidecar": sidecar})
    out = snakemake(tmp_path, "-n", "--cores", "2").stdout
    for rule in ("make_demo_models", "shard", "prepare_shard", "concatenate_shards", "count_parts", "classify"):
        assert rule in out
    # the split, the embedding jobs (and the sidecar they need) are planned once the count_parts checkpoint has run
    assert "checkpoint jobs" in out


def test_repo_demo_config_dry_runs_from_the_repo_root():
    proc = snakemake(REPO, "-n", "--cores", "2", config=REPO / "config" / "demo.yaml")
    assert "This was a dry-run" in proc.stdout or "Nothing to be done" in proc.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"chunk_size": 400}, "chunk_size is 400: allowed values are 300, 500"),
        ({"chunk_size": 300, "models": {"classifiers": {"500": "x.pth"}}}, "no classifier for chunk_size 300"),
        ({"chunk_sizes": 500}, "unknown key `chunk_sizes` in config: did you mean `chunk_size`?"),
        ({"embedding": {"device": "gpu"}}, "embedding.device is 'gpu': expected auto"),
    ],
)
def test_config_mistakes_stop_before_anything_runs(tmp_path, overrides, message):
    config = write_config(tmp_path, **overrides)
    if "models" in overrides:  # replace, not merge, the classifier table
        import yaml

        data = yaml.safe_load(config.read_text())
        data["models"]["classifiers"] = overrides["models"]["classifiers"]
        config.write_text(yaml.safe_dump(data))
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    lines = proc.stdout.strip().splitlines()  # one line that names the config file, no schema dump
    assert len(lines) == 1 and lines[0].startswith(f"{config}: ") and message in lines[0], proc.stdout[-3000:]
    assert not (tmp_path / "results").exists()


def test_missing_fasta_and_bad_sample_name_are_named(tmp_path):
    write_config(tmp_path)
    (tmp_path / "samples.tsv").write_text("sample\tfasta\ns1\t/nonexistent/reads.fa\n")
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "/nonexistent/reads.fa' does not exist" in proc.stdout
    (tmp_path / "samples.tsv").write_text(f"sample\tfasta\nbad name!\t{REPO / 'resources/demo/phage_mix.fa'}\n")
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "bad name!" in proc.stdout
