"""Per-input-sequence calls: one row per record of the input FASTA, and a FASTA of those called viral.

The chunk tables are the original's outputs, read, never changed. A record's chunks are
`<record id>_chunk_<i>` for i = 1..n with n the number of windows of its length (chunking's own
rule), so every chunk maps to exactly one record even when record ids contain `_chunk_`.

- A chunk is called viral when `Is_Virus` is True in `prediction_results_highestscore.csv`.
- A chunk with no kept frame appears in neither table: it is counted, it is not viral, and it
  has no score.
- A chunk's virus score is the largest `score2` (P(virus)) over its kept frames.
- A record is called `virus` when at least one chunk is viral and the viral chunks are at least
  `min_viral_fraction` (default 0.5) of ALL its chunks, scored or not; else `others`.
- max / mean virus score: over the record's scored chunks; `NA` when none was scored.
"""

import csv
import math

import numpy as np

from virnucflow.atomic import atomic_path
from virnucflow.chunking import window_starts
from virnucflow.errors import InputError
from virnucflow.fasta import read_fasta, write_fasta
from virnucflow.input_guard import unchanged_while_read
from virnucflow.progress import Progress

CONTIG_COLUMNS = (
    "sequence_id", "length", "chunks", "chunks_scored", "chunks_viral", "viral_fraction",
    "max_virus_score", "mean_virus_score", "call",
)
DEFAULT_MIN_VIRAL_FRACTION = 0.5


def chunk_ids(record_id, length, chunk_size):
    """The chunk ids that chunking gives a record of this length (none for an empty record)."""
    if length == 0:
        return []
    return [f"{record_id}_chunk_{i}" for i in range(1, len(window_starts(length, chunk_size)) + 1)]


def read_chunk_scores(predictions_txt):
    """{chunk id: largest score2 over its frames} from prediction_results.txt (frame id = chunk id + 2 chars)."""
    scores = {}
    with unchanged_while_read(predictions_txt), open(predictions_txt, newline="") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if header != ["Sequence_ID", "Prediction", "score1", "score2"]:
            raise InputError(f"{predictions_txt}: header is not Sequence_ID/Prediction/score1/score2; pass prediction_results.txt")
        for line_no, line in enumerate(fh, start=2):
            fields = line.rstrip("\n").split("\t")
            try:
                frame_id, score2 = fields[0], float(fields[3])
            except (IndexError, ValueError):
                raise InputError(f"{predictions_txt}: line {line_no} is not a prediction row; rerun the classify step") from None
            chunk = frame_id[:-2]
            best = scores.get(chunk)
            if best is None or score2 > best or math.isnan(best):
                scores[chunk] = score2
    return scores


