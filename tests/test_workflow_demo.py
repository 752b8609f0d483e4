"""The demo end to end through the real `snakemake` command: in-process and sidecar paths give identical files."""


import numpy as np
import pytest

from workflow_runs import pid_alive, snakemake, wait_for, write_config
from virnucflow.embedding_files import load_embeddings

pytestmark = pytest.mark.slow

RESULT_FILES = ("prediction_results.txt", "prediction_results_highestscore.csv")


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory):
    runs = {}
    for name, sidecar in (("in_process", False), ("sidecar", True)):
        workdir = tmp_path_factory.mktemp(name)
        write_config(workdir, keep_intermediate=True, embedding={"sidecar": sidecar, "device": "cpu"})
        proc = snakemake(workdir, "--cores", "2")
        runs[name] = (workdir, proc.stdout)
    return runs


def test_demo_writes_every_promised_output(both_runs):
    workdir, _ = both_runs["sidecar"]
    for sample in ("phage_mix", "reads_gz"):
        out = workdir / "results" / sample
        for name in ("chunked.fa", "identified_nucleotide.fa", "identified_protein.faa", *RESULT_FILES):
            assert (out / name).is_file(), name
        assert sorted(p.name for p in (out / "merged").iterdir())
        header = (out / "prediction_results.txt").read_text().splitlines()[0]
        assert header == "Sequence_ID\tPrediction\tscore1\tscore2"
    # 43 kept frames in reads_gz with 40 records per file -> two parts
    assert len(list((workdir / "results/reads_gz/merged").glob("output_*_merged.pt"))) == 2
    assert all((workdir / "logs").rglob("*.log"))


def test_sidecar_and_in_process_files_are_bit_identical(both_runs):
    a, _ = both_runs["in_process"]
    b, _ = both_runs["sidecar"]
    embeddings = sorted((a / "results").rglob("embeddings/*.npz"))
    assert embeddings
    for path in embeddings:
        ids_a, vec_a = load_embeddings(path)
        ids_b, vec_b = load_embeddings(b / path.relative_to(a))
        assert ids_a == ids_b
        assert vec_a.dtype == vec_b.dtype == np.float32
        assert np.array_equal(vec_a, vec_b), path
    for sample in ("phage_mix", "reads_gz"):
        for name in RESULT_FILES:
            assert (a / "results" / sample / name).read_bytes() == (b / "results" / sample / name).read_bytes()


def test_the_sidecar_is_gone_after_the_run(both_runs):
    workdir, _ = both_runs["sidecar"]
    log = (workdir / "logs/sidecar/cpu.server.log").read_text()
    pid = int(log.split("sidecar[", 1)[1].split("]", 1)[0])
    assert wait_for(lambda: not pid_alive(pid), 15)
    assert not (workdir / ".virnucflow/sidecar/cpu.json").exists()


def test_intermediates_are_removed_unless_kept(tmp_path):
    write_config(tmp_path, embedding={"sidecar": True, "device": "cpu"})
    snakemake(tmp_path, "--cores", "2")
    out = tmp_path / "results/phage_mix"
    assert not (out / "parts").exists() and not (out / "embeddings").exists()
    assert (out / "merged").is_dir()
    rerun = snakemake(tmp_path, "--cores", "2", "-n")
    assert "Nothing to be done" in rerun.stdout


def test_a_sample_without_kept_frames_gets_header_only_results(tmp_path):
    write_config(tmp_path, embedding={"sidecar": True, "device": "cpu"})
    fasta = tmp_path / "ambiguous.fa"
    fasta.write_text(">n1\n" + "N" * 700 + "\n>too_short\nAC\n")
    (tmp_path / "samples.tsv").write_text(f"sample\tfasta\nnothing\t{fasta}\n")
    snakemake(tmp_path, "--cores", "2")
    out = tmp_path / "results/nothing"
    assert (out / "prediction_results.txt").read_text() == "Sequence_ID\tPrediction\tscore1\tscore2\n"
    assert (out / "prediction_results_highestscore.csv").read_text() == "Modified_ID\tIs_Virus\n"
