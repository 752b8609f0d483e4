"""Leases on a sidecar that outlives any one client: one file per sample that still needs it.

Under SLURM a sidecar is a job of its own that serves every sample of a run. Each sample that has parts
to embed takes a lease on it: a file in the sidecar's lease directory, the `sidecar` rule's temp() output
for that sample, which Snakemake removes after the sample's last embed job. The sidecar job ends once its
lease directory has held a lease and has held none for GRACE seconds. When it stops for another reason
(scancel, its time limit, its idle timeout) it removes the leases left, so that the next run takes new
ones, which start a new sidecar job, instead of trusting the dead one.

One file per sample, not one for the run, because Snakemake reruns every job that takes a file made
anew: with a single shared file, a sample added to a finished run re-embedded every finished sample.

A taker that reuses a running sidecar writes its lease file first and then announces it in a ping
(`protocol.ping(lease=...)`). The sidecar counts an announced lease as held until it sees the file in its
own listing, or for UNSEEN seconds: another host's directory listing of a shared file system can lag
behind a new file by up to a minute (NFS caches directory attributes for 30-60 s by default). A sidecar
that has already decided to end answers that ping "stopping", and the taker then waits for its job to end
and submits a new one; so a lease taken while a sidecar ends is never a lease on a sidecar that is gone.
Standard library only.
"""

import contextlib
import os
from pathlib import Path

SUFFIX = ".started"
GRACE = 5.0  # seconds without a lease before the sidecar ends
UNSEEN = 90.0  # seconds an announced lease counts as held while its file is not in the listing
MAX_NAME = 255


def lease_names(directory) -> set:
    try:
        return {name for name in os.listdir(directory) if name.endswith(SUFFIX)}
    except FileNotFoundError:
        return set()


def valid_name(name) -> bool:
    """A lease's file name as a ping may announce it: a plain name in the lease directory."""
    return (type(name) is str and name.endswith(SUFFIX) and 0 < len(name) <= MAX_NAME
            and "/" not in name and "\0" not in name and name not in (".", ".."))


class LeaseWatch:
    """Whether a sidecar's leases have all been given back (after at least one was held)."""

    def __init__(self, directory, grace=GRACE, unseen=UNSEEN):
        self.directory = Path(directory)
        self.grace, self.unseen = grace, unseen
        self.last_held = None  # monotonic time a lease was last seen; None before the first
        self.announced = {}  # lease name -> when a ping announced it, until the listing shows it

    def announce(self, name, now):
        self.announced[name] = now
        self.last_held = now

    def released(self, now) -> bool:
        names = lease_names(self.directory)
        self.announced = {name: at for name, at in self.announced.items()
                          if name not in names and now - at < self.unseen}
        if names or self.announced:
            self.last_held = now
            return False
        return self.last_held is not None and now - self.last_held >= self.grace


def release_all(directory) -> int:
    """Remove every lease in `directory`; returns how many there were."""
    removed = 0
    for name in lease_names(directory):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Path(directory) / name)
            removed += 1
    return removed
