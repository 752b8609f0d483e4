"""MosaicBERT (the DNABERT-S / DNABERT-2 architecture) in plain PyTorch, for inference.

Mirrors the plain-PyTorch attention path of the hub code `bert_layers.py` (zhihan1996/DNABERT-S,
MAGICS-LAB/DNABERT_2), the path that produced VirNucPro's features: word + token-type (type 0)
embeddings then LayerNorm (no position embeddings); per layer a fused Wqkv projection, scores
`q @ k^T / sqrt(d)` plus the ALiBi bias (slopes of `_get_alibi_head_slopes`, bias
`-slope * |i - j|` in fp32), softmax, output dense, post-LayerNorm with the residual; then the
gated-GELU MLP: `h = gated_layers(x)`, `act(h[:, :I]) * h[:, I:]` with the exact (erf) GELU,
`wo`, post-LayerNorm with the residual. Dropout is the identity (eval only). The hub code never
uses Triton here: with Triton present it silently computes attention in fp16 instead.

Hub checkpoints may prefix keys with `bert.`; pooler and MLM-head (`cls.`) weights are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from virnucflow import safe_load
from virnucflow.errors import InputError
from virnucflow.models.empty_init import empty_weights

_IGNORED_PREFIXES = ("pooler.", "cls.")


@dataclass(frozen=True)
class MosaicBertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    alibi_starting_size: int = 512

    @classmethod
    def from_dict(cls, raw: dict) -> "MosaicBertConfig":
        names = cls.__dataclass_fields__
        config = cls(**{k: v for k, v in raw.items() if k in names})
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not a multiple of "
                f"num_attention_heads {config.num_attention_heads}"
            )
        return config


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes, exactly as MosaicBERT's `_get_alibi_head_slopes`."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


def alibi_bias(n_heads: int, size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[1, heads, size, size] fp32 bias: -slope * |i - j| (same values at every size)."""
    position = torch.arange(size, device=device)
    relative = torch.abs(position[None, :] - position[:, None]).unsqueeze(0).expand(n_heads, -1, -1)
    slopes = torch.tensor(alibi_slopes(n_heads), dtype=torch.float32, device=device)
    return (slopes[:, None, None] * -relative).unsqueeze(0)


class Embeddings(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        token_types = self.token_type_embeddings(torch.zeros_like(input_ids))
        return self.LayerNorm(self.word_embeddings(input_ids) + token_types)


class SelfAttention(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, seqlen, hidden = x.shape
        qkv = self.Wqkv(x).view(batch, seqlen, 3, self.heads, self.head_dim)
        q = qkv[:, :, 0].permute(0, 2, 1, 3)
        k = qkv[:, :, 1].permute(0, 2, 3, 1)
        v = qkv[:, :, 2].permute(0, 2, 1, 3)
        scores = torch.matmul(q, k) / math.sqrt(self.head_dim) + bias
        probs = F.softmax(scores, dim=-1)
        return torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(batch, seqlen, hidden)


class SelfOutput(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = SelfOutput(config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class GatedMLP(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.intermediate = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gated_layers(x)
        h = F.gelu(h[..., : self.intermediate]) * h[..., self.intermediate :]
        return self.layernorm(self.wo(h) + x)


class Layer(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.attention = Attention(config)
        self.mlp = GatedMLP(config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attention(x, bias))


class Encoder(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))


class MosaicBert(nn.Module):
    """Embeddings + encoder; `forward` returns the last hidden state [B, T, H]."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids [B, T]; attention_mask [B, T] of 1 (token) / 0 (padding), or None.

        Padding is masked with the hub code's additive -10000 bias; padded rows come back as 0.
        """
        seqlen = input_ids.shape[1]
        bias = alibi_bias(self.config.num_attention_heads, seqlen, input_ids.device)
        if attention_mask is not None:
            mask = attention_mask[:, None, None, :].to(torch.float32)
            bias = (1.0 - mask) * -10000.0 + bias
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        return x


def read_state_dict(directory: Path, trusted=()) -> dict[str, torch.Tensor]:
    """model.safetensors, else pytorch_model.bin, keys without `bert.`.

    The .bin is unpickled with torch's weights_only unpickler (tensors only) unless its sha256 is in
    `trusted` (see virnucflow.safe_load); a refusal is an InputError.
    """
    safetensors_file = directory / "model.safetensors"
    bin_file = directory / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        raw = load_file(str(safetensors_file))
    elif bin_file.is_file():
        try:
            raw = safe_load.load(bin_file, trusted=trusted, needs="a pytorch_model.bin holds only tensors")
        except InputError:
            raise
        except Exception as error:  # torch raises RuntimeError, EOFError, ... for a damaged file
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"{bin_file} is not a readable weights file ({reason})") from None
    else:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {directory}")
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"{bin_file} holds a {type(raw).__name__}, not a state dict of tensors")
    state = {}
    for key, tensor in raw.items():
        key = key.removeprefix("bert.")
        if not key.startswith(_IGNORED_PREFIXES):
            state[key] = tensor
    return state


def load_mosaicbert(directory: str | Path, device: str | torch.device = "cpu", trusted=()) -> MosaicBert:
    """Build from `config.json` + weights without random init; fp32, eval mode."""
    directory = Path(directory)
    config = MosaicBertConfig.from_dict(json.loads((directory / "config.json").read_text()))
    state = {k: v.to(torch.float32) for k, v in read_state_dict(directory, trusted).items()}
    with empty_weights():
        model = MosaicBert(config)
    expected = set(model.state_dict())
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise ValueError(
            f"weights in {directory} do not fit the MosaicBERT config: "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    model.load_state_dict(state, assign=True)
    return model.to(device).eval().requires_grad_(False)
