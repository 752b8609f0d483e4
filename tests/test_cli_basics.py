"""The `virnucflow` command's basics: --version, status on a missing directory, status piped to `head`, write-json."""

import json
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


def test_status_piped_to_head_ends_quietly_when_the_listing_fills_the_pipe(tmp_path):
    for i in range(3000):  # about 200 kB of rows: more than a pipe holds, so `head` closes it mid-write
        (tmp_path / "results" / f"sample_{i:04d}").mkdir(parents=True)
    proc = subprocess.run(
        f"{sys.executable} -m virnucflow status -d {tmp_path} --no-sidecar | head -1; exit ${{PIPESTATUS[0]}}",
        shell=True, capture_output=True, text=True, executable="/bin/bash")
    assert proc.returncode == 0 and proc.stdout == f"directory: {tmp_path.resolve()}\n" and proc.stderr == ""


def test_help_lists_the_users_commands_first():
    out = subprocess.run([sys.executable, "-m", "virnucflow", "--help"], capture_output=True, text=True,
                         check=True).stdout
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    assert listed[:5] == ["run", "check", "status", "fetch-models", "make-demo-models"], listed
    assert {"chunk", "embed", "classify"} <= set(listed[5:])


def test_write_json_writes_the_document_or_nothing(tmp_path):
    out = tmp_path / "settings.json"
    ok = subprocess.run([sys.executable, "-m", "virnucflow", "write-json", "--output", str(out), '{"mode": "exact"}'],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(out.read_text()) == {"mode": "exact"}
    bad = subprocess.run([sys.executable, "-m", "virnucflow", "write-json", "--output", str(tmp_path / "b.json"),
                          "{mode"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "not JSON" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]
