"""The demo end to end through the real `snakemake` command: in-process and sidecar paths give identical files.

Both runs are made once per test run (conftest.demo_run, conftest.demo_run_in_process); these tests only read them.
"""

import numpy as np
import pytest
import torch

from virnucflow import cli
from virnucflow.classifier import classify_files
from virnucflow.embedding_files import load_embeddings
from virnucflow.predictions import score_jobs
from workflow_runs import DEMO_DATA, DEMO_RUN_SAMPLES, pid_alive, snakemake, wait_for, write_config

pytestmark = pytest.mark.workflow

RESULT_FILES = ("prediction_results.txt", "prediction_results_highestscore.csv")
DEMO_SAMPLES = ("phage_mix", "reads_gz")


def test_demo_writes_every_promised_output(demo_run):
    for sample in DEMO_RUN_SAMPLES:
        out = demo_run / "results" / sample
        for name in ("chunked.fa", "identified_nucleotide.fa", "identified_protein.faa", *RESULT_FILES):
            assert (out / name).is_file(), name
        assert sorted(p.name for p in (out / "merged").iterdir())
        header = (out / "prediction_results.txt").read_text().splitlines()[0]
        assert header == "Sequence_ID\tPrediction\tscore1\tscore2"
    # 43 kept frames in reads_gz with 40 records per file -> two parts
    assert len(list((demo_run / "results/reads_gz/merged").glob("output_*_merged.pt"))) == 2
    assert all((demo_run / "logs").rglob("*.log"))


def test_sidecar_and_in_process_files_are_bit_identical(demo_run, demo_run_in_process):
    """The in-process run keeps its per-part embeddings; the sidecar run's merged files hold its vectors
    (DNABERT-S, then ESM-2, per row), so each merged file must be the two in-process ones side by side."""
    a, b = demo_run_in_process, demo_run
    embeddings = sorted((a / "results").rglob("embeddings/*_DNABERT_S.npz"))
    assert len(embeddings) == 3  # phage_mix: 1 part, reads_gz: 2
    for dna_path in embeddings:
        ids_dna, dna = load_embeddings(dna_path)
        ids_esm, esm = load_embeddings(dna_path.with_name(dna_path.name.replace("_DNABERT_S", "_ESM")))
        assert ids_dna == ids_esm and dna.dtype == esm.dtype == np.float32
        merged_name = dna_path.name.replace("_DNABERT_S.npz", "_merged.pt")
        sidecar = torch.load(b / dna_path.relative_to(a).parent.parent / "merged" / merged_name, weights_only=True)
        assert sidecar["ids"] == ids_dna and sidecar["data"].dtype == torch.float32
        assert np.array_equal(sidecar["data"].numpy(), np.concatenate([dna, esm], axis=1)), dna_path
    for merged in sorted((a / "results").rglob("merged/*.pt")):
        assert merged.read_bytes() == (b / merged.relative_to(a)).read_bytes(), merged
    for sample in DEMO_SAMPLES:
        for name in RESULT_FILES:
            assert (a / "results" / sample / name).read_bytes() == (b / "results" / sample / name).read_bytes()


def test_the_sidecar_is_gone_after_the_run(demo_run):
    log = (demo_run / "logs/sidecar/cpu.server.log").read_text()
    pid = int(log.split("sidecar[", 1)[1].split("]", 1)[0])
    assert wait_for(lambda: not pid_alive(pid), 15)
    assert not (demo_run / ".virnucflow/sidecar/cpu.json").exists()


def test_intermediates_are_removed_unless_kept(demo_run, demo_run_in_process):
    for sample in DEMO_RUN_SAMPLES:
        out = demo_run / "results" / sample
        assert not (out / "parts").exists() and not (out / "embeddings").exists()
        assert (out / "merged").is_dir()
    rerun = snakemake(demo_run, "--cores", "2", "-n")
    assert "Nothing to be done" in rerun.stdout
    kept = demo_run_in_process / "results/phage_mix"
    assert list((kept / "parts").glob("output_*.fa")) and list((kept / "embeddings").glob("output_*.npz"))


def test_a_sample_without_kept_frames_gets_header_only_results(demo_run):
    out = demo_run / "results/nothing"
    assert (out / "prediction_results.txt").read_text() == "Sequence_ID\tPrediction\tscore1\tscore2\n"
    assert (out / "prediction_results_highestscore.csv").read_text() == "Modified_ID\tIs_Virus\n"


def test_shards_and_per_part_scores_give_the_one_piece_files(demo_run, tmp_path):
    """config/demo.yaml cuts the demo's samples into several shards (shard_mb): the sample's files are still
    those of one chunk and one translate job, and the tables, put together from per-part scores written
    before them, are those of one classification over all parts."""
    inputs = {"phage_mix": DEMO_DATA / "phage_mix.fa", "reads_gz": DEMO_DATA / "reads.fa.gz"}
    for sample, fasta in inputs.items():
        out, whole = demo_run / "results" / sample, tmp_path / sample
        shards = len(list((demo_run / "logs" / sample / "prepare").glob("shard_*.log")))
        assert shards == (7 if sample == "phage_mix" else 4)  # 4 kB shards after three small ones
        assert cli.main(["chunk", "--size", "500", str(fasta), str(whole / "chunked.fa")]) == 0
        assert cli.main(["translate", str(whole / "chunked.fa"), "--nucleotide", str(whole / "identified_nucleotide.fa"),
                         "--protein", str(whole / "identified_protein.faa")]) == 0
        for name in ("chunked.fa", "identified_nucleotide.fa", "identified_protein.faa"):
            assert (out / name).read_bytes() == (whole / name).read_bytes(), (sample, name)
        merged = sorted((out / "merged").glob("output_*_merged.pt"), key=lambda p: int(p.name.split("_")[1]))
        scores = sorted((out / "scores").glob("output_*.tsv"))
        assert len(scores) == len(score_jobs(len(merged), 40))  # parts of 40 frames: seven to a job
        final = (out / "prediction_results.txt").stat().st_mtime_ns
        assert all(s.stat().st_mtime_ns <= final for s in scores)
        classify_files(demo_run / "resources/demo_models/500_model.pth", merged, whole)
        for name in RESULT_FILES:
            assert (out / name).read_bytes() == (whole / name).read_bytes(), (sample, name)


def test_a_sample_whose_ids_repeat_gets_no_tables(tmp_path):
    """Its parts are cut and embedded from the shards before the whole sample's id check ends (so that the late
    parts need not wait for the sample's files); the check still stops its tables."""
    fasta = tmp_path / "dup.fa"
    seq = "".join((DEMO_DATA / "phage_mix.fa").read_text().split(">")[1].splitlines()[1:])
    fasta.write_text(f">r1\n{seq}\n>r2\n{seq}\n>r1\n{seq}\n")
    config = write_config(tmp_path, embedding={"sidecar": True, "device": "cpu"})
    (tmp_path / "samples.tsv").write_text(f"sample\tfasta\ndup\t{fasta}\n")
    run = snakemake(tmp_path, "--cores", "2", "--keep-going", config=config, check=False)
    assert run.returncode != 0
    assert "record id 'r1' (line 5) appears twice" in (tmp_path / "logs/dup/concatenate_shards.log").read_text()
    assert not list((tmp_path / "results" / "dup").glob("prediction_results*"))
