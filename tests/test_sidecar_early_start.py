"""The sidecar starts with the run (issue 13): a fresh run plans it beside the first preparation jobs, and
repeated or partial runs (up to date, --until, --forcerun, a rerun after a failure) neither rerun what is up
to date nor start a sidecar that no embed job needs. One real run with a failing sample, one real rerun,
the rest dry runs."""

import json
import re
from pathlib import Path

import pytest
import yaml

from workflow_runs import DEMO_DATA, job_counts, snakemake, write_demo_run_config

pytestmark = pytest.mark.workflow
OTHERS = ("phage_mix", "reads_gz", "nothing")


def plan(workdir, *args):
    return job_counts(snakemake(workdir, "--cores", "2", "-n", *args).stdout)


def sidecar_pids(workdir):
    """Pids of every sidecar that the runs started, from the server logs ("sidecar[PID]")."""
    return {int(m) for log in Path(workdir).glob("logs/sidecar/cpu*.server.log")
            for m in re.findall(r"sidecar\[(\d+)\]", log.read_text())}


def result_times(workdir):
    return {p: p.stat().st_mtime_ns for s in OTHERS for p in (Path(workdir) / "results" / s).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def failed_then_rerun(tmp_path_factory):
    """The demo's samples plus `broken`, whose FASTA is binary junk: its chunk job fails, the others finish
    (--keep-going). Then the FASTA is repaired and the run repeated."""
    workdir = tmp_path_factory.mktemp("early_start")
    config = write_demo_run_config(workdir)
    settings = yaml.safe_load(config.read_text())
    settings["embedding"]["cpu_sidecars"] = 2  # two sidecars: the parts go to either, chosen as they run
    config.write_text(yaml.safe_dump(settings))
    broken = workdir / "broken.fa"
    broken.write_bytes(b"\x00\x01\x02 binary junk\n" * 50)
    with open(workdir / "samples.tsv", "a") as sheet:
        sheet.write(f"broken\t{broken}\n")
    fresh = plan(workdir)
    first = snakemake(workdir, "--cores", "2", "--keep-going", check=False)
    assert first.returncode != 0 and "broken" in first.stdout
    before = result_times(workdir)
    broken.write_text((DEMO_DATA / "phage_mix.fa").read_text())
    replan = plan(workdir)
    snakemake(workdir, "--cores", "2")
    return {"workdir": workdir, "fresh": fresh, "replan": replan, "before": before}


def test_a_fresh_run_plans_the_sidecar_before_any_part_exists(failed_then_rerun):
    fresh = failed_then_rerun["fresh"]
    # the embed jobs are not known yet (they come after the count_parts checkpoint), the sidecars are: one
    # `sidecar` job per sidecar and sample (4 x 2), each the sample's flag (under SLURM its lease)
    assert fresh["sidecar"] == 8 and "embed" not in fresh and fresh["shard"] == 4


def test_each_part_went_to_one_of_the_two_sidecars_and_says_which(failed_then_rerun):
    workdir = failed_then_rerun["workdir"]
    records = [json.loads(p.read_text()) for p in workdir.glob("results/*/provenance/output_*.json")]
    assert len(records) >= 5 and {r["device"] for r in records} == {"cpu"}
    for log in workdir.glob("logs/*/embed/output_*.log"):
        text = log.read_text()
        assert "embed: assigned" in text and ".virnucflow/sidecar/cpu0.json" in text
        assert ".virnucflow/sidecar/cpu1.json" in text, text
    assert {r["sidecar"]["pid"] for r in records} <= sidecar_pids(workdir)


def test_a_rerun_after_a_failure_redoes_only_the_failed_sample(failed_then_rerun):
    replan, workdir = failed_then_rerun["replan"], failed_then_rerun["workdir"]
    # the broken sample still has parts to embed: both sidecars start with the rerun (the failed run's
    # flags were forgotten on error), and nothing of the finished samples is planned
    assert replan["shard"] == 1 and replan["count_parts"] == 1 and replan["sidecar"] == 2, replan
    assert result_times(workdir) == failed_then_rerun["before"], "a finished sample was redone"
    assert (workdir / "results/broken/run_info.json").is_file()


@pytest.mark.parametrize("args", [(), ("--until", "concatenate_shards"), ("--until", "count_parts"),
                                  ("--forcerun", "classify"), ("--forcerun", "run_info")])
def test_repeated_and_partial_runs_embed_nothing_and_start_no_sidecar(failed_then_rerun, args):
    counts = plan(failed_then_rerun["workdir"], *args)
    assert "sidecar" not in counts and "embed" not in counts and "split_part" not in counts, counts
    if args[:1] == ("--forcerun",):
        assert counts[args[1]] == 4, counts


def test_a_partial_fresh_run_that_embeds_nothing_starts_no_sidecar(tmp_path):
    write_demo_run_config(tmp_path)
    for args in (("--until", "count_parts"), ("results/phage_mix/parts/output_1.fa",)):
        counts = plan(tmp_path, *args)
        assert counts and "sidecar" not in counts, (args, counts)


def test_a_sample_added_to_a_finished_run_embeds_only_itself(failed_then_rerun):
    """The sidecars start again for the new sample, and the finished samples' parts stay as they are."""
    workdir = failed_then_rerun["workdir"]
    sheet = (workdir / "samples.tsv").read_text()
    (workdir / "samples_plus.tsv").write_text(sheet + f"added\t{DEMO_DATA / 'phage_mix.fa'}\n")
    counts = plan(workdir, "--config", "samples=samples_plus.tsv")
    assert counts["sidecar"] == 2 and counts["shard"] == 1, counts
    assert "embed" not in counts and "merge" not in counts and "classify_part" not in counts, counts


def job_times(workdir):
    """{rule: {log file: (start, end)}} of the jobs of the run, from Snakemake's records (one per output)."""
    times = {}
    for path in (Path(workdir) / ".snakemake" / "metadata").glob("*"):
        record = json.loads(path.read_text())
        times.setdefault(record["rule"], {})[" ".join(record.get("log") or ())] = (record["starttime"], record["endtime"])
    return times


def test_the_first_shards_parts_are_embedded_while_later_shards_are_prepared(tmp_path):
    """A sample of eleven shards (four small ones, then seven of shard_mb) on two cores: the shards run in
    input order, and the parts that end in the first shards are cut and sent to the sidecar as soon as
    those shards are prepared, before the last shard is, and so before the sample's parts are counted."""
    from workflow_runs import orf_workload

    config = orf_workload(tmp_path, 300, records_per_file=10, embedding={"sidecar": True, "device": "cpu"})
    settings = yaml.safe_load(config.read_text())
    settings["shard_mb"] = (tmp_path / "orfs.fa").stat().st_size / 7.5 / 1e6
    config.write_text(yaml.safe_dump(settings))
    snakemake(tmp_path, "--cores", "2")
    times = job_times(tmp_path)
    shards = times["prepare_shard"]
    assert len(shards) == 11 and len(times["embed"]) == 30, {rule: len(jobs) for rule, jobs in times.items()}
    by_start = sorted(shards, key=shards.get)
    assert "logs/orfs/prepare/shard_1.log" in by_start[:2] and "logs/orfs/prepare/shard_11.log" in by_start[-2:]
    first_embed = min(start for start, _ in times["embed"].values())
    assert first_embed < max(end for _, end in shards.values()), times
    assert first_embed < min(start for start, _ in times["count_parts"].values()), times
    assert (tmp_path / "results/orfs/prediction_results.txt").is_file()


def test_the_sidecar_job_waits_for_no_job_but_the_models(tmp_path):
    """Its settings travel as options, so a fresh run starts it in the first round of jobs, beside the first
    shard: only the demo's models (made by the workflow) come before it, not the settings file's job."""
    write_demo_run_config(tmp_path)
    dot = snakemake(tmp_path, "--dag").stdout
    rules = {node: label.split("\\n")[0] for node, label in re.findall(r'^\s*(\d+)\[label = "([^"]*)"', dot, re.M)}
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)
    sidecars = {node for node, rule in rules.items() if rule == "sidecar"}
    before = {rules[a] for a, b in edges if b in sidecars}
    assert sidecars and before == {"make_demo_models"}, before
    assert any(rules[b] == "sidecar" for a, b in edges if rules[a] == "make_demo_models")
