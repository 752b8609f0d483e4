"""Config and sample-sheet checks for the per-record calls, the report and the model fetch: mistakes stop a
dry run before anything runs; many samples, gzipped or plain, are planned; the fetch rules plan."""

import pytest

from workflow_runs import DEMO_DATA, snakemake, write_config

pytestmark = pytest.mark.process


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"contigs": {"min_viral_fraction": 1.5}}, "contigs.min_viral_fraction is 1.5: give a number at most 1"),
        ({"contigs": {"threshold": 0.5}}, "unknown key `threshold` under contigs"),
        ({"report": {"top_contigs": 0}}, "report.top_contigs is 0: give a whole number at least 1"),
        ({"report": {"top": 3}}, "unknown key `top` under report: did you mean `top_contigs`?"),
        ({"models": {"download_dir": ""}}, "download_dir"),
    ],
)
def test_new_key_mistakes_stop_before_anything_runs(tmp_path, overrides, message):
    write_config(tmp_path, **overrides)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout, proc.stdout[-3000:]
    assert not (tmp_path / "results").exists()


def test_many_samples_gzipped_or_plain_are_all_planned(tmp_path):
    write_config(tmp_path, contigs={"min_viral_fraction": 0.25}, report={"top_contigs": 3})
    rows = [f"s{i:02d}\t{DEMO_DATA / ('reads.fa.gz' if i % 2 else 'phage_mix.fa')}" for i in range(12)]
    rows.append(f"report\t{DEMO_DATA / 'phage_mix.fa'}")  # a sample may be called 'report'
    (tmp_path / "samples.tsv").write_text("sample\tfasta\n" + "\n".join(rows) + "\n")
    out = snakemake(tmp_path, "-n", "-p", "--cores", "2").stdout
    stats = dict(line.split() for line in out.split("Job stats:")[1].splitlines()[3:] if len(line.split()) == 2)
    assert stats["contig_calls"] == stats["score_tracks"] == stats["shard"] == "13"
    assert stats["report_plots"] == "1"
    assert "--min-viral-fraction 0.25" in out and "--top 3" in out
    assert "--sample report results/report" in out


@pytest.mark.parametrize("name", ["a/b", ".hidden", "-dash", "with space"])
def test_sample_names_that_would_break_paths_are_refused(tmp_path, name):
    write_config(tmp_path)
    (tmp_path / "samples.tsv").write_text(f"sample\tfasta\n{name}\t{DEMO_DATA / 'phage_mix.fa'}\n")
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and f"sample is '{name}': expected a name of letters" in proc.stdout, proc.stdout[-2000:]


def test_a_sample_listed_twice_is_refused(tmp_path):
    write_config(tmp_path)
    fasta = DEMO_DATA / "phage_mix.fa"
    (tmp_path / "samples.tsv").write_text(f"sample\tfasta\ns1\t{fasta}\ns1\t{fasta}\n")
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "sample 's1' is listed twice" in proc.stdout


def test_download_models_plans_one_fetch_per_model(tmp_path):
    write_config(tmp_path, models={"download_dir": "fetched", "dnabert_s_revision": "0123456789abcdef0123456789abcdef01234567"})
    out = snakemake(tmp_path, "-n", "-p", "download_models").stdout
    for group in ("esm2", "dnabert_s", "classifiers"):
        assert f"virnucflow fetch-models --dest fetched --only {group} " in out
    assert "--dnabert-revision 0123456789abcdef0123456789abcdef01234567" in out
    assert "fetched/torch/hub/checkpoints/esm2_t36_3B_UR50D.pt" in out
