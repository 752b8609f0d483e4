"""Test tiers: every test carries exactly one tier marker, or the collection fails.

The tiers, cheapest first (README, "Tests"; .ci/run runs them in this order):
  unit      pure functions, in-process, no subprocess
  process   CLI processes, real sidecars, Snakemake dry runs
  workflow  real snakemake runs
  bench     the smoke tests of the benchmark scripts
  slurm     runs on a real SLURM

tests/conftest.py imports the hook below; the check runs before `-m` deselects anything, so that
`pytest -m unit` also refuses a test that belongs to no tier.
"""

import pytest

TIERS = ("unit", "process", "workflow", "bench", "slurm")


def tier_problems(items):
    """'<test id>: <what is wrong>' for each test without exactly one tier marker."""
    problems = []
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            found = f"has {' and '.join(tiers)}" if tiers else "has none"
            problems.append(f"{item.nodeid}: {found}")
    return problems


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    problems = tier_problems(items)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise pytest.UsageError(
            f"{len(problems)} test(s) without exactly one tier marker "
            f"(@pytest.mark.{', @pytest.mark.'.join(TIERS)}; tests/tiers.py):\n  {shown}")
