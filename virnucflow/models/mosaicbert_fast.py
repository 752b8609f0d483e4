"""Fast DNABERT-S (MosaicBERT) embedding: packed fp16 forward over many DNA sequences at once.

Same features as `virnucflow.models.dnabert_s.DnabertS.embed` (last hidden state, mean over ALL
tokens, [CLS] and [SEP] included), computed differently:

- fp16 weights and activations; LayerNorm statistics (inside `F.layer_norm`), softmax (inside the
  attention kernel) and the mean pooling (fp32 accumulation) in fp32. The LayerNorm scales and shifts
  themselves stay fp32 (a few kB): rounded to fp16 they were the largest single source of difference
  from fp32 (post-LN: every layer's output passes through them), more than half of it on CPU studies.
- sequences sorted longest first and packed into one [tokens, 768] tensor: no padding in any
  matrix product; attention is one SDPA call per run of equal-length sequences, with the ALiBi
  bias (`-slope * |i - j|`, the same slopes) as the additive `attn_mask`, so no padding mask is
  needed. (Flash varlen kernels in torch take no bias.) On CUDA that is the memory-efficient kernel
  (see `_setup_attention`).
- the weights are SHARED with the loaded MosaicBert module, converted in place once.
- default token budget 262,144 (4x ESM-2's): a 768-wide layer is too little work per kernel launch to
  keep the GPU busy at 64k tokens. The gated projection runs as two GEMMs on the two row blocks of its
  weight (views), so that GELU x gate reads contiguous rows (strided slices of one [T, 6144] output
  made it 40% of the GPU time); on CUDA torch.compile fuses it into one pass, and each residual add
  into its LayerNorm.

`precision` (the setting embedding.fast_dnabert_precision; DNABERT_PRECISIONS of virnucflow.embedding_settings):
"fp16" is the above. "fp16-split" keeps fp16 products but removes the rounding of the weights, the largest
source of difference from fp32 that "fp16" leaves (bench/dnabert_rounding.py; keeping the residual stream or
attention in fp32 changed nothing there, nor on the H200): each weight W is stored as two fp16 halves,
hi = fp16(W) and lo = fp16((W - hi) * 2^12), side by side along the inner dimension, and each product takes
[x, x * 2^-12] (fp16) as its input, so that one GEMM of twice the inner width sums x @ hi + x @ lo * 2^-12
in fp32: W to 22 bits. Products come out in fp32 where cuBLAS can (`torch.mm(..., out_dtype=torch.float32)`;
rounded to fp16 they keep 70% of the difference), the residual stream and the embedding tables stay fp32;
attention is fp16. Twice the GEMM work of "fp16". "fp32" runs the same packed path in fp32 (TF32 off).
`dtype=torch.float32` is "fp32" (the agreement test).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from virnucflow.models import compiler
from virnucflow.models.mosaicbert import alibi_bias
from virnucflow.models.numerics import exact_numerics
from virnucflow.models.packed import Packing, Pending, bucket_attention, launch_in_budgets, pinned


# precision -> (weights and products, residual stream, attention)
_LO_SHIFT = 12  # fp16-split: lo = (W - hi) * 2^12 is a normal fp16 number; the inputs take the 2^-12
_DTYPES = {"fp16": (torch.float16, torch.float16, torch.float16),
           "fp16-split": (torch.float16, torch.float32, torch.float16),
           "fp32": (torch.float32, torch.float32, torch.float32)}


def _layer_norm(x, ln, dtype):
    """LayerNorm with fp32 scale and shift over x (computed in fp32, returned in `dtype`)."""
    return F.layer_norm(x.float(), ln.normalized_shape, ln.weight, ln.bias, ln.eps).to(dtype)


class FastDnabertS:
    """Packed half-precision DNABERT-S; `embed` matches `DnabertS.embed` to cosine >= 0.999."""

    def __init__(self, exact, dtype=None, device=None, max_batch_tokens=262144, compile=None,
                 attention="auto", precision="fp16"):
        if precision not in _DTYPES:
            raise ValueError(f"unknown DNABERT-S precision {precision!r} (use {', '.join(_DTYPES)})")
        if dtype is not None:  # a bare dtype: the path all in that dtype
            self.dtype = self.residual_dtype = self.attention_dtype = dtype
        else:
            self.dtype, self.residual_dtype, self.attention_dtype = _DTYPES[precision]
        self.precision = precision if dtype is None else str(dtype).replace("torch.float", "fp")
        if self.dtype == torch.float32:
            exact_numerics()
        self.tokenizer = exact.tokenizer
        self.name = exact.name
        self.dim = exact.dim
        self.device = torch.device(device or exact.device)
        self.max_batch_tokens = max_batch_tokens
        config = exact.model.config
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.intermediate = config.intermediate_size
        model = exact.model
        self.split = self.precision == "fp16-split"
        if self.split:
            self._split_weights(model)
        norms = [model.embeddings.LayerNorm] + [n for layer in model.encoder.layer
                                                for n in (layer.attention.output.LayerNorm, layer.mlp.layernorm)]
        fp32_norms = [(n.weight.detach().float().clone(), n.bias.detach().float().clone()) for n in norms]
        self.model = model.to(self.dtype).to(self.device)
        self._post_norms = norms[1:]
        for norm, (weight, bias) in zip(norms, fp32_norms):  # LayerNorm scales and shifts stay fp32 (see above)
            norm.weight = torch.nn.Parameter(weight.to(self.device), requires_grad=False)
            norm.bias = torch.nn.Parameter(bias.to(self.device), requires_grad=False)
        self._bias = {}
        compiler.wait()  # the checks below import what the warm-up may be importing
        self._setup_products()
        self._setup_fusion(self.device.type == "cuda" if compile is None else compile)
        self._setup_attention(attention)

    def _split_weights(self, model):
        """fp16-split: every Linear's weight as [hi, lo] fp16 halves along its inner dimension, its bias fp32,
        the embedding tables fp32 (attributes beside the module's own, which are converted with the rest)."""
        for layer in model.encoder.layer:
            for linear in (layer.attention.self.Wqkv, layer.attention.output.dense, layer.mlp.gated_layers,
                           layer.mlp.wo):
                w = linear.weight.detach().float()
                hi = w.half()
                linear.split_weight = torch.cat([hi, ((w - hi.float()) * 2.0**_LO_SHIFT).half()], dim=1) \
                    .to(self.device)
                linear.split_bias = None if linear.bias is None else linear.bias.detach().float().to(self.device)
        emb = model.embeddings
        self._tables = (emb.word_embeddings.weight.detach().float().to(self.device),
                        emb.token_type_embeddings.weight.detach()[0].float().to(self.device))

    def _setup_products(self):
        """fp16-split: products returned in fp32 by cuBLAS itself (`out_dtype`) where this torch and device
        have it and it matches fp32 math; else the fp16 product, widened (its output rounding stays)."""
        self.products_fp32 = False
        if not self.split or self.device.type != "cuda":
            return
        try:
            g = torch.Generator(device=self.device).manual_seed(0)
            a, b = (torch.randn(64, 96, generator=g, device=self.device).half() for _ in range(2))
            out = torch.mm(a, b.t(), out_dtype=torch.float32)
            if out.dtype == torch.float32 and torch.allclose(out, a.float() @ b.float().t(), atol=1e-3, rtol=1e-3):
                self.products_fp32 = True
        except (TypeError, RuntimeError, NotImplementedError):  # this torch or device lacks it
            return

    def _input(self, x):
        """A product's input: x in fp16; in fp16-split [x, x * 2^-12], for the [hi, lo] weight halves."""
        x = x.to(self.dtype)
        return torch.cat([x, x * 2.0**-_LO_SHIFT], dim=1) if self.split else x

    def _linear(self, inputs, linear, rows=None):
        """inputs @ W.T + b of one of the model's Linears (`rows`: a row block of W, no bias)."""
        if not self.split:
            weight = linear.weight if rows is None else linear.weight[rows]
            return F.linear(inputs, weight, linear.bias if rows is None else None)
        weight = linear.split_weight if rows is None else linear.split_weight[rows]
        y = torch.mm(inputs, weight.t(), out_dtype=torch.float32) if self.products_fp32 else \
            torch.mm(inputs, weight.t()).float()
        return y + linear.split_bias if rows is None and linear.split_bias is not None else y

    def token_ids(self, seq: str) -> list[int]:
        return self.tokenizer.encode(seq).ids

    def count_tokens(self, seq: str) -> int:
        return len(self.token_ids(seq))

    def tokenize(self, seqs: list[str]) -> list[np.ndarray]:
        """Token-id arrays of many sequences: one batched call of the Rust tokenizer (parallel, GIL released)."""
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)  # no offsets needed
        return [np.array(e.ids, dtype=np.int64) for e in encode(list(seqs))]

    def _alibi(self, length):
        bias = self._bias.get(length)
        if bias is None:
            # rows padded to a multiple of 16 elements: the memory-efficient kernel wants aligned bias rows and
            # would otherwise pad a copy on every call
            padded = torch.zeros((1, self.heads, length, -(-length // 16) * 16), dtype=self.attention_dtype,
                                 device=self.device)
            bias = padded[..., :length]
            bias.copy_(alibi_bias(self.heads, length, self.device))
            if len(self._bias) < 4096:
                self._bias[length] = bias
        return bias

    def _setup_attention(self, attention):
        """The SDPA kernel for the biased bucket attention. cuDNN's fused kernel (torch's pick on Hopper) builds
        an execution plan for every new (sequences, length) shape, milliseconds of host time each: the sidecar's
        batches, mixed from whatever requests are queued, rarely repeat a shape, and its GPU sat 76% idle.
        The memory-efficient kernel takes the same additive bias with no per-shape plan."""
        self.attention = "default"
        self._sdpa = None
        if attention == "auto":
            attention = "efficient" if self.device.type == "cuda" else "default"
        if attention != "efficient":
            return
        from torch.nn.attention import SDPBackend

        try:
            g = torch.Generator(device=self.device).manual_seed(0)
            lengths = [9, 9, 5]
            q, k, v = (torch.randn(sum(lengths), self.heads, self.head_dim, generator=g, device=self.device)
                       .to(self.attention_dtype) for _ in range(3))
            packing = Packing(lengths, self.device)
            a = bucket_attention(q, k, v, packing, self._alibi, backends=[SDPBackend.EFFICIENT_ATTENTION])
            b = bucket_attention(q.float(), k.float(), v.float(), packing, lambda n: self._alibi(n).float(),
                                 backends=[SDPBackend.MATH])
            if torch.allclose(a.float(), b, atol=1e-2, rtol=1e-2):
                self.attention, self._sdpa = "efficient", [SDPBackend.EFFICIENT_ATTENTION]
        except Exception:  # noqa: BLE001 - this torch or device lacks it: torch's own choice
            return

    def _setup_fusion(self, compile_):
        """torch.compile fuses the residual add into its LayerNorm, and GELU into the gate product: each one
        pass over memory instead of two or three (eagerly they were 30% of the GPU time). Used only if both
        compile and match the eager ops on this device."""
        norms = self._post_norms
        eager_add_norm = _add_norm_with(norms[0].eps)
        self._add_norm, self._gated_gelu, self.compiled = eager_add_norm, _gated_gelu, False
        if not compile_ or any(n.eps != norms[0].eps for n in norms):
            return
        try:
            add_norm = compiler.compile_for_tokens(_add_norm_with(norms[0].eps))
            gated_gelu = compiler.compile_for_tokens(_gated_gelu)
            g = torch.Generator(device=self.device).manual_seed(0)
            ln = self.model.encoder.layer[0].mlp.layernorm
            products = torch.float32 if self.split else self.dtype  # the dtypes that the forward passes
            with torch.inference_mode():  # as the forward runs: a graph of another grad mode would recompile
                for rows in (37, 1000):  # two sizes: the one compile serves every token count
                    y, x = (torch.randn(rows, ln.normalized_shape[0], generator=g, device=self.device).to(dtype)
                            for dtype in (products, self.residual_dtype))
                    a, b = (torch.randn(rows, self.intermediate, generator=g, device=self.device).to(products)
                            for _ in range(2))
                    if rows == 37:
                        compiler.mark_tokens(y, x, a, b)
                    norm = (ln.weight, ln.bias)
                    if not (torch.allclose(add_norm(y, x, *norm).float(), eager_add_norm(y, x, *norm).float(),
                                           atol=1e-2, rtol=1e-2)
                            and torch.allclose(gated_gelu(a, b).float(), _gated_gelu(a, b).float(), atol=1e-2, rtol=1e-2)):
                        return
            self._add_norm, self._gated_gelu, self.compiled = add_norm, gated_gelu, True
        except Exception:  # noqa: BLE001 - no compiler here: stay eager
            return

    def forward_packed(self, ids: torch.Tensor, packing: Packing) -> torch.Tensor:
        """ids [T] (device) -> last hidden states [T, hidden] (the residual stream's dtype)."""
        m = self.model
        emb = m.embeddings
        if self.split:
            x = F.embedding(ids, self._tables[0]) + self._tables[1]
        else:
            x = F.embedding(ids, emb.word_embeddings.weight) + emb.token_type_embeddings.weight[0]
        x = _layer_norm(x, emb.LayerNorm, self.residual_dtype)  # x: the residual stream
        T, H, D = ids.shape[0], self.heads, self.head_dim
        scale = 1.0 / math.sqrt(D)
        gate, value = slice(0, self.intermediate), slice(self.intermediate, None)
        for layer in m.encoder.layer:
            att = layer.attention
            qkv = self._linear(self._input(x), att.self.Wqkv).view(T, 3, H, D)
            a = self.attention_dtype
            o = bucket_attention(qkv[:, 0].to(a), qkv[:, 1].to(a), qkv[:, 2].to(a), packing, self._alibi,
                                 scale=scale, backends=self._sdpa)
            ln = att.output.LayerNorm
            x = self._add_norm(self._linear(self._input(o.reshape(T, -1)), att.output.dense), x, ln.weight, ln.bias)
            mlp = layer.mlp
            inputs = self._input(x)
            h = self._gated_gelu(self._linear(inputs, mlp.gated_layers, gate),
                                 self._linear(inputs, mlp.gated_layers, value))
            ln = mlp.layernorm
            x = self._add_norm(self._linear(self._input(h), mlp.wo), x, ln.weight, ln.bias)
        return x

    def _embed_sorted(self, token_arrays):
        """Token-id arrays (longest first) -> their mean last hidden states, [n, hidden] float32 on the device."""
        lengths = np.fromiter((len(t) for t in token_arrays), dtype=np.int64, count=len(token_arrays))
        packing = Packing(lengths, self.device)
        states = self.forward_packed(pinned(torch.from_numpy(np.concatenate(token_arrays)), self.device), packing)
        sums = torch.zeros((len(lengths), self.dim), dtype=torch.float32, device=self.device)
        sums.index_add_(0, packing.seq_ids, states.float())
        return sums / pinned(torch.from_numpy(lengths.astype(np.float32)), self.device)[:, None]

    def launch(self, token_arrays) -> Pending:
        """Queue the embedding of tokenized sequences; `.result()` gives float32 [N, dim] in input order."""
        return launch_in_budgets(token_arrays, self._embed_sorted, self.max_batch_tokens, self.device, self.dim)

    def embed(self, seqs: list[str]) -> np.ndarray:
        """float32 [N, dim], in input order; sequences sorted by length and packed in token budgets."""
        return self.launch(self.tokenize(seqs)).result()


def _add_norm_with(eps):
    """LayerNorm(y + x), MosaicBERT's post-norm residual step; eps is a constant, weights are arguments, so
    that one compiled kernel serves every layer."""

    def add_norm(y, x, weight, bias):  # fp32 scale and shift: the sum is normalised in fp32 (one kernel compiled)
        return F.layer_norm((y + x).float(), weight.shape, weight, bias, eps).to(x.dtype)  # x: the residual stream

    return add_norm


def _gated_gelu(gate, value):
    """erf GELU of the gate times the value, MosaicBERT's gated MLP."""
    return F.gelu(gate) * value
