"""`python -m virnucflow` runs the command line."""

import sys

from virnucflow.cli import main

sys.exit(main())
