"""Packing helpers shared by the fast forward passes: many sequences as one [T, ...] token tensor.

Sequences are concatenated without padding (sorted longest first by the caller), so every matrix
product runs on exactly the real tokens. Attention is the only step that needs sequence
boundaries; it runs either as one variable-length flash call (`torch.nn.attention.varlen`, CUDA,
fp16/bf16, no bias) or, everywhere else, as one SDPA call per run of equal-length sequences
("exact-length buckets"): sorted packing makes each bucket a contiguous slice that views as
[n, L, heads, head_dim] with no padding and no mask. An additive bias (ALiBi) goes to SDPA as
`attn_mask`.

Nothing here waits for the GPU until a result is read: `launch_in_budgets` queues a batch's kernels
and its device-to-host copy and returns a `Pending`; `embed_stream` keeps the next chunk tokenized and
launched while the caller waits for the last, which is how the sidecar's compute thread works too.
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
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
    """Boundaries of packed sequences, built with numpy (no per-token Python work): lengths (python ints),
    cu_seqlens (int32), per-token sequence index and position, and the runs of equal length."""

    def __init__(self, lengths, device: torch.device | str):
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        self.lengths = lengths.tolist()
        self.total = int(starts[-1])
        self.max_len = int(lengths.max())
        self.starts = starts[:-1].tolist()
        seq_ids = np.repeat(np.arange(len(lengths)), lengths)
        self.cu_seqlens = pinned(torch.from_numpy(starts.astype(np.int32)), device)
        self.seq_ids = pinned(torch.from_numpy(seq_ids), device)
        self.positions = pinned(torch.from_numpy(np.arange(self.total) - starts[:-1][seq_ids]), device)
        bounds = np.concatenate(([0], np.flatnonzero(np.diff(lengths)) + 1, [len(lengths)])).tolist()
        # (token start, token end, n sequences, length) of each run of equal-length sequences
        self.buckets = [(int(starts[a]), int(starts[b]), b - a, self.lengths[a]) for a, b in zip(bounds, bounds[1:])]


def bucket_attention(q, k, v, packing: Packing, bias_for_length=None, scale=None, backends=None):
    """q, k, v [T, H, D] -> [T, H, D]: SDPA per equal-length run; bias_for_length(L) -> [1, H, L, L].
    `backends`: the SDPA kernels allowed (torch.nn.attention.SDPBackend list), None for torch's choice."""
    out = torch.empty_like(q)
    heads, dim = q.shape[1], q.shape[2]
    with _sdpa_backends(backends):
        for start, end, n, length in packing.buckets:
            def view(t):
                return t[start:end].view(n, length, heads, dim).transpose(1, 2)

            mask = bias_for_length(length) if bias_for_length is not None else None
            o = F.scaled_dot_product_attention(view(q), view(k), view(v), attn_mask=mask, scale=scale)
            out[start:end].view(n, length, heads, dim).copy_(o.transpose(1, 2))
    return out


def _sdpa_backends(backends):
    if backends is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backends)


def pinned(tensor: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor on its way to `device`: pinned and copied without blocking when that is CUDA."""
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


class Pending:
    """A launched batch's [n, dim] float32 result on its way to the host: the device-to-host copy is queued
    behind the batch's kernels (into pinned memory) and `result()` waits for it alone, so the caller can
    launch the next batch first and keep the GPU fed while it waits."""

    def __init__(self, tensor: torch.Tensor):
        self._event = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(tensor.device))
        else:
            self._host = tensor

    def done(self) -> bool:
        return self._event is None or self._event.query()

    def result(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()  # releases the GIL while it waits
        return self._host.numpy()


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


def launch_in_budgets(tokens, embed_sorted, budget, device, dim) -> Pending:
    """Queue the embedding of `tokens` (token-id arrays, any order) and return its Pending [N, dim] result,
    rows in input order: sequences sorted longest first, embedded in groups of at most `budget` tokens by
    `embed_sorted(list of token arrays) -> [n, dim] float32 on the device`. Nothing here waits for the GPU."""
    if not len(tokens):
        return Pending(torch.empty((0, dim), dtype=torch.float32))
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    order = np.argsort(-lengths, kind="stable")
    parts = []
    with torch.inference_mode():
        for rows in budget_slices(order.tolist(), lengths, budget):
            parts.append(embed_sorted([tokens[i] for i in rows]))
        sorted_out = parts[0] if len(parts) == 1 else torch.cat(parts)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return Pending(sorted_out.index_select(0, pinned(torch.from_numpy(inverse), device)))




def embed_stream(model, chunks, depth=2):
    """Yield float32 [n, dim] for each chunk of sequences, in order, with host work hidden behind the GPU:
    chunk k+1 is tokenized on a worker thread (the Rust tokenizer releases the GIL) and launched before the
    caller waits for chunk k. `model` has `tokenize(seqs)` and `launch(token arrays) -> Pending`."""
    import collections
    from concurrent.futures import ThreadPoolExecutor

    chunks = iter(chunks)
    with ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
        tokenized = collections.deque(pool.submit(model.tokenize, c) for c in itertools.islice(chunks, depth))
        launched = collections.deque()
        while tokenized:
            launched.append(model.launch(tokenized.popleft().result()))
            following = next(chunks, None)
            if following is not None:
                tokenized.append(pool.submit(model.tokenize, following))
            if len(launched) >= depth:
                yield launched.popleft().result()
        while launched:
            yield launched.popleft().result()
