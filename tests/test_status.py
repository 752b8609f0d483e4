"""`virnucflow status` on a directory laid out as a run in progress: steps per sample, Snakemake's count,
running jobs, and a sidecar that does not answer. It never imports torch."""

import base64
import json
import subprocess
import sys

import pytest

from conftest import run_cli
from virnucflow.progress import Progress


def touch(path, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def running_layout(root):
    res = root / "results"
    for sample in ("s1", "s2", "s3"):
        touch(res / sample / "chunked.fa")
    touch(res / "s1/identified_protein.faa")
    for k in (1, 2, 3):
        touch(res / f"s1/parts/output_{k}.fa")
    touch(res / "s1/merged/output_1_merged.pt")
    touch(res / "s1/embeddings/output_2_DNABERT_S.npz")
    touch(res / "s1/embeddings/output_2_ESM.npz")
    touch(res / "s1/embeddings/output_3_ESM.npz")  # DNABERT-S half still missing
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "virus_contigs.tsv"):
        touch(res / "s3" / name)
    touch(res / "s3/merged/output_1_merged.pt")
    touch(res / "s4/shards/plan.json", '{"fasta": "s4.fa", "shards": 3}')
    touch(res / "s4/prepared/shard_2.protein.faa")
    touch(root / "logs/s2/chunk.log", "2026-01-01 virnucflow INFO chunk: 200000 chunks written (50000/s)\n")
    touch(root / ".snakemake/log/2026-01-01T000000.snakemake.log",
          "Job stats: ...\n3 of 12 steps (25%) done\n5 of 14 steps (36%) done\n")
    touch(root / ".snakemake/locks/0.input.lock")
    key = base64.urlsafe_b64encode(b"results/s1/embeddings/output_3_DNABERT_S.npz").decode()
    touch(root / ".snakemake/incomplete" / key, "{}")
    touch(root / ".virnucflow/sidecar/gpu0.json", "{}")


@pytest.mark.process
def test_status_of_a_run_in_progress(tmp_path):
    running_layout(tmp_path)
    proc = run_cli("status", "-d", str(tmp_path), "--json")
    report = json.loads(proc.stdout)
    wf = report["workflow"]
    assert (wf["done"], wf["total"], wf["percent"], wf["locked"], wf["failed"]) == (5, 14, 36, True, False)
    assert wf["running"] == ["results/s1/embeddings/output_3_DNABERT_S.npz"]
    s1, s2, s3, s4 = report["samples"]
    assert (s1["parts"], s1["embedded"], s1["merged"], s1["classified"]) == (3, 2, 1, False)
    assert s1["stage"] == "embedding (2/3 parts embedded, 1 merged)"
    assert s2["stage"] == "translating" and "200000 chunks written" in s2["last_log"]
    assert s3["stage"] == "done" and s3["parts"] == 1
    assert s4["stage"] == "preparing (1/3 shards chunked and translated)"
    assert "not a virnucflow-sidecar endpoint file" in report["sidecars"][str(tmp_path / ".virnucflow/sidecar/gpu0.json")]["error"]

    text = run_cli("status", "-d", str(tmp_path)).stdout
    assert "workflow: running; 5 of 14 steps (36%) done" in text
    assert "samples done: 1 of 4" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("s")}
    assert rows["s1"] == ["yes", "yes", "3", "2/3", "1/3", "-", "-"]
    assert rows["s3"] == ["yes", "yes", "1", "1/1", "1/1", "yes", "yes"]
    assert "gpu0: " in text


@pytest.mark.process
def test_status_lists_unstarted_samples_from_the_sheet_and_an_empty_directory(tmp_path):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample\tfasta\nfirst\ta.fa\nsecond\tb.fa\n")
    text = run_cli("status", "-d", str(tmp_path), "--sample-sheet", str(sheet), "--no-sidecar").stdout
    assert "workflow: not running; no Snakemake log" in text and "samples done: 0 of 2" in text
    (tmp_path / "nothing").mkdir()  # an empty directory (a missing one is an error: tests/test_cli_basics.py)
    assert run_cli("status", "-d", str(tmp_path / "nothing"), "--no-sidecar").stdout.endswith("no sample has started (results/ is empty)\n")


