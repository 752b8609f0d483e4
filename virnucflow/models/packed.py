"""Packing helpers shared by the fast forward passes: many sequences as one [T, ...] token tensor.

Sequences are concatenated without padding (sorted longest first by the caller), so every matrix
product runs on exactly the real tokens. Attention is the only step that needs sequence
boundaries; it runs either as one variable-length flash call (`torch.nn.attention.varlen`, CUDA,
fp16/bf16, no bias) or, everywhere else, as one SDPA call per run of equal-length sequences
("exact-length buckets"): sorted packing makes each bucket a contiguous slice that views as
[n, L, heads, head_dim] with no padding and no mask. An additive bias (ALiBi) goes to SDPA as
`attn_mask`.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def varlen_attention_fn():
    """`torch.nn.attention.varlen.varlen_attn` if this torch has it, else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


class Packing:
    """Boundaries of packed sequences: lengths (python ints), cu_seqlens (int32), equal-length runs."""

    def __init__(self, lengths: list[int], device: torch.device | str):
        self.lengths = list(lengths)
        self.total = sum(self.lengths)
        self.max_len = max(self.lengths)
        starts = [0, *itertools.accumulate(self.lengths)]
        self.starts = starts[:-1]
        self.cu_seqlens = torch.tensor(starts, dtype=torch.int32).to(device, non_blocking=True)
        self.seq_ids = torch.repeat_interleave(
            torch.arange(len(self.lengths)), torch.tensor(self.lengths)
        ).to(device, non_blocking=True)
        start_of_token = torch.repeat_interleave(torch.tensor(starts[:-1]), torch.tensor(self.lengths))
        self.positions = (torch.arange(self.total) - start_of_token).to(device, non_blocking=True)
        self.buckets = []  # (token start, token end, n sequences, length)
        first = 0
        for length, group in itertools.groupby(self.lengths):
            n = len(list(group))
            self.buckets.append((starts[first], starts[first + n], n, length))
            first += n


def bucket_attention(q, k, v, packing: Packing, bias_for_length=None, scale=None):
    """q, k, v [T, H, D] -> [T, H, D]: SDPA per equal-length run; bias_for_length(L) -> [1, H, L, L]."""
    out = torch.empty_like(q)
    heads, dim = q.shape[1], q.shape[2]
    for start, end, n, length in packing.buckets:
        def view(t):
            return t[start:end].view(n, length, heads, dim).transpose(1, 2)

        mask = bias_for_length(length) if bias_for_length is not None else None
        o = F.scaled_dot_product_attention(view(q), view(k), view(v), attn_mask=mask, scale=scale)
        out[start:end].view(n, length, heads, dim).copy_(o.transpose(1, 2))
    return out


def pinned(tensor: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor on its way to `device`: pinned and copied without blocking when that is CUDA."""
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def to_host(tensor: torch.Tensor):
    """GPU -> numpy through a pinned buffer (one copy, then one synchronisation)."""
    if tensor.device.type != "cuda":
        return tensor.numpy()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return host.numpy()


def budget_slices(order, lengths, budget):
    """Split `order` (indices, longest first) into consecutive groups of <= budget tokens (>= 1 each)."""
    group, used = [], 0
    for i in order:
        if group and used + lengths[i] > budget:
            yield group
            group, used = [], 0
        group.append(i)
        used += lengths[i]
    if group:
        yield group


def embed_in_budgets(tokens, embed_sorted, budget, dim):
    """float32 [N, dim] in input order: sequences sorted longest first, embedded in groups of at most
    `budget` tokens by `embed_sorted(list of token lists) -> [n, dim]`, with one host sync at the end."""
    import numpy as np

    order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
    out = np.empty((len(tokens), dim), dtype=np.float32)
    pending = []
    with torch.inference_mode():
        for rows in budget_slices(order, [len(t) for t in tokens], budget):
            pending.append((rows, embed_sorted([tokens[i] for i in rows])))
        # the host queued every batch while the GPU ran; synchronise once
        if pending:
            out[[i for rows, _ in pending for i in rows]] = to_host(torch.cat([v for _, v in pending]))
    return out
