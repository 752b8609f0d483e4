"""FASTA reading with the checks the original never made, and FASTA writing.

Parsing follows Biopython's FASTA parser, which the original used: the record id is the header
up to the first white space; trailing white space, spaces and carriage returns are removed from
sequence lines. Gzipped input is recognised by its magic bytes, not by its name.
"""

import gzip
import io
import re
from pathlib import Path

from virnucflow.errors import InputError

_GZIP_MAGIC = b"\x1f\x8b"
_SEQUENCE_CHARS = re.compile(r"[A-Za-z*.\-]*")


def _open_text(path):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path in your sample sheet or command")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    raw = gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="ascii", errors="strict", newline=None)


def read_fasta(path):
    """Yield (record_id, sequence) for each record, raising InputError on anything that is not FASTA.

    Records of length zero are yielded (the caller decides); duplicate ids are an error because
    every downstream step keys on them.
    """
    seen = set()
    record_id, lines, line_no = None, [], 0
    try:
        with _open_text(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                if "\x00" in line:
                    raise InputError(f"{path}: line {line_no} holds binary data; give a FASTA file (plain or gzipped)")
                if line.startswith(">"):
                    if record_id is not None:
                        yield record_id, "".join(lines)
                    record_id = _record_id(path, line_no, line, seen)
                    lines = []
                elif record_id is None:
                    if line.strip():
                        raise InputError(
                            f"{path}: line {line_no} comes before any '>' header; this is not FASTA"
                        )
                else:
                    chunk = line.rstrip().replace(" ", "")
                    if not _SEQUENCE_CHARS.fullmatch(chunk):
                        bad = next(c for c in chunk if not _SEQUENCE_CHARS.fullmatch(c))
                        raise InputError(
                            f"{path}: record '{record_id}' line {line_no} has the character {bad!r}, "
                            "which is not a nucleotide or IUPAC code; fix or remove the record"
                        )
                    lines.append(chunk)
    except UnicodeDecodeError as exc:
        where = f"after line {line_no}" if line_no else "at its start"
        raise InputError(
            f"{path}: non-text bytes {where} ({exc.reason}); give a FASTA file (plain or gzipped)"
        ) from None
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise InputError(f"{path}: cannot be read as (gzipped) FASTA: {exc}") from None
    if record_id is None:
        raise InputError(f"{path}: holds no FASTA records; check that it is the right file")
    yield record_id, "".join(lines)


def _record_id(path, line_no, line, seen):
    fields = line[1:].split(None, 1)
    if not fields:
        raise InputError(f"{path}: line {line_no} is a header with no id; give every record a name")
    record_id = fields[0]
    if record_id in seen:
        raise InputError(
            f"{path}: record id '{record_id}' (line {line_no}) appears twice; make the ids unique"
        )
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
