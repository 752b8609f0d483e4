"""Per-record calls: the call rule, the id mapping, the NA rows, gzipped input, and bad input left unwritten."""

import csv
import gzip
import hashlib

import numpy as np
import pytest

from conftest import run_cli
from virnucflow.classifier import write_predictions
from virnucflow.contigs import CONTIG_COLUMNS, call_contigs, called_records, chunk_ids, read_contig_table
from virnucflow.fasta import read_fasta

SEQ = {
    "a": "ACGT" * 62 + "AC",  # 250 bp: one chunk at cs=300
    "b_chunk_1": "A" * 700,  # 3 chunks; an id that itself holds '_chunk_'
    "c": "C" * 600,  # 2 chunks
    "empty": "",  # skipped by chunking: no chunk
    "d": "G" * 300,  # 1 chunk, no kept frame
}
# chunk -> frames (suffix, P(others), P(virus)); chunks not listed have no kept frame
FRAMES = {
    "a_chunk_1": [("F1", 0.3, 0.7), ("R2", 0.6, 0.4)],
    "b_chunk_1_chunk_1": [("F2", 0.2, 0.8)],
    "b_chunk_1_chunk_2": [("F1", 0.9, 0.1), ("R3", 0.7, 0.3)],
    "c_chunk_1": [("F1", 0.45, 0.55)],
    "c_chunk_2": [("R1", 0.6, 0.4)],
}


@pytest.fixture
def sample(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{rid} description\n{seq}\n" for rid, seq in SEQ.items()))
    ids = [chunk + suffix for chunk, frames in FRAMES.items() for suffix, _, _ in frames]
    probs = np.array([[p0, p1] for frames in FRAMES.values() for _, p0, p1 in frames], dtype=np.float32)
    write_predictions(ids, probs, tmp_path)
    return tmp_path, fasta


def rows(path):
    with open(path, newline="") as fh:
        return {r["sequence_id"]: r for r in csv.DictReader(fh, delimiter="\t")}


@pytest.mark.unit
def test_chunk_ids_follow_chunking():
    assert chunk_ids("x", 250, 300) == ["x_chunk_1"]
    assert chunk_ids("x", 700, 300) == ["x_chunk_1", "x_chunk_2", "x_chunk_3"]
    assert chunk_ids("x", 0, 300) == []


@pytest.mark.unit
def test_the_call_rule_and_every_column(sample):
    out, fasta = sample
    records, viral = call_contigs(fasta, out / "prediction_results.txt", out / "prediction_results_highestscore.csv",
                                  300, out / "virus_contigs.tsv", out / "virus_contigs.fa")
    assert (records, viral) == (5, 2)
    assert (out / "virus_contigs.tsv").read_text().splitlines()[0].split("\t") == list(CONTIG_COLUMNS)
    table = rows(out / "virus_contigs.tsv")
    assert list(table) == list(SEQ)  # input order, every record, the empty one included
    a, b, c, empty, d = (table[k] for k in SEQ)
    assert (a["length"], a["chunks"], a["chunks_scored"], a["chunks_viral"], a["call"]) == ("250", "1", "1", "1", "virus")
    assert a["max_virus_score"] == "0.7" and a["mean_virus_score"] == "0.7"
    # one viral chunk of three (the third has no kept frame and counts as not viral)
    assert (b["chunks"], b["chunks_scored"], b["chunks_viral"], b["viral_fraction"], b["call"]) == ("3", "2", "1", "0.3333", "others")
    assert b["max_virus_score"] == "0.8" and b["mean_virus_score"] == str(np.float32((0.8 + 0.3) / 2))
    assert (c["chunks_viral"], c["viral_fraction"], c["call"]) == ("1", "0.5000", "virus")  # exactly the threshold
    assert (empty["length"], empty["chunks"], empty["max_virus_score"], empty["call"]) == ("0", "0", "NA", "others")
    assert (d["chunks"], d["chunks_scored"], d["mean_virus_score"], d["call"]) == ("1", "0", "NA", "others")
    assert list(read_fasta(out / "virus_contigs.fa")) == [("a", SEQ["a"]), ("c", SEQ["c"])]


@pytest.mark.unit
@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_the_score_tracks_call_the_records_as_the_table_does(sample, fraction):
    """The report's score tracks call the records themselves (so they need not wait for the table): the same
    rows, typed as the table is read back."""
    out, fasta = sample
    tables = (out / "prediction_results.txt", out / "prediction_results_highestscore.csv")
    call_contigs(fasta, *tables, 300, out / "t.tsv", out / "v.fa", min_viral_fraction=fraction)
    assert called_records(fasta, *tables, 300, fraction) == read_contig_table(out / "t.tsv")


@pytest.mark.process
def test_the_threshold_is_a_parameter_and_the_inputs_stay_unchanged(sample):
    out, fasta = sample
    tables = [out / "prediction_results.txt", out / "prediction_results_highestscore.csv"]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in tables]
    run_cli("contigs", "--fasta", str(fasta), "--predictions", str(tables[0]), "--highest", str(tables[1]),
            "--chunk-size", "300", "--min-viral-fraction", "0.3", "--tsv", str(out / "t.tsv"), "--fasta-out", str(out / "v.fa"))
    assert {k for k, r in rows(out / "t.tsv").items() if r["call"] == "virus"} == {"a", "b_chunk_1", "c"}
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in tables] == before


@pytest.mark.unit
def test_gzipped_input_gives_the_same_outputs(sample):
    out, fasta = sample
    gz = out / "in.fa.gz"
    gz.write_bytes(gzip.compress(fasta.read_bytes()))
    for name, src in (("plain", fasta), ("gz", gz)):
        call_contigs(src, out / "prediction_results.txt", out / "prediction_results_highestscore.csv", 300,
                     out / f"{name}.tsv", out / f"{name}.fa")
    assert (out / "plain.tsv").read_bytes() == (out / "gz.tsv").read_bytes()
    assert (out / "plain.fa").read_bytes() == (out / "gz.fa").read_bytes()


@pytest.mark.process
@pytest.mark.parametrize("case", ["other_fasta", "unknown_chunk", "not_a_table"])
def test_mismatched_inputs_are_one_line_errors_and_leave_nothing(sample, case):
    out, fasta = sample
    predictions, highest, size = out / "prediction_results.txt", out / "prediction_results_highestscore.csv", "300"
    if case == "other_fasta":
        fasta = out / "other.fa"
        fasta.write_text(">a\nACGT\n")
    elif case == "unknown_chunk":  # d (300 bp) has one chunk, never a second
        with open(predictions, "a") as fh:
            fh.write("d_chunk_2F1\tvirus\t0.1\t0.9\n")
    else:
        predictions = out / "prediction_results_highestscore.csv"
    proc = run_cli("contigs", "--fasta", str(fasta), "--predictions", str(predictions), "--highest", str(highest),
                   "--chunk-size", size, "--tsv", str(out / "new" / "t.tsv"), "--fasta-out", str(out / "new" / "v.fa"),
                   check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (out / "new").exists() or list((out / "new").iterdir()) == []


@pytest.mark.unit
def test_the_mean_score_is_numpys_to_the_last_bit():
    """The table's mean comes from sum() for short lists (numpy adds fewer than 8 values one by one too)."""
    from virnucflow.contigs import _mean

    rng = np.random.default_rng(0)
    for n in range(1, 20):
        for _ in range(2000):
            values = [float(np.float32(x)) for x in rng.random(n) * 10.0 ** rng.integers(-40, 1, n)]
            assert _mean(values) == float(np.mean(values)), values
