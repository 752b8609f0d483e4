"""Fast DNABERT-S (MosaicBERT) embedding: packed fp16 forward over many DNA sequences at once.

Same features as `virnucflow.models.dnabert_s.DnabertS.embed` (last hidden state, mean over ALL
tokens, [CLS] and [SEP] included), computed differently:

- fp16 weights and activations; LayerNorm statistics (inside `F.layer_norm`), softmax (inside the
  attention kernel) and the mean pooling (fp32 accumulation) in fp32.
- sequences sorted longest first and packed into one [tokens, 768] tensor: no padding in any
  matrix product; attention is one SDPA call per run of equal-length sequences, with the ALiBi
  bias (`-slope * |i - j|`, the same slopes) as the additive `attn_mask`, so no padding mask is
  needed. (Flash varlen kernels in torch take no bias.)
- the weights are SHARED with the loaded MosaicBert module, converted in place once.
- default token budget 262,144 (4x ESM-2's): a 768-wide layer is too little work per kernel launch to
  keep the GPU busy at 64k tokens. The gated projection runs as two GEMMs on the two row blocks of its
  weight (views), so GELU and product are contiguous, vectorised passes (the strided slices of one
  [T, 6144] output were 40% of the GPU time, fused by torch.compile or not).

`dtype=torch.float32` runs the same packed path in fp32 (used on CPU by the agreement test).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from virnucflow.models.mosaicbert import alibi_bias
from virnucflow.models.packed import Packing, bucket_attention, embed_in_budgets, pinned


def _layer_norm(x, ln):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


class FastDnabertS:
    """Packed half-precision DNABERT-S; `embed` matches `DnabertS.embed` to cosine >= 0.999."""

    def __init__(self, exact, dtype=torch.float16, device=None, max_batch_tokens=262144):
        self.tokenizer = exact.tokenizer
        self.name = exact.name
        self.dim = exact.dim
        self.device = torch.device(device or exact.device)
        self.dtype = dtype
        self.max_batch_tokens = max_batch_tokens
        config = exact.model.config
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.intermediate = config.intermediate_size
        self.model = exact.model.to(dtype).to(self.device)
        self._bias = {}
        self.compiled = False  # torch.compile's fused gated GELU measured 3x slower than this eager split
        for layer in self.model.encoder.layer:  # gate and value halves as contiguous row blocks (views)
            weight = layer.mlp.gated_layers.weight
            layer.mlp.gate_weight = weight[: self.intermediate]
            layer.mlp.value_weight = weight[self.intermediate:]

    def token_ids(self, seq: str) -> list[int]:
        return self.tokenizer.encode(seq).ids

    def count_tokens(self, seq: str) -> int:
        return len(self.token_ids(seq))

    def count_tokens_many(self, seqs: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(seqs))]

    def _alibi(self, length):
        bias = self._bias.get(length)
        if bias is None:
            bias = alibi_bias(self.heads, length, self.device).to(self.dtype)
            if len(self._bias) < 4096:
                self._bias[length] = bias
        return bias

    def forward_packed(self, ids: torch.Tensor, packing: Packing) -> torch.Tensor:
        """ids [T] (device) -> last hidden states [T, hidden] (working dtype)."""
        m = self.model
        emb = m.embeddings
        x = F.embedding(ids, emb.word_embeddings.weight) + emb.token_type_embeddings.weight[0]
        x = _layer_norm(x, emb.LayerNorm)
        T, H, D = ids.shape[0], self.heads, self.head_dim
        scale = 1.0 / math.sqrt(D)
        for layer in m.encoder.layer:
            att = layer.attention
            qkv = F.linear(x, att.self.Wqkv.weight, att.self.Wqkv.bias).view(T, 3, H, D)
            o = bucket_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], packing, self._alibi, scale=scale)
            x = _layer_norm(F.linear(o.reshape(T, -1), att.output.dense.weight, att.output.dense.bias) + x,
                            att.output.LayerNorm)
            mlp = layer.mlp
            h = F.gelu(F.linear(x, mlp.gate_weight))  # contiguous: vectorised GELU and product
            h.mul_(F.linear(x, mlp.value_weight))
            x = _layer_norm(F.linear(h, mlp.wo.weight, mlp.wo.bias) + x, mlp.layernorm)
        return x

    def _embed_sorted(self, token_lists):
        lengths = [len(t) for t in token_lists]
        flat = torch.tensor([i for t in token_lists for i in t], dtype=torch.long)
        packing = Packing(lengths, self.device)
        states = self.forward_packed(pinned(flat, self.device), packing)
        sums = torch.zeros((len(lengths), self.dim), dtype=torch.float32, device=self.device)
        sums.index_add_(0, packing.seq_ids, states.float())
        return sums / pinned(torch.tensor(lengths, dtype=torch.float32), self.device)[:, None]

    def embed(self, seqs: list[str]) -> np.ndarray:
        """float32 [N, dim], in input order; sequences sorted by length and packed in token budgets."""
        tokens = [e.ids for e in self.tokenizer.encode_batch(list(seqs))]
        return embed_in_budgets(tokens, self._embed_sorted, self.max_batch_tokens, self.dim)