def read_chunk_calls(highest_csv):
    """{chunk id: Is_Virus} from prediction_results_highestscore.csv (tab-separated)."""
    calls = {}
    with unchanged_while_read(highest_csv), open(highest_csv, newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        if next(reader, None) != ["Modified_ID", "Is_Virus"]:
            raise InputError(f"{highest_csv}: header is not Modified_ID/Is_Virus; pass prediction_results_highestscore.csv")
        for row in reader:
            if len(row) != 2 or row[1] not in ("True", "False"):
                raise InputError(f"{highest_csv}: row {row!r} is not <chunk id> True/False; rerun the classify step")
            calls[row[0]] = row[1] == "True"
    return calls


def _score_text(value):
    return "NA" if value is None else str(np.float32(value))


def _mean(values):
    """numpy's mean of a list of floats, bit for bit: under 8 values numpy adds them one by one as sum()
    does; from 8 on its pairwise sum may differ in the last bit, so numpy sums those."""
    return sum(values) / len(values) if len(values) < 8 else float(np.mean(values))


def contig_row(record_id, length, chunk_size, scores, calls, min_viral_fraction):
    """The table row of one record, in CONTIG_COLUMNS order; the chunks it owns are removed from `scores`
    and `calls`."""
    ids = chunk_ids(record_id, length, chunk_size)
    chunk_scores, viral = [], 0
    for chunk in ids:
        if calls.pop(chunk, False):
            viral += 1
        score = scores.pop(chunk, None)
        if score is not None and score == score:  # NaN is no score
            chunk_scores.append(score)
    fraction = viral / len(ids) if ids else 0.0
    is_virus = viral > 0 and viral >= min_viral_fraction * len(ids)
    return (
        record_id, length, len(ids), len(chunk_scores), viral, f"{fraction:.4f}",
        _score_text(max(chunk_scores) if chunk_scores else None),
        _score_text(_mean(chunk_scores) if chunk_scores else None),
        "virus" if is_virus else "others",
    )


def record_rows(fasta, predictions_txt, highest_csv, chunk_size, min_viral_fraction=DEFAULT_MIN_VIRAL_FRACTION):
    """Yield (row, sequence) for each record of `fasta`, in input order (rows as `contig_row` makes them);
    InputError at the end when a chunk of the tables belongs to no record."""
    if not 0.0 <= min_viral_fraction <= 1.0:
        raise InputError(f"min_viral_fraction {min_viral_fraction} is not between 0 and 1")
    scores = read_chunk_scores(predictions_txt)
    calls = read_chunk_calls(highest_csv)
    unknown = sorted(set(calls) - set(scores))
    if unknown:
        raise InputError(f"{highest_csv}: chunk '{unknown[0]}' has no row in {predictions_txt}; the two tables are from different runs")
    # a FASTA that is not the one the predictions were made from fails below, on the chunks that no record owns
    for record_id, seq in read_fasta(fasta, nucleotide=True):
        yield contig_row(record_id, len(seq), chunk_size, scores, calls, min_viral_fraction), seq
    leftover = sorted(scores) or sorted(calls)
    if leftover:
        raise InputError(
            f"{predictions_txt}: chunk '{leftover[0]}' is not a {chunk_size} bp chunk of any record in {fasta}; "
            "give the FASTA and chunk size that the predictions were made from"
        )


def call_contigs(fasta, predictions_txt, highest_csv, chunk_size, tsv_out, fasta_out,
                 min_viral_fraction=DEFAULT_MIN_VIRAL_FRACTION):
    """Write the per-record table and the FASTA of records called `virus`; returns (records, viral)."""
    progress = Progress("contigs", "records")
    records = viral = 0
    with atomic_path(tsv_out) as tsv_tmp, atomic_path(fasta_out) as fa_tmp:
        with open(tsv_tmp, "w", newline="") as tsv, open(fa_tmp, "w") as fa:
            writer = csv.writer(tsv, delimiter="\t", lineterminator="\n")
            writer.writerow(CONTIG_COLUMNS)
            for row, seq in record_rows(fasta, predictions_txt, highest_csv, chunk_size, min_viral_fraction):
                writer.writerow(row)
                records += 1
                if row[-1] == "virus":
                    write_fasta(fa, [(row[0], seq)], width=60)
                    viral += 1
                progress.tick()
    progress.done()
    return records, viral


def called_records(fasta, predictions_txt, highest_csv, chunk_size, min_viral_fraction=DEFAULT_MIN_VIRAL_FRACTION):
    """The rows of the per-record table as `read_contig_table` reads them back, computed from the input and the
    chunk tables (for the report's score tracks, which need not wait for the table to be written)."""
    return [_typed(dict(zip(CONTIG_COLUMNS, map(str, row))))
            for row, _ in record_rows(fasta, predictions_txt, highest_csv, chunk_size, min_viral_fraction)]


def _typed(row):
    """A row of text values with its numbers typed (scores None for NA)."""
    for key in ("length", "chunks", "chunks_scored", "chunks_viral"):
        row[key] = int(row[key])
    row["viral_fraction"] = float(row["viral_fraction"])
    for key in ("max_virus_score", "mean_virus_score"):
        row[key] = None if row[key] == "NA" else float(row[key])
    return row


def read_contig_table(path):
    """The rows of a virus_contigs.tsv as dicts with typed values (scores None for NA)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if tuple(reader.fieldnames or ()) != CONTIG_COLUMNS:
            raise InputError(f"{path}: not a virus_contigs.tsv (columns {', '.join(CONTIG_COLUMNS)})")
        return [_typed(row) for row in reader]
