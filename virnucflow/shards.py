"""Preparation in shards: a sample cut by records, each shard chunked and translated on its own.

The rule: a sample whose file as stored (plain or gzipped) has S bytes makes
n = max(1, ceil(S / shard_bytes)) shards (shard_bytes = the config's shard_mb × 10^6). Record r goes to shard min(n, 1 + floor(p_r / shard_bytes)),
p_r being where its header starts in the file as stored (for a gzipped file: compressed bytes read
so far, to within the reader's read-ahead). Records are never cut, so each is chunked exactly as in
one piece; shards hold consecutive records in input order, and one may be empty (a record longer
than a shard). n depends only on the file's size, so the workflow knows the shards before it runs.

Every step streams: one record, one chunk at a time. Concatenating the shards' outputs in shard
order gives, byte for byte, what `chunk` and `translate` write for the whole sample.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from virnucflow.atomic import atomic_path
from virnucflow.chunking import chunk_records
from virnucflow.errors import InputError
from virnucflow.fasta import read_fasta, write_fasta
from virnucflow.progress import counted
from virnucflow.translation import kept_frames

MB = 1_000_000


def shard_bytes(shard_mb):
    """Bytes per shard for the config's `shard_mb` (MB of the input file as stored)."""
    return max(1, round(shard_mb * MB))


def shard_count(size_bytes, shard_bytes):
    """How many shards a file of `size_bytes` (as stored) makes; at least one."""
    return max(1, -(-int(size_bytes) // int(shard_bytes)))


def shard_name(i):
    return f"shard_{i}.fa"


@contextlib.contextmanager
def _atomic_dir(target):
    """A fresh directory beside `target` that becomes `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_shards(fasta, out_dir, shard_bytes, n=None):
    """Cut `fasta` into out_dir/shard_<i>.fa, i = 1..n (the rule above); return n.

    `n` is the count that the workflow planned (from the file's size when it read the sample sheet):
    the records past shard n go to shard n, so none is lost if the file has grown since.
    The input is read once, with every check of read_fasta (a bad record is one line naming it);
    on any error nothing is left in out_dir's place.
    """
    n = n or shard_count(Path(fasta).stat().st_size, shard_bytes)
    with _atomic_dir(out_dir) as tmp, contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(tmp / shard_name(i), "w")) for i in range(1, n + 1)]
        non_empty = 0
        records = read_fasta(fasta, nucleotide=True, offsets=True)
        for record_id, seq, offset in counted(records, "shard", "records read"):
            write_fasta(handles[min(n - 1, offset // shard_bytes)], [(record_id, seq)])
            non_empty += bool(seq)
        if non_empty == 0:
            raise InputError(f"{fasta}: every record is empty; nothing to classify")
    return n


def prepare_shard(shard_fa, chunk_size, chunked, nucleotide, protein):
    """Chunk one shard and translate its chunks, streaming; returns (chunks, kept frames)."""
    n_chunks = n_kept = 0
    with contextlib.ExitStack() as stack:
        tmp = [stack.enter_context(atomic_path(p)) for p in (chunked, nucleotide, protein)]
        out_chunks, out_nuc, out_prot = (stack.enter_context(open(t, "w")) for t in tmp)
        records = read_fasta(shard_fa, unique=False) if Path(shard_fa).stat().st_size else iter(())
        for chunk_id, seq in counted(chunk_records(records, chunk_size), "prepare", "chunks written"):
            write_fasta(out_chunks, [(chunk_id, seq)], width=60)
            n_chunks += 1
            for frame_id, frame_nucleotide, frame_protein in kept_frames(chunk_id, seq):
                write_fasta(out_nuc, [(frame_id, frame_nucleotide)])
                write_fasta(out_prot, [(frame_id, frame_protein)])
                n_kept += 1
    return n_chunks, n_kept


def concatenate(sources, target):
    """Write the files `sources` one after another to `target`, atomically, in blocks."""
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        for source in sources:
            with open(source, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
