"""Preparation in shards: a sample cut by records, each shard chunked and translated in a job of its own.

The rule: with B = shard_bytes (the config's shard_mb × 10^6), shards start at the bytes
0, B/8, B/4, B/2, B, 2B, 3B, ... of the file as stored (plain or gzipped), as many as start before its end
(`shard_starts`); so the count n depends only on the file's size, and the workflow knows the shards
before it runs. The first four shards are small (B/8, B/8, B/4, B/2) and together as large as one of the
others: the first part's frames are prepared within a fraction of a shard's time, so that it reaches the
GPU soon whatever the sample's size, while the rest of the sample is cut in shards of B. Record r goes
to the shard whose range holds p_r, the byte where its header line starts in the text that is read (the
last range is open-ended):
- a plain file is read where it lies: each `prepare_shard` job seeks to its own byte range and reads the
  records whose header starts in it, each to its end. No step reads the whole file before the shards
  start.
- a gzipped file cannot be entered mid-stream: `plan_shards` first decompresses it beside the plan
  (a block copy, no parsing), and the starts are scaled by the text's size over the stored size.
Records are never cut, so each is chunked exactly as in one piece; shards hold consecutive records in
input order, and one may be empty (a record longer than a shard). Concatenating the shards' outputs in
shard order gives, byte for byte, what `chunk` and `translate` write for the whole sample.

The checks that need the whole sample (ids unique, some record, one not empty) are made by
`check_records` from the ids and counts that each shard writes, with the one-line errors of `chunk`.
Every step streams: one record, one chunk at a time.
"""

import contextlib
import gzip
import json
import os
import re
import shutil
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from virnucflow.atomic import atomic_path
from virnucflow.chunking import chunk_records
from virnucflow.errors import InputError
from virnucflow.fasta import duplicate_id, gzipped, no_records, read_fasta, write_fasta
from virnucflow.input_guard import check_unchanged_since, signature, unchanged_while_read
from virnucflow.progress import counted
from virnucflow.translation import kept_frames

MB = 1_000_000
PLAN = "plan.json"
TEXT = "input.fa"  # a gzipped sample's text, beside its plan


def shard_bytes(shard_mb):
    """Bytes per shard for the config's `shard_mb` (MB of the input file as stored)."""
    return max(1, round(shard_mb * MB))


