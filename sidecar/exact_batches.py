"""The original's ESM-2 batches of a list of proteins, torch-free, for the client to send one request each.

VirNucPro embeds a file of proteins in the batches of fair-esm's
`FastaBatchedDataset.get_batch_indices(2048, extra_toks_per_seq=1)`: proteins sorted by (length, position),
cut greedily so that the longest protein's length plus one times the batch size stays within 2048 (a longer
protein alone). A protein's exact-mode vector depends on its batch mates (padding), so a client of an
exact-mode sidecar sends a part's proteins in these batches, one request each, in this order; the sidecar
batches each request the same way with fair-esm's own code (virnucflow.models.esm2), and a request that
is one such batch stays one batch there. fair-esm's module imports torch, which the client must not, hence
this copy of its 20 lines; tests/test_exact_batching.py holds it equal to fair-esm's.
"""

TOKS_PER_BATCH = 2048
EXTRA_TOKS_PER_SEQ = 1


def original_batches(lengths, toks_per_batch=TOKS_PER_BATCH, extra_toks_per_seq=EXTRA_TOKS_PER_SEQ):
    """Lists of indices into `lengths`, as fair-esm's get_batch_indices makes them."""
    batches, buf, max_len = [], [], 0
    for size, i in sorted((length, i) for i, length in enumerate(lengths)):
        size += extra_toks_per_seq
        if max(size, max_len) * (len(buf) + 1) > toks_per_batch and buf:
            batches.append(buf)
            buf, max_len = [], 0
        max_len = max(max_len, size)
        buf.append(i)
    if buf:
        batches.append(buf)
    return batches
