"""Input mistakes that used to pass silently: a protein FASTA given as DNA, and a FASTA that changes while read."""

import gzip
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from virnucflow import cli
from virnucflow.classifier import write_predictions
from virnucflow.contigs import call_contigs
from virnucflow.errors import InputError
from virnucflow.fasta import read_fasta

# a protein sequence (after E. coli LacI)
PROTEIN = (
    "MKPVTLYDVAEYAGVSYQTVSRVVNQASHVSAKTREKVEAAMAELNYIPNRVAQQLAGKQSLLIGVATSSLALHAPSQIVAAIKSRADQLGASVVVSMVERSGVEACKAAVHNLLAQRVSGLIINYPLDDQDAIAVEAACTNVPALFLDVSDQTPINSIIFSHEDGTRLGVEHLVALGHQQIAMLAGPLSSVSTRLRLAGWHKYLTRNQIQPIAEREGDWSAMSGFQQTMQMLNEGIVPTAMLVANDQMALGAMRAITESGLRVGADISVVGYDDTEDSSCYIPPLTTIKQDFRLLGQTSVDRLLQLSQGQAVKGNQLLPVSLVKRKTTLAPNTQTASPRALADSLMQLARQVSRLESGQ"
)


def wrap(seq, width=60):
    return "".join(seq[i:i + width] + "\n" for i in range(0, len(seq), width))


def dna(rng, n, alphabet="ACGT"):
    return "".join(rng.choices(alphabet, k=n))


@pytest.mark.unit
def test_protein_fasta_given_as_dna_is_a_one_line_error_and_leaves_nothing(tmp_path, capsys):
    src = tmp_path / "proteins.faa"
    src.write_text(">sp|P03023|LACI_ECOLI Lactose operon repressor\n" + wrap(PROTEIN))
    out = tmp_path / "out" / "chunked.fa"
    assert cli.main(["chunk", "--size", "300", str(src), str(out)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1, errors
    line = errors[0]
    assert str(src) in line and "'sp|P03023|LACI_ECOLI'" in line and "%" in line and "protein" in line
    assert not out.exists() and not any(out.parent.glob(".*tmp"))


@pytest.mark.unit
def test_dna_with_many_n_or_iupac_codes_passes_and_chunks_as_before(tmp_path, capsys):
    rng = random.Random(3)
    n_rich = "".join("N" if rng.random() < 0.6 else rng.choice("ACGTacgt") for _ in range(1000))
    iupac = dna(rng, 500, "ACGTRYKMSWBDHVN")  # about a third A/C/G/T/N, but no protein-only letter
    short_peptide = "MKPVTLYDVAEYAGV"  # under the judged length: not called either way
    src = tmp_path / "in.fa"
    src.write_text(f">nrich\n{wrap(n_rich)}>iupac\n{wrap(iupac)}>tiny\n{short_peptide}\n")
    assert n_rich.upper().count("N") / len(n_rich) > 0.55
    out = tmp_path / "chunked.fa"
    assert cli.main(["chunk", "--size", "500", str(src), str(out)]) == 0
    assert list(read_fasta(out)) == [
        ("nrich_chunk_1", n_rich[:500]), ("nrich_chunk_2", n_rich[500:]),
        ("iupac_chunk_1", iupac),
        ("tiny_chunk_1", short_peptide),
    ]
    # a protein FASTA is fine where protein is expected (the translate step's .faa output)
    faa = tmp_path / "p.faa"
    faa.write_text(f">p\n{PROTEIN}\n")
    assert list(read_fasta(faa)) == [("p", PROTEIN)]


@pytest.mark.unit
def test_contigs_step_rejects_a_protein_fasta_and_writes_nothing(tmp_path):
    src = tmp_path / "proteins.faa"
    src.write_text(f">p1\n{wrap(PROTEIN)}")
    write_predictions(["p1_chunk_1F1"], np.array([[0.2, 0.8]], dtype=np.float32), tmp_path)
    with pytest.raises(InputError, match="protein"):
        call_contigs(src, tmp_path / "prediction_results.txt", tmp_path / "prediction_results_highestscore.csv",
                     300, tmp_path / "c" / "virus_contigs.tsv", tmp_path / "c" / "virus_contigs.fa")
    assert not any((tmp_path / "c").iterdir())


_TO_ACGT = bytes(b"ACGT"[i % 4] for i in range(256))


def _big_fasta(path, records, rng, gz=False):
    """`records` random 1 kb records (random, so that gzip cannot squeeze them to nothing)."""
    seqs = rng.randbytes(1000 * records).translate(_TO_ACGT).decode()
    body = "".join(f">r{i} contig\n{wrap(seqs[i * 1000:(i + 1) * 1000])}" for i in range(records)).encode()
    path.write_bytes(gzip.compress(body, compresslevel=1) if gz else body)


def _cut(path):
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)


def _grow(path):
    with open(path, "ab") as fh:
        fh.write(b">late\nACGTACGT\n")


def _touch(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.unit
@pytest.mark.parametrize("change", [_cut, _grow, _touch], ids=["truncated", "appended", "rewritten_same_size"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_fasta_that_changes_mid_read_is_an_error(tmp_path, change, gz):
    src = tmp_path / ("in.fa.gz" if gz else "in.fa")
    _big_fasta(src, 1000, random.Random(5), gz=gz)
    records = read_fasta(src, nucleotide=True)
    assert next(records)[0] == "r0"
    change(src)
    with pytest.raises(InputError) as err:
        for _ in records:
            pass
    assert str(err.value) == f"{src}: the file changed while being read; rerun when it is complete"


@pytest.mark.unit
def test_an_unchanged_fasta_reads_whole(tmp_path):
    src = tmp_path / "in.fa.gz"
    _big_fasta(src, 50, random.Random(6), gz=True)
    assert [rid for rid, _ in read_fasta(src, nucleotide=True)] == [f"r{i}" for i in range(50)]


@pytest.mark.process
def test_chunk_fails_when_its_input_is_truncated_while_it_runs(tmp_path):
    """The probe's case for real: `virnucflow chunk` on a ~40 MB FASTA, cut to half once it has started writing."""
    rng = random.Random(7)
    block = wrap(dna(rng, 6000))
    src = tmp_path / "big.fa"
    src.write_text("".join(f">r{i}\n{block}" for i in range(6500)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "chunked.fa"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "virnucflow", "chunk", "--size", "300", str(src), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in out_dir.glob(".*tmp")):
            assert proc.poll() is None and time.monotonic() < deadline, "chunk ended before it could be cut"
            time.sleep(0.001)
        _cut(src)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, f"rc {proc.returncode} (0: chunk read the whole file before the cut)\n{stderr}"
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert errors == [f"virnucflow chunk: error: {src}: the file changed while being read; rerun when it is complete"]
    assert "Traceback" not in stderr
    assert list(out_dir.iterdir()) == [], "an output or a temporary file was left behind"