def shard_starts(size_bytes, shard_bytes):
    """The byte where each shard of a file of `size_bytes` starts: 0, B/8, B/4, B/2, then every B, as many as
    start before the end; at least one."""
    size, b = int(size_bytes), int(shard_bytes)
    starts = [0]
    for start in [b // 8, b // 4, b // 2] + list(range(b, size, b)):
        if starts[-1] < start < size:
            starts.append(start)
    return starts


def shard_count(size_bytes, shard_bytes):
    """How many shards a file of `size_bytes` (as stored) makes; at least one."""
    return len(shard_starts(size_bytes, shard_bytes))


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


def plan_shards(fasta, out_dir, shard_bytes, n=None):
    """Write out_dir/plan.json, what the `prepare_shard` jobs read (and a gzipped sample's text); return n.

    `n` is the count that the workflow planned (from the file's size when it read the sample sheet): the
    records past shard n go to shard n, so none is lost if the file has grown since. The plan holds the
    signature of the file to read, so that a shard job that finds another file there fails instead of
    mixing two inputs. On any error nothing is left in out_dir's place.
    """
    stored = Path(fasta).stat().st_size
    n = n or shard_count(stored, shard_bytes)
    starts = shard_starts(stored, shard_bytes)[:n]
    starts += [stored] * (n - len(starts))  # a file that shrank since it was planned: empty last shards
    with _atomic_dir(out_dir) as tmp:
        source, read = fasta, fasta
        if gzipped(fasta):
            source, read = Path(out_dir) / TEXT, tmp / TEXT
            _decompress(fasta, read)
            text = read.stat().st_size
            starts = [start * text // max(stored, 1) for start in starts]
        plan = {"fasta": str(fasta), "source": str(source), "shards": n, "starts": starts,
                "signature": signature(read)}
        (tmp / PLAN).write_text(json.dumps(plan) + "\n")
    return n


def _decompress(fasta, target):
    with unchanged_while_read(fasta), gzip.open(fasta, "rb") as raw, open(target, "wb") as out:
        try:
            shutil.copyfileobj(raw, out, 1 << 20)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"{fasta}: cannot be read as (gzipped) FASTA: {exc}") from None


def prepare_shard(plan_dir, shard, chunk_size, chunked, nucleotide, protein, ids, counts):
    """Chunk shard `shard` (from 1) of a planned sample and translate its chunks, streaming.

    Besides the chunked and kept-frame files, writes `ids` (a line per record: its header's line within
    the shard, a tab, its id) and `counts` (JSON), which `check_records` reads. Returns the counts.
    """
    plan = json.loads((Path(plan_dir) / PLAN).read_text())
    source, label, n = plan["source"], plan["fasta"], plan["shards"]
    # a plan written before the first shards were small (a run stopped mid-preparation): shards of one size
    starts = plan.get("starts") or [i * plan["shard_bytes"] for i in range(n)]
    if not 1 <= shard <= n:
        raise InputError(f"{plan_dir}: there is no shard {shard}; the plan has shards 1 to {n}")
    check_unchanged_since(source, plan["signature"])
    byte_range = (starts[shard - 1], starts[shard] if shard < n else None)
    tally = {"fasta": label, "records": 0, "non_empty": 0, "chunks": 0, "kept_frames": 0}
    with contextlib.ExitStack() as stack:
        tmp = [stack.enter_context(atomic_path(p)) for p in (chunked, nucleotide, protein, ids, counts)]
        out_chunks, out_nuc, out_prot, out_ids = (stack.enter_context(open(t, "w")) for t in tmp[:4])
        records = read_fasta(source, nucleotide=True, unique=False, lines=True, byte_range=byte_range,
                             label=label, tally=tally)
        chunks = chunk_records(_noted(records, out_ids, tally), chunk_size)
        for chunk_id, seq in counted(chunks, "prepare", "chunks written"):
            write_fasta(out_chunks, [(chunk_id, seq)], width=60)
            tally["chunks"] += 1
            for frame_id, frame_nucleotide, frame_protein in kept_frames(chunk_id, seq):
                write_fasta(out_nuc, [(frame_id, frame_nucleotide)])
                write_fasta(out_prot, [(frame_id, frame_protein)])
                tally["kept_frames"] += 1
        tmp[4].write_text(json.dumps(tally) + "\n")
    return tally


def _noted(records, out_ids, tally):
    """The records as (id, sequence), each written to the ids file and counted as it passes."""
    for record_id, seq, line in records:
        out_ids.write(f"{line}\t{record_id}\n")
        tally["records"] += 1
        tally["non_empty"] += bool(seq)
        yield record_id, seq


def check_records(counts, ids):
    """The checks of the whole sample from its shards' `counts` and `ids` files (in shard order): each id
    once, some record, one not empty; errors as `chunk` gives them, with the file's line numbers.
    Returns the shards' counts."""
    counts = [json.loads(Path(p).read_text()) for p in counts]
    label, seen = counts[0]["fasta"], set()
    for path in ids:
        with open(path) as handle:
            shard_ids = _ID.findall(handle.read())
        before = len(seen)
        seen.update(shard_ids)
        if len(seen) - before != len(shard_ids):
            _raise_first_duplicate(label, counts, ids)
    if not sum(shard["records"] for shard in counts):
        raise InputError(no_records(label))
    if not sum(shard["non_empty"] for shard in counts):
        raise InputError(f"{label}: every record is empty; nothing to classify")
    return counts


_ID = re.compile(r"\t(.*)")  # an ids row: the header's line in its shard, a tab, the id


def _raise_first_duplicate(label, counts, ids):
    """The error for the sample's first repeated id, with its line in the file (the slow path)."""
    seen, lines_before = set(), 0
    for shard, path in zip(counts, ids, strict=True):
        with open(path) as handle:
            for row in handle:
                line, record_id = row.rstrip("\n").split("\t", 1)
                if record_id in seen:
                    raise InputError(duplicate_id(label, record_id, lines_before + int(line)))
                seen.add(record_id)
        lines_before += shard["lines"]


def check_and_concatenate(counts, ids, files):
    """`check_records`, and meanwhile each (sources, target) of `files` concatenated in a thread of its
    own (the copies wait on the disk, not on Python); each target appears only if the checks pass and its
    copy succeeds, and none does if any fails. Returns the shards' counts."""
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(target)) for _, target in files]
        with ThreadPoolExecutor(max_workers=len(files)) as pool:
            copies = [pool.submit(_copy, sources, tmp) for (sources, _), tmp in zip(files, tmps, strict=True)]
            checked = check_records(counts, ids)
        for copy in copies:
            copy.result()
    return checked


def concatenate(sources, target):
    """Write the files `sources` one after another to `target`, atomically, in blocks."""
    with atomic_path(target) as tmp:
        _copy(sources, tmp)


def _copy(sources, target):
    with open(target, "wb") as out:
        for source in sources:
            with open(source, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
