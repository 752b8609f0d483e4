"""What a user sees for each kind of bad input: a one-line error naming the file (and record), no output left."""

import gzip
import random

import pytest

from conftest import run_cli
from virnucflow.fasta import read_fasta

pytestmark = pytest.mark.process

BAD = {
    "empty": b"",
    "duplicate_ids": b">r1\nACGT\n>r1 again\nACGT\n",
    "not_fasta": b"LOCUS  NC_001  5 bp  DNA\nORIGIN\n 1 acgta\n//\n",
    "binary": bytes(range(256)) * 4,
    "text_before_header": b"hello\n>r1\nACGT\n",
    "all_empty_records": b">r1\n>r2\n",
    "digits_in_sequence": b">r1\nACGT 1234\n",
    "protein": b">p1 a protein\nMKPVTLYDVAEYAGVSYQTVSRVVNQASHVSAKTREKVEAAMAELNYIPNRVAQQLAGKQSL\n",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_one_line_error_and_leaves_nothing(tmp_path, case):
    src = tmp_path / f"{case}.fa"
    src.write_bytes(BAD[case])
    out = tmp_path / "out" / "chunked.fa"
    proc = run_cli("chunk", "--size", "300", str(src), str(out), check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and str(src) in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not any(out.parent.glob(".*tmp")), "a temporary file was left behind"


def test_duplicate_error_names_the_record(tmp_path):
    src = tmp_path / "dup.fa"
    src.write_bytes(BAD["duplicate_ids"])
    proc = run_cli("chunk", "--size", "300", str(src), str(tmp_path / "c.fa"), check=False)
    assert "'r1'" in proc.stderr and "line 3" in proc.stderr


def test_missing_file(tmp_path):
    proc = run_cli("chunk", "--size", "500", str(tmp_path / "nope.fa"), str(tmp_path / "c.fa"), check=False)
    assert proc.returncode != 0 and "no such file" in proc.stderr


def test_zero_length_record_is_skipped_with_a_warning(tmp_path):
    src = tmp_path / "z.fa"
    src.write_text(">empty\n>r1\nACGTACGT\n")
    proc = run_cli("chunk", "--size", "300", str(src), str(tmp_path / "c.fa"))
    assert "empty" in proc.stderr and "skipped" in proc.stderr
    assert list(read_fasta(tmp_path / "c.fa")) == [("r1_chunk_1", "ACGTACGT")]


def test_windows_line_ends_lower_case_and_gzip_read_like_plain_fasta(tmp_path):
    plain = tmp_path / "plain.fa"
    plain.write_text(">r1 x\nACGTACGTAC\nGTACGT\n>r2\nacgtnnacgt\n")
    crlf = tmp_path / "crlf.fa"
    crlf.write_bytes(plain.read_bytes().replace(b"\n", b"\r\n"))
    gz = tmp_path / "reads.fasta.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    outs = []
    for src in (plain, crlf, gz):
        out = tmp_path / f"{src.name}.chunks"
        run_cli("chunk", "--size", "300", str(src), str(out))
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    assert list(read_fasta(tmp_path / "plain.fa.chunks")) == [("r1_chunk_1", "ACGTACGTACGTACGT"), ("r2_chunk_1", "acgtnnacgt")]


def test_truncated_gzip_is_an_error(tmp_path):
    gz = tmp_path / "cut.fa.gz"
    rng = random.Random(1)
    body = "".join(rng.choice("ACGT") for _ in range(20000)).encode()
    gz.write_bytes(gzip.compress(b">r1\n" + body)[:2000])
    proc = run_cli("chunk", "--size", "300", str(gz), str(tmp_path / "c.fa"), check=False)
    assert proc.returncode != 0 and str(gz) in proc.stderr and "Traceback" not in proc.stderr


def test_ambiguous_only_sample_gives_empty_frame_files(tmp_path):
    src = tmp_path / "n.fa"
    src.write_text(">n1\n" + "N" * 700 + "\n")
    run_cli("chunk", "--size", "500", str(src), str(tmp_path / "c.fa"))
    run_cli("translate", str(tmp_path / "c.fa"), "--nucleotide", str(tmp_path / "n.fna"), "--protein", str(tmp_path / "p.faa"))
    assert (tmp_path / "n.fna").read_text() == "" and (tmp_path / "p.faa").read_text() == ""
    run_cli("split", "--nucleotide", str(tmp_path / "n.fna"), "--protein", str(tmp_path / "p.faa"), "--out-dir", str(tmp_path / "parts"))
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["output_1.fa", "output_1.faa"]


@pytest.mark.parametrize("content", [None, '{"records": 3}\n', "not json\n"])
def test_a_shard_count_that_cannot_be_read_is_one_line_and_leaves_nothing(tmp_path, content):
    frames = tmp_path / "1.json"
    if content is not None:
        frames.write_text(content)
    proc = run_cli("count-parts", "--frames", str(frames), "--output", str(tmp_path / "parts.json"), check=False)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{frames}: no kept-frame count in it" in errors[0] and "rerun the workflow" in errors[0]
    assert not (tmp_path / "parts.json").exists()