@pytest.mark.process
def test_status_does_not_import_torch(tmp_path):
    code = "import sys; from virnucflow.cli import main; main(['status', '-d', sys.argv[1], '--no-sidecar']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


@pytest.mark.unit
def test_progress_lines_every_n_records(caplog, monkeypatch):
    monkeypatch.setenv("VIRNUCFLOW_PROGRESS_EVERY", "10")
    caplog.set_level("INFO", logger="virnucflow.progress")
    progress = Progress("chunk", "chunks written")
    for _ in range(25):
        progress.tick()
    progress.done()
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        "chunk: 10 chunks written", "chunk: 20 chunks written", "chunk: 25 chunks written in total"]


@pytest.mark.process
def test_chunk_logs_progress(tmp_path, monkeypatch):
    src = tmp_path / "in.fa"
    src.write_text("".join(f">r{i}\n{'ACGT' * 100}\n" for i in range(30)))
    monkeypatch.setenv("VIRNUCFLOW_PROGRESS_EVERY", "20")
    proc = run_cli("chunk", "--size", "300", str(src), str(tmp_path / "c.fa"))
    assert "chunk: 20 chunks written" in proc.stderr and "chunk: 60 chunks written in total" in proc.stderr


@pytest.mark.process
def test_a_file_that_a_running_job_still_writes_is_not_done(tmp_path):
    running_layout(tmp_path)
    key = base64.urlsafe_b64encode(b"results/s3/virus_contigs.tsv").decode()
    touch(tmp_path / ".snakemake/incomplete" / key, "{}")
    report = json.loads(run_cli("status", "-d", str(tmp_path), "--json", "--no-sidecar").stdout)
    assert report["samples"][2]["stage"] == "calling records"


# The beginning of a run's log as Snakemake 9 writes it, and one job with three outputs.
RUN_LOG = """Assuming unrestricted shared filesystem usage.

SNAKEMAKE
=========
  Date: 2026-12-01 06:15:58
  Snakemake version: 9.27.1

Building DAG of jobs...
Job stats:
job                 count
----------------  -------
chunk                   1
total                   1

[Tue Dec  1 06:16:24 2026]
localrule embed:
    input: .virnucflow/sidecar/cpu.started, results/s1/parts
    output: results/s1/embeddings/output_1_DNABERT_S.npz, results/s1/embeddings/output_1_ESM.npz, results/s1/provenance/output_1.json
    log: logs/s1/embed/output_1.log
    jobid: 53
    benchmark: benchmarks/s1/embed/output_1.tsv
    wildcards: sample=s1, k=1
[Tue Dec  1 06:16:24 2026]
localcheckpoint count_parts:
    input: results/s2/identified_protein.faa
    output: results/s2/parts.json
    log: logs/s2/count_parts.log
    jobid: 13
18 of 40 steps (45%) done
"""
# What `snakemake --lint`, `--report`, `--dag`/`--summary` and `--unlock` leave in .snakemake/log.
OTHER_LOGS = (
    "Congratulations, your workflow is in a good condition!\n",
    "Building DAG of jobs...\nUpdating checkpoint dependencies.\nCreating report...\nReport created.\n",
    "Building DAG of jobs...\nUpdating checkpoint dependencies.\n",
    "Unlocked working directory.\n",
)


def write_logs(root, texts):
    """Logs in .snakemake/log, oldest first."""
    import os

    for i, text in enumerate(texts):
        path = root / f".snakemake/log/2026-12-01T06{i:02d}00.000000.snakemake.log"
        touch(path, text)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))


def mark_incomplete(root, *files):
    for f in files:
        touch(root / ".snakemake/incomplete" / base64.urlsafe_b64encode(f.encode()).decode(), '{"external_jobid": null}')


