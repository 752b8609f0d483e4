"""Where the workflow's own files (Snakefile, workflow/, config/) are: the copy installed with the package, else
the checkout that virnucflow runs from."""

from __future__ import annotations

from pathlib import Path

from virnucflow.errors import InputError

PACKAGED = Path(__file__).resolve().parent / "_pipeline"
CHECKOUT = Path(__file__).resolve().parent.parent


def workflow_root() -> Path:
    """The directory holding the Snakefile, workflow/ and config/: the installed copy, else the checkout."""
    for root in (PACKAGED, CHECKOUT):
        if (root / "Snakefile").is_file() and (root / "workflow" / "rules").is_dir():
            return root
    raise InputError(f"the workflow (Snakefile) is neither in {PACKAGED} nor in {CHECKOUT}; reinstall virnucflow "
                     "with `pip install .` from its checkout")


def schema_dir() -> Path:
    """workflow/schemas of the installed workflow or the checkout."""
    return workflow_root() / "workflow" / "schemas"
