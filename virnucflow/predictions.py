"""The two prediction tables, written from per-frame rows, without torch (classifier.py says what the
original writes and why each detail is so).

Per part, the classify step writes the part's rows of `prediction_results.txt` (no header); the final
step puts the parts' rows together in input order and computes the per-chunk table over all of them,
so a chunk whose frames fall on both sides of a part boundary is judged as in one piece. Each score
is the shortest text that reads back as the same float32, so the per-chunk maxima computed from the
text equal those computed from the numbers.

Batches: the original scores all frames of a sample in batches of BATCH_SIZE rows that run across
part files. `batch_window` says which parts a part's scoring job reads so that each of its rows is
computed in exactly the batch it had in the one-shot run (a part of 10,000 rows: it and its two
neighbours). Parts smaller than a batch are scored several to a job (`parts_per_job`).
"""

import csv
from pathlib import Path

import numpy as np

from virnucflow.atomic import atomic_path

BATCH_SIZE = 256
RESULTS_NAME = "prediction_results.txt"
HIGHEST_NAME = "prediction_results_highestscore.csv"
RESULTS_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"


def result_row(seqid, p0, p1):
    """One row of prediction_results.txt; p0, p1 are numpy float32 (str gives numpy's shortest text)."""
    label = "virus" if p1 > p0 else "others"
    return f"{seqid}\t{label}\t{str(p0)}\t{str(p1)}\n"


class ChunkMaxima:
    """Per chunk (frame id less its last two characters), the largest score1 and score2 (NaN skipped)."""

    def __init__(self):
        self.best = {}

    def add(self, seqid, p0, p1):
        best = self.best.setdefault(seqid[:-2], [np.nan, np.nan])
        best[0], best[1] = np.fmax(best[0], p0), np.fmax(best[1], p1)

    def write(self, path):
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:
            writer = csv.writer(out, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
            writer.writerow(["Modified_ID", "Is_Virus"])
            for chunk in sorted(self.best):
                max1, max2 = self.best[chunk]
                writer.writerow([chunk, bool(max2 >= max1)])


def write_part_rows(ids, scores, path):
    """A part's rows of prediction_results.txt (no header), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:
        for seqid, (p0, p1) in zip(ids, scores):
            out.write(result_row(seqid, p0, p1))


def assemble(part_tables, out_dir):
    """Both tables of a sample from its parts' rows, in the order given; streams the rows."""
    maxima = ChunkMaxima()
    with atomic_path(Path(out_dir) / RESULTS_NAME) as tmp, open(tmp, "w", newline="") as out:
        out.write(RESULTS_HEADER)
        for path in part_tables:
            with open(path, newline="") as rows:
                for row in rows:
                    out.write(row)
                    seqid, _, p0, p1 = row.rstrip("\n").rsplit("\t", 3)
                    maxima.add(seqid, np.float32(p0), np.float32(p1))
    maxima.write(Path(out_dir) / HIGHEST_NAME)


def parts_per_job(records_per_file):
    """Parts scored by one job: one, unless a part is smaller than a batch (tests, the demo); then as many
    as make a batch, so that tiny parts do not cost a job each."""
    return -(-BATCH_SIZE // records_per_file)


def score_jobs(n_parts, records_per_file):
    """The first part of each scoring job of a sample with `n_parts` parts."""
    return list(range(1, n_parts + 1, parts_per_job(records_per_file)))


def batch_window(part, records_per_file, n_parts):
    """(first, last) part numbers whose rows share a one-shot batch with the rows that the scoring job
    starting at `part` scores (parts from 1).

    Every part but the last holds exactly records_per_file rows, so part k's rows start at
    (k-1) * records_per_file, and the job's batches cover whole multiples of BATCH_SIZE around its rows.
    """
    start = (part - 1) * records_per_file
    stop = min(part - 1 + parts_per_job(records_per_file), n_parts) * records_per_file
    first_row = start // BATCH_SIZE * BATCH_SIZE
    end_row = -(-stop // BATCH_SIZE) * BATCH_SIZE
    return first_row // records_per_file + 1, min(n_parts, (end_row - 1) // records_per_file + 1)
