"""The tier check (tests/tiers.py): a test with no tier marker, or with two, fails the collection, also when
`-m` would deselect it; a test with exactly one runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

TESTS = Path(__file__).resolve().parent
INI = "[pytest]\nmarkers =\n    unit: u\n    process: p\n"


def pytest_on(directory, source, *args):
    (directory / "pytest.ini").write_text(INI)
    (directory / "test_sample.py").write_text(source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tiers", "-p", "no:cacheprovider", "-q", *args],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=120)


def test_a_test_without_exactly_one_tier_fails_the_collection(tmp_path):
    source = ("import pytest\n\n"
              "@pytest.mark.unit\ndef test_one():\n    pass\n\n"
              "def test_none():\n    pass\n\n"
              "@pytest.mark.unit\n@pytest.mark.process\ndef test_two():\n    pass\n")
    proc = pytest_on(tmp_path, source, "-m", "unit")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "2 test(s) without exactly one tier marker" in proc.stderr
    assert "test_sample.py::test_none: has none" in proc.stderr
    assert "test_sample.py::test_two: has process and unit" in proc.stderr
    assert "test_one" not in proc.stderr and " passed" not in proc.stdout


def test_a_test_with_one_tier_runs(tmp_path):
    proc = pytest_on(tmp_path, "import pytest\n\npytestmark = pytest.mark.process\n\ndef test_one():\n    pass\n")
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr
