"""Chunk and translate outputs against an independent transcription of the original's rules (NOTES §1.1-1.4)."""

import math
import random

import pytest

from conftest import run_cli
from virnucflow.chunking import window_starts
from virnucflow.fasta import read_fasta

CODONS = {
    "TTT": "F", "TTC": "F", "TTA": "L", "TTG": "L", "CTT": "L", "CTC": "L", "CTA": "L", "CTG": "L",
    "ATT": "I", "ATC": "I", "ATA": "I", "ATG": "M", "GTT": "V", "GTC": "V", "GTA": "V", "GTG": "V",
    "TCT": "S", "TCC": "S", "TCA": "S", "TCG": "S", "CCT": "P", "CCC": "P", "CCA": "P", "CCG": "P",
    "ACT": "T", "ACC": "T", "ACA": "T", "ACG": "T", "GCT": "A", "GCC": "A", "GCA": "A", "GCG": "A",
    "TAT": "Y", "TAC": "Y", "TAA": "*", "TAG": "*", "CAT": "H", "CAC": "H", "CAA": "Q", "CAG": "Q",
    "AAT": "N", "AAC": "N", "AAA": "K", "AAG": "K", "GAT": "D", "GAC": "D", "GAA": "E", "GAG": "E",
    "TGT": "C", "TGC": "C", "TGA": "*", "TGG": "W", "CGT": "R", "CGC": "R", "CGA": "R", "CGG": "R",
    "AGT": "S", "AGC": "S", "AGA": "R", "AGG": "R", "GGT": "G", "GGC": "G", "GGA": "G", "GGG": "G",
}


def spec_windows(length, cs):
    """NOTES §1.1 read literally, with the shift sum written out per window."""
    n = math.ceil(length / cs)
    surplus = n * cs - length
    lo = math.floor(surplus / n)
    k_up = surplus - lo * (n - 1)
    shifts = [lo + 1] * max(k_up, 0) + [lo] * max(n - 1 - k_up, 0) + [0]
    return [(i * cs - sum(shifts[:i]), min(i * cs - sum(shifts[:i]) + cs, length)) for i in range(n)]


def spec_frames(chunk_id, seq):
    seq = seq.upper()
    rc = "".join({"A": "T", "C": "G", "G": "C", "T": "A"}.get(b, b) for b in reversed(seq))
    out = []
    for tag, strand in (("F", seq), ("R", rc)):
        for k in range(1, 4):
            codons = [strand[i:i + 3] for i in range(k - 1, len(strand) - 2, 3)]
            protein = "".join(CODONS.get(c, "") for c in codons)
            if protein and "*" not in protein:
                out.append((f"{chunk_id}{tag}{k}", strand[k - 1:k - 1 + 3 * len(protein) + 1], protein))
    return out


@pytest.mark.unit
@pytest.mark.parametrize("cs", [300, 500])
def test_window_examples_from_the_notes(cs):
    assert window_starts(501, 500) == [0, 250]
    for length in [1, cs - 1, cs, cs + 1, 2 * cs + 1, 10 * cs + 1, 10 * cs + 37, 57 * cs + 299]:
        ours = [(s, min(s + cs, length)) for s in window_starts(length, cs)]
        assert ours == spec_windows(length, cs), length


@pytest.mark.unit
def test_last_chunk_is_shorter_for_typical_lengths():
    assert [(s, min(s + 500, 501)) for s in window_starts(501, 500)] == [(0, 500), (250, 501)]


def random_dna(rng, n, alphabet="ACGT"):
    return "".join(rng.choice(alphabet) for _ in range(n))


def edge_case_records(cs, seed=7):
    rng = random.Random(seed)
    records = []
    for length in [cs - 1, cs, cs + 1, 2 * cs + 1, 10 * cs + 1]:
        records.append((f"len{length}", random_dna(rng, length)))
    records.append(("nrun", random_dna(rng, 200) + "N" * 150 + random_dna(rng, cs)))
    records.append(("iupac", random_dna(rng, cs + 40, "ACGTRYKMSWBDHVN")))
    records.append(("lower", random_dna(rng, 2 * cs + 1).lower()))
    records.append(("mixed", random_dna(rng, cs, "ACGTacgtn")))
    records.append(("all_n", "N" * (cs + 3)))
    return records


@pytest.mark.process
@pytest.mark.parametrize("cs", [300, 500])
def test_chunk_and_translate_match_the_original_rules(tmp_path, cs):
    records = edge_case_records(cs)
    src = tmp_path / "in.fa"
    src.write_text("".join(f">{rid} some description\n{seq}\n" for rid, seq in records))
    run_cli("chunk", "--size", str(cs), str(src), str(tmp_path / "chunked.fa"))
    run_cli("translate", str(tmp_path / "chunked.fa"),
            "--nucleotide", str(tmp_path / "nuc.fa"), "--protein", str(tmp_path / "prot.faa"))

    expected_chunks = [
        (f"{rid}_chunk_{i + 1}", seq[a:b]) for rid, seq in records for i, (a, b) in enumerate(spec_windows(len(seq), cs))
    ]
    assert list(read_fasta(tmp_path / "chunked.fa")) == expected_chunks
    expected_frames = [f for cid, seq in expected_chunks for f in spec_frames(cid, seq)]
    assert list(read_fasta(tmp_path / "nuc.fa")) == [(fid, nuc) for fid, nuc, _ in expected_frames]
    assert list(read_fasta(tmp_path / "prot.faa")) == [(fid, prot) for fid, _, prot in expected_frames]
    assert not any(fid.startswith("all_n") for fid, _, _ in expected_frames)
    # the original writes each kept frame on one line: these files are byte-identical to it
    assert (tmp_path / "prot.faa").read_text() == "".join(f">{fid}\n{p}\n" for fid, _, p in expected_frames)


@pytest.mark.unit
def test_frame_slice_is_one_base_longer_than_the_codons():
    fid, nuc, prot = spec_frames("c", "ATGGCC" + "AAA" * 5 + "G")[0]
    from virnucflow.translation import kept_frames
    ours = kept_frames("c", "ATGGCC" + "AAA" * 5 + "G")
    assert ours[0] == (fid, nuc, prot)
    assert len(ours[0][1]) == 3 * len(ours[0][2]) + 1
