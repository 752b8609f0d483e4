"""The report's tables as small self-contained HTML pages, so that Snakemake's report shows them in
its own page (it shows `text/html` items in a frame, but offers a TSV only as a download).

The TSVs stay as they are, for machines; a page shows the same cells, as text, escaped. A long
per-record table is cut to its first `MAX_ROWS` rows after sorting, and the page says so.
"""

import csv
import html
from pathlib import Path

from virnucflow.atomic import atomic_path
from virnucflow.errors import InputError

MAX_ROWS = 1000

_STYLE = """
body { font-family: system-ui, sans-serif; font-size: 13px; margin: 12px; color: #222; }
h1 { font-size: 16px; margin: 0 0 4px 0; }
p { margin: 4px 0 10px 0; color: #444; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 8px; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
tr.virus td { background: #fbe9e7; }
"""


def _is_number(text):
    if text == "NA":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def table_html(title, columns, rows, note="", row_class=None):
    """An HTML page of `rows` (dicts of text) under `columns`; numeric cells are right-aligned."""
    numeric = {c for c in columns if rows and all(_is_number(r[c]) for r in rows)}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        css = f' class="{row_class(row)}"' if row_class and row_class(row) else ""
        cells = "".join(
            f'<td class="num">{html.escape(row[c])}</td>' if c in numeric else f"<td>{html.escape(row[c])}</td>"
            for c in columns
        )
        body.append(f"<tr{css}>{cells}</tr>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(note)}</p>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>\n</body></html>\n"
    )


def write_page(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _read_tsv(path, columns):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if tuple(reader.fieldnames or ()) != tuple(columns):
            raise InputError(f"{path}: not the expected table (columns {', '.join(columns)})")
        return list(reader)


def _score(text):
    return -1.0 if text == "NA" else float(text)


def contig_rows(rows):
    """Records called virus first, then the most viral chunks, the highest score, the longest."""
    return sorted(rows, key=lambda r: (r["call"] != "virus", -int(r["chunks_viral"]), -_score(r["max_virus_score"]),
                                       -int(r["length"]), r["sequence_id"]))


def write_contig_page(sample, tsv, output, max_rows=MAX_ROWS):
    """The page of one sample's virus_contigs.tsv: up to `max_rows` records, viral ones first."""
    from virnucflow.contigs import CONTIG_COLUMNS  # numpy: only here, so that the CLI starts fast

    rows = contig_rows(_read_tsv(tsv, CONTIG_COLUMNS))
    viral = sum(r["call"] == "virus" for r in rows)
    shown = rows[:max_rows]
    note = (f"{len(rows):,} records, {viral:,} called virus. Sorted: records called virus first, then by viral "
            "chunks, highest virus score and length.")
    if len(shown) < len(rows):
        note += f" Only the first {len(shown):,} are shown here; every record is in {Path(tsv).name}."
    title = f"Per-record calls of sample {sample}"
    write_page(output, table_html(title, CONTIG_COLUMNS, shown, note,
                                  row_class=lambda r: "virus" if r["call"] == "virus" else ""))
    return len(shown)


def write_stats_page(columns, rows, output):
    """The page of the run statistics: one row per sample, the same cells as run_stats.tsv."""
    rows = [{c: str(r[c]) for c in columns} for r in rows]
    note = ("Per sample: the work done, and the embedding jobs' time and largest resident memory from their "
            "Snakemake benchmarks (NA: no benchmark). The same table is run_stats.tsv.")
    write_page(output, table_html("Run statistics", columns, rows, note))
