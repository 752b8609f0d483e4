"""Splitting the kept frames into per-file parts of N records, as the original `split_fasta_file` does.

Part k (from 1) holds records (k-1)*N+1 .. k*N; nucleotide and protein parts hold the same ids in
the same order. Unlike the original, a sample with no kept frame still gets one empty part, so the
rest of the pipeline runs and writes header-only results instead of stopping. The split streams:
it holds one part's records at a time.
"""

from itertools import islice, zip_longest
from pathlib import Path

from virnucflow.atomic import atomic_path
from virnucflow.errors import InputError
from virnucflow.fasta import read_fasta, write_fasta


def _records_or_none(path):
    """Records of a FASTA that may legitimately be empty (our own translate output), streamed."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        return iter(())
    return read_fasta(path, unique=False)  # ids were checked in the input; a set of all would grow


def part_count(n_records, records_per_file):
    """How many parts `n_records` kept frames make (at least one)."""
    return max(1, -(-n_records // records_per_file))


def count_parts(protein_faa, records_per_file):
    """The number of parts that split_parts will write, from the headers of the kept frames' proteins."""
    with open(protein_faa) as handle:
        n_records = sum(1 for line in handle if line.startswith(">"))
    return part_count(n_records, records_per_file)


def split_parts(nucleotide_fa, protein_faa, out_dir, records_per_file=10_000):
    """Write out_dir/output_<k>.fa and .faa; return the number of parts.

    Streams: one part's records at a time are held, and each part is written (atomically) as soon as
    it is complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = zip_longest(_records_or_none(nucleotide_fa), _records_or_none(protein_faa))
    n_parts = 0
    while True:
        batch = list(islice(pairs, records_per_file))
        if not batch and n_parts:
            return n_parts
        if any(nuc is None or prot is None or nuc[0] != prot[0] for nuc, prot in batch):
            raise InputError(
                f"{nucleotide_fa} and {protein_faa} do not hold the same ids in the same order; rerun translate"
            )
        n_parts += 1
        for index, suffix in ((0, ".fa"), (1, ".faa")):
            with atomic_path(out_dir / f"output_{n_parts}{suffix}") as tmp, open(tmp, "w") as fh:
                write_fasta(fh, (pair[index] for pair in batch))