@pytest.mark.unit
def test_lint_report_dag_and_unlock_logs_do_not_hide_the_run(tmp_path):
    from virnucflow.status import snakemake_progress

    write_logs(tmp_path, (RUN_LOG,) + OTHER_LOGS)
    wf = snakemake_progress(tmp_path)
    assert wf["log"].endswith("T060000.000000.snakemake.log")
    assert (wf["done"], wf["total"], wf["percent"], wf["up_to_date"]) == (18, 40, 45, False)


@pytest.mark.unit
def test_a_run_that_found_nothing_to_be_done_says_so(tmp_path):
    from virnucflow.status import render, snakemake_progress

    nothing = "\nSNAKEMAKE\n=========\nBuilding DAG of jobs...\nNothing to be done (all requested files are present and up to date).\n"
    write_logs(tmp_path, (RUN_LOG, nothing) + OTHER_LOGS)
    wf = snakemake_progress(tmp_path)
    assert wf["up_to_date"] and wf["log"].endswith("T060100.000000.snakemake.log")
    text = render({"directory": str(tmp_path), "workflow": wf, "samples": [], "sidecars": {}})
    assert "workflow: not running; the last run found nothing to be done" in text


@pytest.mark.unit
def test_a_running_job_with_three_outputs_counts_once(tmp_path):
    from virnucflow.status import render, snakemake_progress

    write_logs(tmp_path, (RUN_LOG,))
    touch(tmp_path / ".snakemake/locks/0.input.lock")
    mark_incomplete(tmp_path, "results/s1/embeddings/output_1_DNABERT_S.npz", "results/s1/embeddings/output_1_ESM.npz",
                    "results/s1/provenance/output_1.json", "results/s2/parts.json", "results/s3/chunked.fa")
    wf = snakemake_progress(tmp_path)
    assert len(wf["running"]) == 5  # the files, as before
    assert sorted((j["rule"] or "", len(j["outputs"])) for j in wf["jobs"]) == [("", 1), ("count_parts", 1), ("embed", 3)]
    text = render({"directory": str(tmp_path), "workflow": wf, "samples": [], "sidecars": {}})
    assert "jobs running now: 3 (" in text
    assert "embed results/s1/embeddings/output_1_DNABERT_S.npz (+2 more outputs)" in text


@pytest.mark.unit
def test_jobs_left_by_a_stopped_run_are_not_called_running(tmp_path):
    from virnucflow.status import render, snakemake_progress

    write_logs(tmp_path, (RUN_LOG,))
    mark_incomplete(tmp_path, "results/s2/parts.json")  # no lock: the run is gone
    text = render({"directory": str(tmp_path), "workflow": snakemake_progress(tmp_path), "samples": [], "sidecars": {}})
    assert "jobs left unfinished by a run that stopped (they rerun): 1 (count_parts results/s2/parts.json)" in text
    assert "jobs running now" not in text


@pytest.mark.unit
def test_a_newer_command_that_stopped_on_a_mistake_is_shown_beside_the_run(tmp_path):
    from virnucflow.status import render, snakemake_progress

    mistake = ('ValueError in file "/repo/workflow/rules/common.smk", line 36:\n'
               "samples.tsv: sample 's1': FASTA '/nope.fa' does not exist; fix the path\n"
               '  File "/repo/workflow/rules/common.smk", line 44, in <module>\n')
    write_logs(tmp_path, (RUN_LOG, mistake, OTHER_LOGS[0]))
    wf = snakemake_progress(tmp_path)
    assert wf["done"] == 18 and wf["stopped_early"]["log"].endswith("T060100.000000.snakemake.log")
    text = render({"directory": str(tmp_path), "workflow": wf, "samples": [], "sidecars": {}})
    assert ("a newer Snakemake command stopped before running anything: ValueError: samples.tsv: sample 's1': "
            "FASTA '/nope.fa' does not exist; fix the path") in text
    write_logs(tmp_path, (mistake, RUN_LOG))  # a run after the mistake: the mistake is old news
    assert snakemake_progress(tmp_path)["stopped_early"] is None
