"""The workflow's formatting, checked as the Snakemake workflow catalogue checks it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_snakefmt_check():
    exe = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or shutil.which("snakefmt")
    if exe is None:
        pytest.skip("snakefmt is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe, "--check", "Snakefile", "workflow"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
