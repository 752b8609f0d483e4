"""FASTA reading with the checks the original never made, and FASTA writing.

Parsing follows Biopython's FASTA parser, which the original used: the record id is the header
up to the first white space; trailing white space, spaces and carriage returns are removed from
sequence lines. Gzipped input is recognised by its magic bytes, not by its name. Every file is
read under `unchanged_while_read`, so a file that changes while it is read is an error.

Nucleotide check (`nucleotide=True`, for the user's DNA input). IUPAC nucleotide codes overlap
protein letters (A C G T N R Y K M S W B D H V are all amino-acid letters too), so no letter set alone
tells the two apart. A record of at least MIN_JUDGED_LETTERS letters is called non-nucleotide,
and is an error, when both hold:
- fewer than MIN_NUCLEOTIDE_FRACTION (half) of its letters are A C G T U N (either case). Proteins
  have about a quarter (A, C, G, T, N residues); DNA, however many Ns it has, has nearly all.
- it holds a letter that no nucleotide code uses (E F I J L O P Q Z). About a third of the residues
  of a typical protein are one of these. This second condition keeps heavily ambiguous DNA
  (an even mix of the 15 IUPAC codes is a third A C G T N) from being rejected.
X counts for neither, since some tools mask DNA with it. Shorter records are not judged: too few
letters to tell. It is an error, not a warning: a protein FASTA given as the DNA input is a
mistake, and chunking and translating it gives a meaningless result.
"""

import gzip
import io
import re
from pathlib import Path

from virnucflow.errors import InputError
from virnucflow.input_guard import unchanged_while_read

_GZIP_MAGIC = b"\x1f\x8b"
_SEQUENCE_CHARS = re.compile(r"[A-Za-z*.\-]*")
_NUCLEOTIDE_LETTERS = "ACGTUNacgtun"
_PROTEIN_ONLY_LETTERS = frozenset("EFIJLOPQZ")
MIN_NUCLEOTIDE_FRACTION = 0.5
MIN_JUDGED_LETTERS = 20


