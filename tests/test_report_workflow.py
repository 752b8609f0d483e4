"""The demo run's per-record outputs and its Snakemake report: the HTML builds and holds every figure and table.

The run is the one shared by the tests (conftest.demo_run): the demo's two samples and `nothing`, whose
records keep no frame; report.top_contigs is 5."""

import base64
import csv
import html as htmllib
import json
import re
import shutil

import pytest

from conftest import run_cli
from workflow_runs import DEMO_DATA, DEMO_RUN_SAMPLES, build_report, snakemake
from virnucflow.fasta import read_fasta

pytestmark = pytest.mark.workflow

SAMPLES = {"phage_mix": DEMO_DATA / "phage_mix.fa", "reads_gz": DEMO_DATA / "reads.fa.gz"}  # with kept frames
FIGURES = ("virus_scores.png", "viral_fraction.png", "run_stats.png")


@pytest.fixture(scope="module")
def run(demo_run):
    return demo_run


@pytest.fixture(scope="module")
def report(run):
    """The report of the shared run, built once (`snakemake --report`)."""
    return build_report(run).read_text()


def embedded(html, name):
    """The files of this name that the report embeds, decoded."""
    return [base64.b64decode(v) for v in re.findall(rf"filename={re.escape(name)};base64,([A-Za-z0-9+/=]+)", html)]


