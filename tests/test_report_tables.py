"""The report's tables as pages: the per-record calls (viral records first, cut to a limit, escaped) and the
run statistics, with the very cells of their TSVs."""

import csv
import html
import re

import pytest

from virnucflow.contigs import CONTIG_COLUMNS
from virnucflow.errors import InputError
from virnucflow.report_tables import write_contig_page, write_stats_page

pytestmark = pytest.mark.unit


def cells(page):
    """The page's rows as lists of cell texts, header first."""
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", page, flags=re.S)
    return [[html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S)] for row in rows]


def contig_tsv(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(CONTIG_COLUMNS)
        writer.writerows(rows)


ROWS = [
    ["r1", "500", "1", "1", "0", "0.0000", "0.4903821", "0.4903821", "others"],
    ["r2<b>&", "1200", "3", "2", "2", "0.6667", "0.91", "0.8", "virus"],
    ["r3", "250", "1", "0", "0", "0.0000", "NA", "NA", "others"],
    ["r4", "900", "2", "2", "2", "1.0000", "0.99", "0.9", "virus"],
]


def test_the_per_record_page_shows_every_cell_viral_records_first(tmp_path):
    contig_tsv(tmp_path / "virus_contigs.tsv", ROWS)
    assert write_contig_page("s1", tmp_path / "virus_contigs.tsv", tmp_path / "page.html") == 4
    page = (tmp_path / "page.html").read_text()
    table = cells(page)
    assert table[0] == list(CONTIG_COLUMNS)
    assert [r[0] for r in table[1:]] == ["r4", "r2<b>&", "r1", "r3"]  # viral first, then by score
    assert sorted(table[1:]) == sorted(ROWS)  # the TSV's very cells
    assert "r2&lt;b&gt;&amp;" in page and "<b>" not in page  # a record id is text, never markup
    assert "4 records, 2 called virus" in page and "Only the first" not in page
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_long_per_record_table_is_cut_and_says_so(tmp_path):
    contig_tsv(tmp_path / "virus_contigs.tsv", ROWS)
    write_contig_page("s1", tmp_path / "virus_contigs.tsv", tmp_path / "page.html", max_rows=2)
    page = (tmp_path / "page.html").read_text()
    assert [r[0] for r in cells(page)[1:]] == ["r4", "r2<b>&"]
    assert "Only the first 2 are shown here; every record is in virus_contigs.tsv" in page


def test_a_table_that_is_not_virus_contigs_is_refused(tmp_path):
    (tmp_path / "other.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match="not the expected table"):
        write_contig_page("s1", tmp_path / "other.tsv", tmp_path / "page.html")
    assert not (tmp_path / "page.html").exists()


def test_the_stats_page_has_the_cells_of_run_stats_tsv(tmp_path):
    from test_report_plots import sample
    from virnucflow.report_data import STATS_COLUMNS, run_stats, write_run_stats

    samples = [sample("s1", 5, 1), sample("s2", 3, 2, scored=False)]
    write_run_stats(samples, tmp_path / "run_stats.tsv")
    write_stats_page(STATS_COLUMNS, [run_stats(s) for s in samples], tmp_path / "run_stats.html")
    with open(tmp_path / "run_stats.tsv", newline="") as fh:
        tsv = list(csv.reader(fh, delimiter="\t"))
    assert cells((tmp_path / "run_stats.html").read_text()) == tsv
