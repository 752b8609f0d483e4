"""virnucflow: VirNucPro's viral short-sequence identification, re-implemented faithfully."""

__version__ = "0.1.0"
