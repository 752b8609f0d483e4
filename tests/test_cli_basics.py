"""The `virnucflow` command's basics: --version, status on a missing directory, status piped to `head`."""

import subprocess
import sys

import pytest

from virnucflow import __version__

pytestmark = pytest.mark.process


def test_version():
    proc = subprocess.run([sys.executable, "-m", "virnucflow", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"virnucflow {__version__}"


def test_status_of_a_missing_directory_is_one_line_and_fails(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "virnucflow", "status", "-d", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "is not a directory" in proc.stderr


def test_status_piped_to_head_ends_quietly(tmp_path):
    proc = subprocess.run(f"{sys.executable} -m virnucflow status -d {tmp_path} | head -1", shell=True,
                          capture_output=True, text=True, executable="/bin/bash")
    assert proc.stdout.startswith("directory:") and "Traceback" not in proc.stderr
