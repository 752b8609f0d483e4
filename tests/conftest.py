"""Shared fixtures: paths, the reference data beside the project, and the tiny models made once per session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_reference():
    ref = SHARED / "reference"
    if not ref.is_dir():
        pytest.skip("../shared/reference is absent; reference-data tests skipped")
    return ref


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory):
    """Tiny ESM-2, MosaicBERT and classifiers in the real formats, made by the project's own command."""
    out = tmp_path_factory.mktemp("demo_models")
    run_cli("make-demo-models", "--out-dir", str(out))
    return out


def run_cli(*args, check=True, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "virnucflow", *args], capture_output=True, text=True, env=env, **kwargs
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"virnucflow {' '.join(args)} failed:\n{proc.stderr}")
    return proc
