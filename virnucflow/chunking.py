"""Cutting records into overlapping windows exactly as the original `split_fasta_chunk` does.

For a record of length L and chunk size cs: n = ceil(L/cs) windows; the surplus R = n*cs - L is
spread as backward shifts, lo = floor(R/n) (divided by n, not n-1), and the shift list is
[lo+1]*k_up + [lo]*(n-1-k_up) + [0] with k_up = R - lo*(n-1), a negative repeat count giving an
empty list. Window i starts at i*cs minus the first i shifts and is clipped at the end, so for
many lengths the last window is shorter than cs. Records shorter than cs pass whole.
"""

import logging

log = logging.getLogger(__name__)

CHUNK_SIZES = (300, 500)


def window_starts(length, chunk_size):
    """Start offsets of the windows of a record of `length` (length >= 1)."""
    n = -(-length // chunk_size)
    surplus = n * chunk_size - length
    lower = surplus // n
    k_up = surplus - lower * (n - 1)
    shifts = [lower + 1] * k_up + [lower] * (n - 1 - k_up) + [0]
    starts, moved = [], 0
    for start, shift in zip(range(0, length, chunk_size), shifts):
        starts.append(start - moved)
        moved += shift
    return starts


def chunk_records(records, chunk_size):
    """Yield (chunk_id, chunk_sequence) for (record_id, sequence) records; zero-length records are skipped."""
    for record_id, seq in records:
        if not seq:
            log.warning("record '%s' has no sequence; skipped (the original crashes on it)", record_id)
            continue
        for i, start in enumerate(window_starts(len(seq), chunk_size), start=1):
            yield f"{record_id}_chunk_{i}", seq[start:start + chunk_size]
