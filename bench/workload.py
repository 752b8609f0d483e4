"""Benchmark inputs: kept frames of realistic short reads, made by the project's own chunk/translate code."""

import itertools
import random
from pathlib import Path

from virnucflow.chunking import chunk_records
from virnucflow.translation import kept_frames

SENSE = ["".join(c) for c in itertools.product("ACGT", repeat=3) if "".join(c) not in ("TAA", "TAG", "TGA")]


def frames(n, read_length=500, seed=0):
    """n kept frames (id, dna, protein) from coding-like reads of `read_length` bp, chunked at 300 or 500."""
    rng = random.Random(seed)
    chunk = 300 if read_length <= 300 else 500
    out = []
    while len(out) < n:
        seq = "".join(rng.choice(SENSE) for _ in range(read_length // 3 + 1))[:read_length]
        for chunk_id, chunk_seq in chunk_records([(f"read{len(out)}", seq)], chunk):
            out.extend(kept_frames(chunk_id, chunk_seq))
    return out[:n]


def write_parts(out_dir, n_files, per_file, read_length=500, seed=0, workers=1):
    """Write output_<k>.fa / .faa part files as the split step does; return [(fa, faa)]."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = frames(n_files * per_file, read_length, seed) if workers == 1 else \
        many_frames(n_files * per_file, read_length, seed, workers)
    parts = []
    for k in range(n_files):
        fa, faa = out_dir / f"output_{k + 1}.fa", out_dir / f"output_{k + 1}.faa"
        chunk = rows[k * per_file:(k + 1) * per_file]
        fa.write_text("".join(f">{fid}\n{dna}\n" for fid, dna, _ in chunk))
        faa.write_text("".join(f">{fid}\n{prot}\n" for fid, _, prot in chunk))
        parts.append((fa, faa))
    return parts


def _frames_job(job):
    n, read_length, seed, prefix = job
    return [(f"{prefix}{fid}", dna, prot) for fid, dna, prot in frames(n, read_length, seed)]


def many_frames(n, read_length=500, seed=0, workers=None):
    """n kept frames made by `workers` processes (each its own seed; IDs prefixed to stay unique).
    Deterministic for given (n, read_length, seed, workers); not the same frames as `frames`."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = workers or min(16, os.cpu_count() or 1)
    sizes = [n // workers + (i < n % workers) for i in range(workers)]
    jobs = [(size, read_length, seed * 1000 + i, f"s{seed}w{i}_") for i, size in enumerate(sizes) if size]
    if len(jobs) == 1:
        return _frames_job(jobs[0])
    with ProcessPoolExecutor(len(jobs)) as pool:
        return [row for part in pool.map(_frames_job, jobs) for row in part]
