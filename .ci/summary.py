"""Add up the summary lines of the pytest logs given (one per tier) into one line in pytest's own form,
e.g. `340 passed, 5 skipped in 1200.00s (0:20:00)`, for the end of .ci/run; deselected tests are not counted."""

import re
import sys
from datetime import timedelta
from pathlib import Path

ORDER = ("failed", "passed", "skipped", "xfailed", "xpassed", "warnings", "errors")
SUMMARY = re.compile(r"^(?:=+ )?(?P<counts>(?:\d+ \w+(?:, )?)+) in (?P<seconds>[\d.]+)s")


def main(paths):
    counts, seconds = dict.fromkeys(ORDER, 0), 0.0
    for path in filter(Path.is_file, map(Path, paths)):  # no log yet when an earlier stage failed
        lines = [m for m in map(SUMMARY.match, path.read_text(errors="replace").splitlines()) if m]
        if not lines:
            continue
        last = lines[-1]
        seconds += float(last["seconds"])
        for number, word in re.findall(r"(\d+) (\w+)", last["counts"]):
            word = {"warning": "warnings", "error": "errors"}.get(word, word)
            if word in counts:
                counts[word] += int(number)
    parts = [f"{counts[w]} {w}" for w in ORDER if counts[w]] or ["no tests ran"]
    print(f"{', '.join(parts)} in {seconds:.2f}s ({timedelta(seconds=int(seconds))})")


if __name__ == "__main__":
    main(sys.argv[1:])
