"""The sample sheet: read it, and say each mistake in one line that names the line (and sample) and the fix.

A sheet is tab-separated with the columns `sample` and `fasta` (more columns are ignored); blank lines are
skipped. A row's values follow workflow/schemas/samples.schema.yaml; FASTA paths are read relative to the
working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from virnucflow.config_check import schema_problems

SEPARATORS = ((",", "commas"), (";", "semicolons"), (" ", "spaces"))


def _not_tabbed(path, number: int, line: str) -> str:
    found = next((word for sep, word in SEPARATORS if sep in line.strip()), "no tab")
    return (f"{path}: the sample sheet must be tab-separated (line {number} has {found}): "
            "put one tab between the sample name and the FASTA path")


def read_sample_sheet(path, row_schema: dict) -> tuple[dict, list[str]]:
    """({sample: fasta}, problems): each problem one line."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return {}, [f"samples: the sample sheet {path} does not exist: fix the path in `samples`"]
    except OSError as exc:
        return {}, [f"samples: cannot read the sample sheet {path} ({exc.strerror}): fix the path in `samples`"]
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        return {}, [f"{path} is empty: write the header `sample<TAB>fasta`, then one row per sample"]
    number, header_line = lines[0]
    header = [h.strip() for h in header_line.split("\t")]
    if len(header) < 2:
        return {}, [_not_tabbed(path, number, header_line)]
    required = row_schema.get("required", [])
    missing = [c for c in required if c not in header]
    if missing:
        return {}, [f"{path} line {number}: no `{missing[0]}` column (the header has {', '.join(header)}): "
                    f"name the columns {' and '.join(required)}"]
    samples, first_seen, problems = {}, {}, []
    for number, line in lines[1:]:
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) < len(header):
            problems.append(_not_tabbed(path, number, line) if len(fields) == 1 else
                            f"{path} line {number}: {len(fields)} columns, the header has {len(header)}: "
                            "fill in every column")
            continue
        row = {c: v for c, v in zip(header, fields) if c in required}
        bad = schema_problems(row, row_schema)
        if bad:
            problems += [f"{path} line {number}: {m}" for m in bad]
            continue
        name, fasta = row["sample"], row["fasta"]
        if name in first_seen:
            problems.append(f"{path} line {number}: sample '{name}' is listed twice (first on line "
                            f"{first_seen[name]}): give each sample one row")
            continue
        first_seen[name] = number
        if not os.path.isfile(fasta):
            problems.append(f"{path} line {number}: sample '{name}': FASTA '{fasta}' does not exist: fix the path "
                            f"(relative paths start in {os.getcwd()})")
            continue
        samples[name] = fasta
    if not first_seen and not problems:
        problems.append(f"{path} lists no samples: add one row per sample, `name<TAB>path/to/reads.fa`")
    return samples, problems