def gzipped(path):
    """Whether `path` is a gzipped file (by its magic bytes); InputError when it is no file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path in your sample sheet or command")
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _open_text(path, position=0):
    """The file as text from byte `position` (plain files only), line ends kept as they are in the file
    (so that a line's length is its size in bytes) but recognised as universal newlines."""
    if gzipped(path):
        raw = gzip.open(path, "rb")
    else:
        raw = open(path, "rb")
        raw.seek(position)
    return io.TextIOWrapper(raw, encoding="ascii", errors="strict", newline="")


def lines_before(path, position):
    """How many lines of a plain file start before byte `position` (to number a byte range's lines)."""
    count = at = 0
    with open(path, encoding="latin-1", newline="") as fh:
        for line in fh:
            if at >= position:
                break
            count, at = count + 1, at + len(line)
    return count


def read_fasta(path, nucleotide=False, unique=True, lines=False, byte_range=None, label=None, tally=None):
    """Yield (record_id, sequence) for each record, raising InputError on anything that is not FASTA.

    Records of length zero are yielded (the caller decides); duplicate ids are an error because
    every downstream step keys on them. With `nucleotide`, a record that looks like protein is an
    error (see the module docstring). The last record is yielded only after the whole file has
    been read and found unchanged, so a consumer that stops at the last record still gets the check.
    `unique=False` skips the duplicate check, whose set of ids grows with the file: for the workflow's
    own files, whose ids were checked in the input, and for byte ranges (the caller checks the whole file).
    With `lines`, yield (record_id, sequence, line): the line number of its header.

    `byte_range` (start, end), of a plain file: only the records whose header line starts at a byte in
    [start, end) (end None: to the end of the file), each read to its end. Yielded line numbers then
    count from the first line that starts in the range (1), `tally["lines"]` is set to how many lines start
    in it, and errors give the file's own line numbers. `label` is the name errors give the file.
    """
    check = _check_nucleotide if nucleotide else _no_check
    label = label or path
    seen = set() if unique else None
    start, end = byte_range or (0, None)
    base = _LineBase(path, start)
    record_id, seq_lines, line_no, header_line, owned = None, [], 0, 0, 0
    position = max(0, start - 1)
    with unchanged_while_read(path):
        try:
            with _open_text(path, position) as fh:
                if start:  # the line holding byte start - 1 starts before the range: skip it
                    position += len(fh.readline())
                for line_no, line in enumerate(fh, start=1):
                    at, position = position, position + len(line)
                    if end is None or at < end:
                        owned = line_no
                    elif line.startswith(">"):  # the next range's first record
                        break
                    if "\x00" in line:
                        raise InputError(
                            f"{label}: line {base(line_no)} holds binary data; give a FASTA file (plain or gzipped)"
                        )
                    if line.startswith(">"):
                        if record_id is not None:
                            yield _with_line(check(label, record_id, "".join(seq_lines)), header_line, lines)
                        record_id = _record_id(label, line_no, line, seen, base)
                        seq_lines, header_line = [], line_no
                    elif record_id is None:
                        if line.strip() and not start:
                            raise InputError(
                                f"{label}: line {base(line_no)} comes before any '>' header; this is not FASTA"
                            )
                    else:
                        chunk = line.rstrip().replace(" ", "")
                        if not _SEQUENCE_CHARS.fullmatch(chunk):
                            bad = next(c for c in chunk if not _SEQUENCE_CHARS.fullmatch(c))
                            raise InputError(
                                f"{label}: record '{record_id}' line {base(line_no)} has the character {bad!r}, "
                                "which is not a nucleotide or IUPAC code; fix or remove the record"
                            )
                        seq_lines.append(chunk)
        except UnicodeDecodeError as exc:
            after = base(line_no)
            where = f"after line {after}" if after else "at its start"
            raise InputError(
                f"{label}: non-text bytes {where} ({exc.reason}); give a FASTA file (plain or gzipped)"
            ) from None
        except (EOFError, gzip.BadGzipFile, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise InputError(f"{label}: cannot be read as (gzipped) FASTA: {exc}") from None
        if tally is not None:
            tally["lines"] = owned
        if record_id is None:
            if byte_range:
                return
            raise InputError(no_records(label))
        last = _with_line(check(label, record_id, "".join(seq_lines)), header_line, lines)
    yield last


class _LineBase:
    """Relative line number -> the file's: counts the lines before the range only when an error asks."""

    def __init__(self, path, start):
        self.path, self.start, self.before = path, start, None if start else 0

    def __call__(self, line_no):
        if self.before is None:
            self.before = lines_before(self.path, self.start)
        return self.before + line_no


def _with_line(record, line, lines):
    return (*record, line) if lines else record


def no_records(path):
    return f"{path}: holds no FASTA records; check that it is the right file"


def duplicate_id(path, record_id, line_no):
    return f"{path}: record id '{record_id}' (line {line_no}) appears twice; make the ids unique"


def _no_check(path, record_id, seq):
    return record_id, seq


_DROP_NUCLEOTIDE_LETTERS = str.maketrans("", "", _NUCLEOTIDE_LETTERS)


def _check_nucleotide(path, record_id, seq):
    """(record_id, seq), or InputError when the record looks like protein (rule: module docstring)."""
    rest = seq.translate(_DROP_NUCLEOTIDE_LETTERS)  # what is not A C G T U N: nothing, in DNA
    if not rest:
        return record_id, seq
    letters = len(seq) - rest.count("*") - rest.count(".") - rest.count("-")
    if letters < MIN_JUDGED_LETTERS:
        return record_id, seq
    fraction = (len(seq) - len(rest)) / letters
    if fraction < MIN_NUCLEOTIDE_FRACTION:
        foreign = sorted(_PROTEIN_ONLY_LETTERS.intersection(seq.upper()))
        if foreign:
            raise InputError(
                f"{path}: record '{record_id}' is only {fraction:.0%} A/C/G/T/U/N and holds {', '.join(foreign)}, "
                "which no nucleotide code uses; this looks like a protein FASTA: pass the DNA contigs"
            )
    return record_id, seq


def _record_id(path, line_no, line, seen, base):
    """The header's id; `base` turns line_no into the file's line number, for the errors only."""
    fields = line[1:].split(None, 1)
    if not fields:
        raise InputError(f"{path}: line {base(line_no)} is a header with no id; give every record a name")
    record_id = fields[0]
    if seen is None:
        return record_id
    if record_id in seen:
        raise InputError(duplicate_id(path, record_id, base(line_no)))
    seen.add(record_id)
    return record_id


def write_fasta(handle, records, width=None):
    """Write (id, sequence) records to an open text handle; `width` wraps lines as Biopython does (60)."""
    for record_id, seq in records:
        handle.write(f">{record_id}\n")
        if width:
            for start in range(0, len(seq), width):
                handle.write(seq[start:start + width] + "\n")
        else:
            handle.write(seq + "\n")
