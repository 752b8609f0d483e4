"""virnucflow's resident embedding server ("sidecar") and its torch-free client.

Importing this package imports nothing heavy: torch is loaded only by `sidecar serve`.
"""
