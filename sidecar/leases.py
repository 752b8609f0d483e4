"""Leases on a sidecar that outlives any one client: one file per sample that still needs it.

Under SLURM a sidecar is a job of its own that serves every sample of a run. Each sample that has parts
to embed takes a lease on it: a file in the sidecar's lease directory, the `sidecar` rule's temp() output
for that sample, which Snakemake removes after the sample's last embed job. The sidecar job ends once its
lease directory has held a lease and has held none for GRACE seconds. When it stops for another reason
(scancel, its time limit, its idle timeout) it removes the leases left, so that the next run takes new
ones, which start a new sidecar job, instead of trusting the dead one.

One file per sample, not one for the run, because Snakemake reruns every job that takes a file made
anew: with a single shared file, a sample added to a finished run re-embedded every finished sample.
Standard library only.
"""

import contextlib
import os
from pathlib import Path

SUFFIX = ".started"
GRACE = 5.0  # seconds without a lease before the sidecar ends


def held(directory) -> bool:
    try:
        return any(name.endswith(SUFFIX) for name in os.listdir(directory))
    except FileNotFoundError:
        return False


class LeaseWatch:
    """Whether a sidecar's leases have all been given back (after at least one was held)."""

    def __init__(self, directory, grace=GRACE):
        self.directory = Path(directory)
        self.grace = grace
        self.last_held = None  # monotonic time a lease was last seen; None before the first

    def released(self, now) -> bool:
        if held(self.directory):
            self.last_held = now
            return False
        return self.last_held is not None and now - self.last_held >= self.grace


def release_all(directory) -> int:
    """Remove every lease in `directory`; returns how many there were."""
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.endswith(SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(Path(directory) / name)
                removed += 1
    return removed
