"""Progress lines for long CPU steps: one log line every N records, with the rate.

N is 100,000 unless the environment sets VIRNUCFLOW_PROGRESS_EVERY (a positive integer), so the
rules need no extra option. `virnucflow status` reads these lines from the job logs.
"""

import logging
import os
import time

DEFAULT_EVERY = 100_000
ENV_EVERY = "VIRNUCFLOW_PROGRESS_EVERY"

log = logging.getLogger("virnucflow.progress")


def progress_every():
    """Records between two progress lines (VIRNUCFLOW_PROGRESS_EVERY, else 100,000)."""
    try:
        every = int(os.environ.get(ENV_EVERY, DEFAULT_EVERY))
    except ValueError:
        every = DEFAULT_EVERY
    return every if every > 0 else DEFAULT_EVERY


class Progress:
    """Count records and log `<label>: <n> <unit> (<rate>/s)` every `every` of them."""

    def __init__(self, label, unit="records", every=None, total=None):
        self.label, self.unit, self.total = label, unit, total
        self.every = every or progress_every()
        self.count = 0
        self.started = time.monotonic()
        self._next = self.every

    def tick(self, n=1):
        self.count += n
        if self.count >= self._next:
            self._next = (self.count // self.every + 1) * self.every
            self._log()

    def _log(self, final=""):
        seconds = max(time.monotonic() - self.started, 1e-9)
        of = f" of {self.total}" if self.total is not None else ""
        log.info("%s: %d%s %s%s (%.0f/s)", self.label, self.count, of, self.unit, final, self.count / seconds)

    def done(self):
        self._log(final=" in total")


def counted(iterable, label, unit="records", every=None):
    """Yield from `iterable`, logging progress every N items and a total at the end."""
    progress = Progress(label, unit, every)
    for item in iterable:
        yield item
        progress.tick()
    progress.done()