def table(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_per_record_calls_cover_every_input_record(run):
    for sample, fasta in {**SAMPLES, "nothing": run / "ambiguous.fa"}.items():
        out = run / "results" / sample
        records = dict(read_fasta(fasta))
        rows = table(out / "virus_contigs.tsv")
        assert [r["sequence_id"] for r in rows] == list(records)
        assert all(int(r["length"]) == len(records[r["sequence_id"]]) for r in rows)
        viral_chunks = sum(r["Is_Virus"] == "True" for r in table(out / "prediction_results_highestscore.csv"))
        assert sum(int(r["chunks_viral"]) for r in rows) == viral_chunks
        assert sum(int(r["chunks_scored"]) for r in rows) == len(table(out / "prediction_results_highestscore.csv"))
        called = [r["sequence_id"] for r in rows if r["call"] == "virus"]
        assert [rid for rid, _ in read_fasta(out / "virus_contigs.fa")] == called if called else \
            (out / "virus_contigs.fa").read_text() == ""
        assert (run / "logs" / sample / "contigs.log").is_file()
    assert any(r["call"] == "virus" for r in table(run / "results/reads_gz/virus_contigs.tsv"))


def test_the_report_builds_and_holds_every_figure_and_table(run, report):
    html = report
    # every figure is embedded as the very bytes that the workflow wrote
    embedded = dict(re.findall(r"data:image/png;charset=utf8;filename=([^;]+);base64,([A-Za-z0-9+/=]+)", html))
    for name in FIGURES:
        assert base64.b64decode(embedded[name]) == (run / "summary" / name).read_bytes(), name
    tracks = [base64.b64decode(v) for v in re.findall(r"filename=score_tracks\.png;base64,([A-Za-z0-9+/=]+)", html)]
    assert sorted(tracks) == sorted((run / "results" / s / "score_tracks.png").read_bytes() for s in DEMO_RUN_SAMPLES)
    assert html.count("filename=virus_contigs.tsv;base64,") == 3 and "filename=run_stats.tsv;base64," in html
    for category in ("Per-record calls", "Score tracks", "Summary", "Run statistics", "Provenance"):
        assert category in html
    # each sample's run_info.json, the very bytes the workflow wrote
    infos = [base64.b64decode(v) for v in re.findall(r"filename=run_info\.json;base64,([A-Za-z0-9+/=]+)", html)]
    assert sorted(infos) == sorted((run / "results" / s / "run_info.json").read_bytes() for s in DEMO_RUN_SAMPLES)
    # the workflow description and captions, rendered with this run's config
    assert "re-implemented faithfully as a Snakemake workflow" in html
    assert "These are the tiny random demo models" in html
    assert "along its top 5 records" in html
    assert "the largest P(virus) over its kept frames" in html


def test_the_run_is_complete_and_status_says_so(run):
    assert "Nothing to be done" in snakemake(run, "-n", "--cores", "2").stdout
    report = json.loads(run_cli("status", "-d", str(run), "--json", "--no-sidecar").stdout)
    assert [s["stage"] for s in report["samples"]] == ["done", "done", "done"]
    assert report["workflow"]["percent"] == 100 and not report["workflow"]["locked"]
    stats = table(run / "summary/run_stats.tsv")
    assert [r["sample"] for r in stats] == list(DEMO_RUN_SAMPLES) and stats[1]["parts"] == "2"
    assert stats[0]["embed_seconds"] != "NA"


def test_the_tables_are_pages_in_the_report(run, report):
    """Each sample's per-record calls and the run statistics are HTML pages (the report shows them in its
    own page), with the very cells of the TSVs, which stay for machines."""
    pages = embedded(report, "virus_contigs.html")
    assert sorted(pages) == sorted((run / "results" / s / "virus_contigs.html").read_bytes() for s in DEMO_RUN_SAMPLES)
    for sample in DEMO_RUN_SAMPLES:
        page = (run / "results" / sample / "virus_contigs.html").read_text()
        rows = [[htmllib.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
                for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page)]
        with open(run / "results" / sample / "virus_contigs.tsv", newline="") as fh:
            tsv = list(csv.reader(fh, delimiter="\t"))[1:]
        assert sorted(r for r in rows if r) == sorted(tsv), sample
    [stats_page] = embedded(report, "run_stats.html")
    assert stats_page == (run / "summary/run_stats.html").read_bytes()
    assert all(f"<td>{s}</td>" in stats_page.decode() for s in DEMO_RUN_SAMPLES)


def test_the_statistics_hold_every_rule_that_ran(run, report):
    """Snakemake's runtime statistics come from the metadata of the outputs of the jobs in the report's DAG
    (not from benchmark files): the per-part jobs behind the checkpoint and the checkpoint itself are in it."""
    [run_log] = [p for p in (run / ".snakemake/log").glob("*.snakemake.log") if "Finished jobid" in p.read_text()]
    ran = set(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", run_log.read_text())) - {"all"}  # all: no output
    timed = set(re.findall(r'\{"rule": "(\w+)", "runtime": [-0-9.e]+\}', report))
    assert {"embed", "merge", "count_parts", "split_part"} <= ran
    # the `sidecar` job runs when the models are made before the sample's parts are counted (else the first
    # embed job starts the sidecar); its output is a temp() flag that only a run still to embed asks for,
    # so it is in no finished run's DAG, and the report has no time for it
    assert timed == ran - {"sidecar"}
    runtimes = {rule: float(t) for rule, t in re.findall(r'\{"rule": "(\w+)", "runtime": ([-0-9.e]+)\}', report)}
    assert all(t > 0 for t in runtimes.values()), runtimes  # a log-scale plot cannot draw 0 or less


def test_status_keeps_the_finished_run_after_lint(run, tmp_path):
    """`snakemake --lint` writes a log of its own; status still reports the run, not the lint."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True, ignore=shutil.ignore_patterns(".virnucflow", "*.html"))  # no sockets
    before = set((copy / ".snakemake/log").iterdir())
    assert "Congratulations" in snakemake(copy, "--lint", config=copy / "config.yaml").stdout
    assert set((copy / ".snakemake/log").iterdir()) > before  # the lint's own log
    report = json.loads(run_cli("status", "-d", str(copy), "--json", "--no-sidecar").stdout)
    assert report["workflow"]["percent"] == 100 and "Finished jobid" in (copy / report["workflow"]["log"]).read_text()
    assert [s["stage"] for s in report["samples"]] == ["done", "done", "done"]
