"""A benchmark's result: printed as JSON, and written to the --out file when one is given."""

import json
from pathlib import Path


def emit(result: dict, out=None) -> None:
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
