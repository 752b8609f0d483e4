"""`python -m sidecar ...` runs the sidecar command line."""

import sys

from .cli import main

sys.exit(main())
