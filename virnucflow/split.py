"""Splitting the kept frames into per-file parts of N records, as the original `split_fasta_file` does.

Part k (from 1) holds records (k-1)*N+1 .. k*N; nucleotide and protein parts hold the same ids in
the same order. Unlike the original, a sample with no kept frame still gets one empty part, so the
rest of the pipeline runs and writes header-only results instead of stopping. Both ways stream and hold
one part's records at a time.

The kept-frame files are the workflow's own, written by `write_fasta` unwrapped: a header line and one
sequence line per record. So a part is the next 2N lines of each file, copied as they are, without
parsing (byte for byte what parsing and writing the records gave); a file not in that form is an error.

`split_parts` cuts every part from one pair of files (the `split` command, for a sample's files).
The workflow cuts each part on its own from the shards' files (`split_part`), so that a part goes to
the GPU as soon as the shards holding its frames are prepared: `part_span` says which shards hold part k
from the shards' kept-frame counts, and `parts_completed_by` which parts end in the last shard of those
known so far. The part files are the same bytes either way."""

from itertools import islice, repeat
from pathlib import Path

from virnucflow.atomic import atomic_path
from virnucflow.errors import InputError


def part_count(n_records, records_per_file):
    """How many parts `n_records` kept frames make (at least one)."""
    return max(1, -(-n_records // records_per_file))


def count_parts(protein_faa, records_per_file):
    """The number of parts that split_parts will write, from the lines of the kept frames' proteins (two
    per record), counted in blocks."""
    with open(protein_faa, "rb") as handle:
        lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
    return part_count(lines // 2, records_per_file)


def split_parts(nucleotide_fa, protein_faa, out_dir, records_per_file=10_000):
    """Write out_dir/output_<k>.fa and .faa; return the number of parts.

    Streams: one part's records at a time are held, and each part is written (atomically) as soon as
    it is complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_parts = 0
    with open(nucleotide_fa, "rb") as nucleotide, open(protein_faa, "rb") as protein:
        while True:
            batch = [list(islice(handle, 2 * records_per_file)) for handle in (nucleotide, protein)]
            if not batch[0] and not batch[1] and n_parts:
                return n_parts
            _check_pairs(nucleotide_fa, protein_faa, *batch)
            n_parts += 1
            _write_part(batch, (out_dir / f"output_{n_parts}.fa", out_dir / f"output_{n_parts}.faa"))


def _write_part(batch, targets):
    """A part's nucleotide and protein lines, each to its file, atomically."""
    for lines, target in zip(batch, targets, strict=True):
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            fh.writelines(lines)


def _check_pairs(nucleotide_fa, protein_faa, nucleotide, protein):
    """InputError unless both batches of lines are records of a header and a sequence line each, with the
    same headers in the same order."""
    for lines in (nucleotide, protein):
        if (len(lines) % 2 or (lines and not lines[-1].endswith(b"\n"))
                or not all(map(bytes.startswith, lines[::2], repeat(b">"))) or b">" in b"".join(lines[1::2])):
            raise InputError(f"{nucleotide_fa} and {protein_faa} are not kept-frame files (a header line and a "
                             "sequence line per record); rerun translate")
    if nucleotide[::2] != protein[::2]:
        raise InputError(
            f"{nucleotide_fa} and {protein_faa} do not hold the same ids in the same order; rerun translate"
        )


def part_span(frame_counts, k, records_per_file):
    """(first, last, skip) for part k (from 1): the shards (from 1) that hold its frames, in the order of the
    sample, and how many frames of shard `first` come before it. `frame_counts` are the kept frames of the
    shards in order: all of them, or those up to the one where part k ends. A sample without kept frames
    has one empty part (from shard 1 on); any other part past the frames given raises ValueError."""
    start, end = (k - 1) * records_per_file, k * records_per_file
    before, first = 0, None
    for shard, count in enumerate(frame_counts, 1):
        if first is None and start < before + count:
            first, skip = shard, start - before
        before += count
        if first is not None and end <= before:
            return first, shard, skip
    if first is None and start == 0:
        return 1, len(frame_counts), 0  # no kept frame at all: the one empty part
    if first is None:
        raise ValueError(f"part {k} starts past the {before} frames of the shards given")
    return first, len(frame_counts), skip


# The workflow cuts the parts that end in each of a sample's first EARLY_SHARDS shards as soon as those
# shards are prepared; the rest once every shard is counted. A fixed number bounds how often Snakemake
# re-evaluates the job that asks for them (once per shard of these); 32 shards of the default 16 MB give
# the GPU far more work than the other shards take to prepare (docs/architecture.md).
EARLY_SHARDS = 32


def parts_completed_by(frame_counts, records_per_file):
    """The parts that end in the last of the shards whose counts are given (in order from shard 1): whole
    once those shards are prepared, whatever the shards after them hold."""
    before = sum(frame_counts[:-1])
    total = before + frame_counts[-1]
    return list(range(before // records_per_file + 1, total // records_per_file + 1))


def split_part(nucleotide_shards, protein_shards, skip, out_nucleotide, out_protein, records_per_file=10_000):
    """Write one part from the shards that hold it: the `records_per_file` records (or fewer, at the end of
    the sample) that follow the first `skip` records of the first shard. Streams, and writes atomically."""
    def lines(paths):
        for path in paths:
            with open(path, "rb") as handle:
                yield from handle

    batch = []
    for sources in (nucleotide_shards, protein_shards):
        stream = lines(sources)
        for _ in islice(stream, 2 * skip):
            pass
        batch.append(list(islice(stream, 2 * records_per_file)))
    _check_pairs(nucleotide_shards[0], protein_shards[0], *batch)
    _write_part(batch, (out_nucleotide, out_protein))
    return len(batch[0]) // 2
