"""Fast ESM-2 embedding: packed fp16 forward over many proteins at once, on the loaded fair-esm model.

Same features as `virnucflow.models.esm2.Esm2.embed` (last layer after the final LayerNorm, mean
over residues 1..min(len, 1024)), computed differently:

- fp16 weights and activations (never bf16: its 8-bit mantissa moves ESM-2's features past fast
  mode's tolerance); LayerNorm statistics, rotary tables and the rotation, softmax (inside the
  attention kernel) and the mean pooling run in fp32.
- proteins sorted longest first and packed into one [tokens, 2560] tensor: no padding in any
  matrix product; attention is variable-length flash on CUDA (`torch.nn.attention.varlen`) or
  SDPA per run of equal-length proteins (no padding, no mask) elsewhere.
- fair-esm's quirks kept: token-dropout scaling (x 0.88 / (1 - mask ratio), per protein), rotary
  positions restarted for every protein, with fair-esm's own `inv_freq` buffers (read from the
  loaded weights, which in the real fp16 file are rounded, not recomputed), q scaled by
  head_dim^-0.5 before the rotation, BOS/EOS excluded from the mean.
- on CUDA in fp16, fc1's bias and GELU run in cuBLASLt's GEMM epilogue, which computes the tanh
  form of GELU, not fair-esm's erf form: one pass over the [tokens, 10240] activations less, 4-5%
  more tokens/s on an H200; per-protein cosine to the fp32 path stays 0.9999999 (docs/benchmarks.md,
  issue 12). Elsewhere (CPU, fp32) the erf GELU runs as a separate step.
- the weights are SHARED with the fair-esm module: it is converted in place once (fp16), its
  q/k/v projections are fused into one matrix whose slices replace the originals (no second
  copy). The module then no longer serves the exact path; a sidecar runs one mode.

`dtype=torch.float32` runs the same packed path in fp32 (used on CPU by the agreement test).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from virnucflow.models import compiler
from virnucflow.models.esm2 import TRUNCATION_SEQ_LENGTH
from virnucflow.models.packed import (Packing, Pending, bucket_attention, launch_in_budgets, pinned,
                                      varlen_attention_fn)

MASK_RATIO_TRAIN = 0.15 * 0.8


def _layer_norm(x, ln):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


class FastEsm2:
    """Packed half-precision ESM-2 embedding; `embed` matches `Esm2.embed` to cosine >= 0.999."""

    def __init__(self, exact, dtype=torch.float16, device=None, max_batch_tokens=65536, attention="auto",
                 compile=None):
        model = exact.model
        self.alphabet = exact.alphabet
        self.name = exact.name
        self.dim = exact.dim
        self.device = torch.device(device or exact.device)
        self.dtype = dtype
        self.max_batch_tokens = max_batch_tokens
        self.heads = model.attention_heads
        self.head_dim = self.dim // self.heads
        self.token_dropout = model.token_dropout
        a = self.alphabet
        self._lut = np.full(256, -1, dtype=np.int64)  # -1: leave the character to fair-esm's encode
        for token, index in a.tok_to_idx.items():
            if len(token) == 1 and token.isascii() and not token.isspace():
                self._lut[ord(token)] = index
        # fp32 rotary frequencies exactly as loaded (one buffer per layer; identical in practice)
        inv = [layer.self_attn.rot_emb.inv_freq.detach().float().clone() for layer in model.layers]
        self.shared_inv_freq = all(torch.equal(inv[0], t) for t in inv)
        self.inv_freq = [t.to(self.device) for t in (inv[:1] if self.shared_inv_freq else inv)]
        model.to(dtype)  # converted where it was loaded (CPU for a fast sidecar), then moved once
        model.to(self.device)
        for layer in model.layers:
            attn = layer.self_attn
            layer.qkv_weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            layer.qkv_bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
            for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):  # views: no second copy
                rows = slice(i * self.dim, (i + 1) * self.dim)
                proj.weight = torch.nn.Parameter(layer.qkv_weight[rows], requires_grad=False)
                proj.bias = torch.nn.Parameter(layer.qkv_bias[rows], requires_grad=False)
        self.model = model
        self.scaling = model.layers[0].self_attn.scaling
        compiler.wait()  # torch.nn.attention.varlen imports torch._dynamo, which the warm-up may be importing
        varlen = varlen_attention_fn()
        if attention == "auto":
            attention = "varlen" if (varlen and self.device.type == "cuda" and dtype != torch.float32) else "buckets"
        self.attention = attention
        self._varlen = varlen
        if attention == "varlen" and not self._varlen_works():
            self.attention = "buckets"
        self._setup_rotary(self.device.type == "cuda" if compile is None else compile)
        self.gelu_epilogue = self.device.type == "cuda" and dtype == torch.float16 and self._gelu_epilogue_works()

    def _varlen_works(self):
        """Check the flash varlen kernel against bucketed SDPA once (a torch build may lack or differ)."""
        try:
            g = torch.Generator(device=self.device).manual_seed(0)
            q, k, v = (torch.randn(7 + 5, self.heads, self.head_dim, generator=g, device=self.device)
                       .to(self.dtype) for _ in range(3))
            packing = Packing([7, 5], self.device)
            a = self._attention(q * self.scaling, k, v, packing)
            b = bucket_attention(q * self.scaling, k, v, packing, scale=1.0)
            return bool(torch.allclose(a.float(), b.float(), atol=2e-2, rtol=2e-2))
        except Exception:  # noqa: BLE001 - any failure means: do not use it
            return False

    # ---- tokens ---------------------------------------------------------------------------------

    def count_tokens(self, protein: str) -> int:
        return len(protein) + 2

    def token_ids(self, protein: str) -> np.ndarray:
        """[cls, residues..., eos] as fair-esm's batch converter makes them; a byte lookup table when the
        protein is plain one-letter text (fair-esm's `encode` costs ~2 ms per protein in Python, as much
        as the GPU work), fair-esm's own `encode` otherwise (special tokens such as <mask>, white space)."""
        a = self.alphabet
        try:
            raw = protein.encode("ascii")
        except UnicodeEncodeError:
            raw = None
        body = None if raw is None else self._lut[np.frombuffer(raw, dtype=np.uint8)]
        if body is None or (body < 0).any():  # fair-esm decides (and raises KeyError where it does)
            body = np.asarray(a.encode(protein), dtype=np.int64)
        return np.concatenate(([a.cls_idx], body, [a.eos_idx])).astype(np.int64)

    # ---- forward --------------------------------------------------------------------------------

    def _setup_rotary(self, compile_):
        """torch.compile fuses the rotary step (fp16 in, fp32 math, fp16 out) into one kernel: eagerly it
        is ~8 passes over q and k, a third of the GPU time. Used only if it compiles and matches eager,
        at two token counts (one compile: virnucflow.models.compiler)."""
        self._rotary = _rotary_qk
        self.compiled = False
        if not compile_:
            return
        compiler.wait()
        try:
            compiled = compiler.compile_for_tokens(_rotary_qk)
            g = torch.Generator(device=self.device).manual_seed(0)
            with torch.inference_mode():  # as the forward runs: a graph of another grad mode would recompile
                for tokens in (37, 41):
                    qkv = torch.randn(tokens, 3, self.heads, self.head_dim, generator=g, device=self.device)
                    qkv = qkv.to(self.dtype)
                    cos, sin = _tables(torch.arange(tokens, device=self.device).float(), self.inv_freq[0])
                    if tokens == 37:
                        compiler.mark_tokens(qkv, cos, sin)
                    for a, b in zip(compiled(qkv, cos, sin, self.scaling), _rotary_qk(qkv, cos, sin, self.scaling)):
                        if not torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-2):
                            return
            self._rotary, self.compiled = compiled, True
        except Exception:  # noqa: BLE001 - no compiler here: stay eager
            return

    def _gelu_epilogue_works(self):
        """cuBLASLt's fused bias + GELU (tanh form) against the separate steps, once: a private torch op."""
        try:
            g = torch.Generator(device=self.device).manual_seed(0)
            h, w, b = (torch.randn(*shape, generator=g, device=self.device).to(self.dtype)
                       for shape in ((64, 32), (48, 32), (48,)))
            fused = torch._addmm_activation(b, h, w.t(), use_gelu=True)
            separate = F.gelu(F.linear(h, w, b), approximate="tanh")
            return bool(torch.allclose(fused.float(), separate.float(), atol=1e-2, rtol=1e-2))
        except Exception:  # noqa: BLE001 - any failure means: do not use it
            return False

    def _fc1_gelu(self, h, fc1):
        if self.gelu_epilogue:
            return torch._addmm_activation(fc1.bias, h, fc1.weight.t(), use_gelu=True)
        return F.gelu(F.linear(h, fc1.weight, fc1.bias))  # erf GELU, as fair-esm

    def _attention(self, q, k, v, packing):
        if self.attention == "varlen":
            # q is pre-scaled (fair-esm order), so the kernel must not scale again
            try:
                return self._varlen(q, k, v, packing.cu_seqlens, packing.cu_seqlens,
                                    packing.max_len, packing.max_len, scale=1.0)
            except TypeError:  # a torch whose varlen_attn has no scale argument
                return self._varlen(q / self.scaling, k, v, packing.cu_seqlens, packing.cu_seqlens,
                                    packing.max_len, packing.max_len)
        return bucket_attention(q, k, v, packing, scale=1.0)

    def forward_packed(self, ids: torch.Tensor, packing: Packing, mask_counts: torch.Tensor) -> torch.Tensor:
        """ids [T] (device) -> last-layer states [T, dim] after the final LayerNorm (working dtype)."""
        m = self.model
        x = F.embedding(ids, m.embed_tokens.weight)
        if self.token_dropout:
            is_mask = (ids == m.mask_idx)
            lengths = packing.cu_seqlens[1:] - packing.cu_seqlens[:-1]
            ratio = mask_counts.to(torch.float32) / lengths.to(torch.float32)
            scale = (1 - MASK_RATIO_TRAIN) / (1 - ratio)
            x = (x.float().masked_fill(is_mask[:, None], 0.0) * scale[packing.seq_ids][:, None]).to(self.dtype)
        positions = packing.positions.to(torch.float32)
        tables = [_tables(positions, inv) for inv in self.inv_freq]
        T, H, D = ids.shape[0], self.heads, self.head_dim
        for index, layer in enumerate(m.layers):
            cos, sin = tables[0 if self.shared_inv_freq else index]
            attn = layer.self_attn
            h = _layer_norm(x, layer.self_attn_layer_norm)
            qkv = F.linear(h, layer.qkv_weight, layer.qkv_bias).view(T, 3, H, D)
            q, k = self._rotary(qkv, cos, sin, self.scaling)
            o = self._attention(q, k, qkv[:, 2], packing)
            x = x + F.linear(o.reshape(T, self.dim), attn.out_proj.weight, attn.out_proj.bias)
            h = _layer_norm(x, layer.final_layer_norm)
            h = self._fc1_gelu(h, layer.fc1)
            x = x + F.linear(h, layer.fc2.weight, layer.fc2.bias)
        return _layer_norm(x, m.emb_layer_norm_after)

    def _embed_sorted(self, token_arrays):
        """Token-id arrays (longest first) -> their mean residue states, [n, dim] float32 on the device."""
        lengths = np.fromiter((len(t) for t in token_arrays), dtype=np.int64, count=len(token_arrays))
        flat_np = np.concatenate(token_arrays)
        packing = Packing(lengths, self.device)
        starts = np.asarray(packing.starts)
        mask_counts = torch.from_numpy(np.add.reduceat((flat_np == self.alphabet.mask_idx).astype(np.int64), starts))
        states = self.forward_packed(pinned(torch.from_numpy(flat_np), self.device), packing,
                                     pinned(mask_counts, self.device))
        # residues 1..min(len, 1024) of each protein: drop BOS, EOS and what lies past 1024
        keep = np.minimum(TRUNCATION_SEQ_LENGTH, lengths - 2)
        owner = np.repeat(np.arange(len(lengths)), keep)
        select = np.arange(int(keep.sum())) - np.repeat(np.cumsum(keep) - keep, keep) + np.repeat(starts + 1, keep)
        select = pinned(torch.from_numpy(select), self.device)
        sums = torch.zeros((len(lengths), self.dim), dtype=torch.float32, device=self.device)
        sums.index_add_(0, pinned(torch.from_numpy(owner), self.device), states[select].float())
        return sums / pinned(torch.from_numpy(keep.astype(np.float32)), self.device)[:, None]

    def tokenize(self, proteins: list[str]) -> list[np.ndarray]:
        for protein in proteins:
            if not protein:
                raise ValueError("cannot embed an empty protein")
        return [self.token_ids(p) for p in proteins]

    def launch(self, token_arrays) -> Pending:
        """Queue the embedding of tokenized proteins; `.result()` gives float32 [N, dim] in input order."""
        return launch_in_budgets(token_arrays, self._embed_sorted, self.max_batch_tokens, self.device, self.dim)

    def embed(self, proteins: list[str]) -> np.ndarray:
        """float32 [N, dim], in input order; proteins sorted by length and packed in token budgets."""
        return self.launch(self.tokenize(proteins)).result()


def _tables(positions, inv_freq):
    """fp32 cos, sin [T, 1, D] for per-token positions, as fair-esm's RotaryEmbedding builds them."""
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return emb.cos(), emb.sin()


def _rotary_qk(qkv, cos, sin, scaling):
    """From qkv [T, 3, H, D]: q (scaled first, as fair-esm) and k rotated in fp32, returned in qkv's dtype."""
    half = qkv.shape[-1] // 2

    def rotate(x):
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    q = rotate(qkv[:, 0].float() * scaling)
    k = rotate(qkv[:, 1].float())
    return q.to(qkv.dtype), k.to(qkv.dtype)
