"""What the report shows of a sample: chunk scores and calls, contig rows, and run statistics.

Everything is read from a finished sample's files: `prediction_results.txt`,
`prediction_results_highestscore.csv`, `virus_contigs.tsv`, `parts.json` (else the `merged/`
parts are counted), and the embedding jobs' Snakemake benchmark files (`benchmarks/<sample>/embed/*.tsv`) where they exist.
"""

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from virnucflow.atomic import atomic_path
from virnucflow.contigs import read_chunk_calls, read_chunk_scores, read_contig_table
from virnucflow.errors import InputError

# the classifier's table names, repeated here so that the report never imports torch
RESULTS_NAME = "prediction_results.txt"
HIGHEST_NAME = "prediction_results_highestscore.csv"
CONTIGS_NAME = "virus_contigs.tsv"
STATS_COLUMNS = (
    "sample", "records", "bases", "chunks", "chunks_scored", "kept_frames", "chunks_viral",
    "chunk_viral_fraction", "records_virus", "parts", "embed_seconds", "embed_max_rss_mb",
)


@dataclass
class SampleData:
    name: str
    chunk_scores: dict  # chunk id -> largest P(virus) over its kept frames
    chunk_calls: dict  # chunk id -> Is_Virus
    contigs: list  # rows of virus_contigs.tsv, typed
    kept_frames: int
    parts: int
    embed_seconds: list = field(default_factory=list)  # wall-clock seconds per embedding job
    embed_rss_mb: list = field(default_factory=list)


def _count_rows(path):
    with open(path) as fh:
        return max(sum(1 for _ in fh) - 1, 0)


def _float_or_none(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_benchmarks(directory):
    """(seconds, max RSS MB) lists from Snakemake benchmark files in `directory` (missing: empty)."""
    seconds, rss = [], []
    for path in sorted(Path(directory).glob("*.tsv")) if directory and Path(directory).is_dir() else []:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                s, r = _float_or_none(row.get("s")), _float_or_none(row.get("max_rss"))
                if s is not None:
                    seconds.append(s)
                if r is not None:
                    rss.append(r)
    return seconds, rss


def count_parts(results_dir):
    """The sample's number of parts: from `parts.json` (count-parts), else its merged parts."""
    try:
        return int(json.loads((Path(results_dir) / "parts.json").read_text())["parts"])
    except (OSError, ValueError, KeyError, TypeError):
        return len(list((Path(results_dir) / "merged").glob("output_*_merged.pt")))


def load_sample(name, results_dir, benchmarks_dir=None, contigs=None):
    """Read one finished sample; a missing file is a one-line InputError. `contigs`: its per-record rows
    where the caller has them (contigs.called_records), instead of reading virus_contigs.tsv."""
    results_dir = Path(results_dir)
    names = (RESULTS_NAME, HIGHEST_NAME) + (() if contigs is not None else (CONTIGS_NAME,))
    paths = {n: results_dir / n for n in names}
    for path in paths.values():
        if not path.is_file():
            raise InputError(f"{path}: missing; sample '{name}' has not finished (run the workflow first)")
    seconds, rss = read_benchmarks(Path(benchmarks_dir) / name / "embed" if benchmarks_dir else None)
    return SampleData(
        name=name,
        chunk_scores=read_chunk_scores(paths[RESULTS_NAME]),
        chunk_calls=read_chunk_calls(paths[HIGHEST_NAME]),
        contigs=read_contig_table(paths[CONTIGS_NAME]) if contigs is None else contigs,
        kept_frames=_count_rows(paths[RESULTS_NAME]),
        parts=count_parts(results_dir),
        embed_seconds=seconds,
        embed_rss_mb=rss,
    )


def run_stats(sample):
    """One row of the run statistics table."""
    chunks = sum(r["chunks"] for r in sample.contigs)
    viral = sum(sample.chunk_calls.values())
    return {
        "sample": sample.name,
        "records": len(sample.contigs),
        "bases": sum(r["length"] for r in sample.contigs),
        "chunks": chunks,
        "chunks_scored": len(sample.chunk_scores),
        "kept_frames": sample.kept_frames,
        "chunks_viral": viral,
        "chunk_viral_fraction": f"{viral / chunks:.4f}" if chunks else "0.0000",
        "records_virus": sum(r["call"] == "virus" for r in sample.contigs),
        "parts": sample.parts,
        "embed_seconds": f"{sum(sample.embed_seconds):.1f}" if sample.embed_seconds else "NA",
        "embed_max_rss_mb": f"{max(sample.embed_rss_mb):.0f}" if sample.embed_rss_mb else "NA",
    }


def write_run_stats(samples, path):
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, STATS_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        for sample in samples:
            writer.writerow(run_stats(sample))
