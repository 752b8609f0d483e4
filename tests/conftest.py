"""Shared fixtures: paths, the reference data beside the project, the tiny models made once per session, the
sidecar fixtures, and the demo run through the real `snakemake`, once per test run. The tier check is here too."""

import os

# One OpenMP thread for torch, in this process and in every sidecar and CLI process that it starts (they
# inherit the environment). With several threads torch may split a reduction differently from one call to
# the next when the machine is busy, and the tests that compare a sidecar's vectors with in-process ones
# bit for bit then fail now and then. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from test_sidecar_support import models, reference, spawn  # noqa: E402, F401 - the sidecar tests' fixtures
from tiers import pytest_collection_modifyitems  # noqa: E402, F401 - every test has exactly one tier

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
    """Tiny ESM-2, MosaicBERT and classifiers in the real formats, made in-process by the code behind
    `virnucflow make-demo-models` (so that unit tests may use them)."""
    from virnucflow.demo_models import write_demo_models

    out = tmp_path_factory.mktemp("demo_models")
    write_demo_models(out)
    return out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The demo run once per test run by the real `snakemake` with a sidecar on the CPU (workflow_runs.
    write_demo_run_config says what it holds). Tests only read it: none may change its files."""
    from workflow_runs import snakemake, write_demo_run_config

    workdir = tmp_path_factory.mktemp("demo_run")
    write_demo_run_config(workdir)
    snakemake(workdir, "--cores", "2")
    return workdir


@pytest.fixture(scope="session")
def demo_run_in_process(tmp_path_factory):
    """The demo's two samples embedded in-process (each job loads the models), intermediates kept."""
    from workflow_runs import snakemake, write_config

    workdir = tmp_path_factory.mktemp("demo_run_in_process")
    write_config(workdir, keep_intermediate=True, embedding={"sidecar": False, "device": "cpu"})
    snakemake(workdir, "--cores", "2")
    return workdir


def run_cli(*args, check=True, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "virnucflow", *args], capture_output=True, text=True, env=env, **kwargs
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"virnucflow {' '.join(args)} failed:\n{proc.stderr}")
    return proc
