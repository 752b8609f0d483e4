"""DNABERT-S loading and exact (original-numerics) DNA embedding, plus a tiny model maker.

The original (VirNucPro `units.extract_DNABERT_S`) calls `tokenizer(seq, return_tensors='pt')`
(defaults: [CLS] ... [SEP], no truncation, no padding), runs ONE sequence per forward in fp32 (TF32
off: models.numerics) without an attention mask, and takes the mean of the last hidden state over ALL
tokens, [CLS] and [SEP] included. The tokenizer is read with the `tokenizers` library directly (importing
transformers costs seconds); the hub `tokenizer.json` enables truncation at 512 tokens, which
transformers switches off on every call, so it is switched off here too.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from virnucflow.errors import InputError
from virnucflow.model_sources import dnabert_directory
from virnucflow.models.mosaicbert import MosaicBert, load_mosaicbert
from virnucflow.models.numerics import exact_numerics

SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")


class DnabertS:
    """A loaded DNABERT-S (MosaicBERT) with its tokenizer."""

    def __init__(self, model: MosaicBert, tokenizer: Tokenizer, name: str, device: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.dim = model.config.hidden_size

    def token_ids(self, seq: str) -> list[int]:
        return self.tokenizer.encode(seq).ids

    def count_tokens(self, seq: str) -> int:
        return len(self.token_ids(seq))

    def embed(self, seqs: list[str]) -> np.ndarray:
        """float32 [N, dim]: mean over all tokens of the last hidden state, one per forward."""
        exact_numerics()
        out = np.empty((len(seqs), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for i, seq in enumerate(seqs):
                ids = torch.tensor([self.token_ids(seq)], dtype=torch.long, device=self.device)
                out[i] = torch.mean(self.model(ids), dim=1)[0].cpu().numpy()
        return out


def load_tokenizer(path: str | Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def load_dnabert_s(source: str, revision: str | None = None, device: str = "cpu", trusted=()) -> DnabertS:
    """Load from a local directory or an (offline-cached) hub id such as zhihan1996/DNABERT-S.

    trusted: sha256s of pytorch_model.bin files that may be unpickled in full (see virnucflow.safe_load).
    """
    directory = dnabert_directory(source, revision)
    for needed in ("config.json", "tokenizer.json"):
        if not (directory / needed).is_file():
            raise InputError(f"DNABERT-S model {source}: {needed} missing in {directory}")
    try:
        model = load_mosaicbert(directory, device=device, trusted=trusted)
    except (FileNotFoundError, ValueError) as error:
        raise InputError(f"DNABERT-S model {source}: {error}") from error
    return DnabertS(model, load_tokenizer(directory / "tokenizer.json"), source, device)


def _train_tiny_tokenizer(seed: int, vocab_size: int) -> Tokenizer:
    from tokenizers import models, pre_tokenizers, processors, trainers

    rng = random.Random(seed)
    corpus = ["".join(rng.choice("ACGT") for _ in range(400)) for _ in range(200)]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    # The hub tokenizer.json carries these; loaders must switch them off.
    tokenizer.enable_truncation(max_length=512)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    return tokenizer


def write_tiny_dnabert_s(
    directory: str | Path,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    vocab_size: int = 256,
) -> Path:
    """A tiny random DNABERT-S directory in the hub format (deterministic for a given seed)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tiny_tokenizer(seed, vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    config = {
        "architectures": ["BertModel"],
        "alibi_starting_size": 512,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": vocab,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special = {
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "unk_token": "[UNK]",
    }
    tokenizer_config = {
        "clean_up_tokenization_spaces": True,
        **special,
        "model_max_length": 512,
        "padding_side": "right",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n"
    )

    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    def layer_norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + normal(hidden_size), f"{prefix}.bias": normal(hidden_size)}

    h, i = hidden_size, intermediate_size
    state = {
        "embeddings.word_embeddings.weight": normal(vocab, h, std=0.5),
        "embeddings.token_type_embeddings.weight": normal(2, h, std=0.5),
        **layer_norm("embeddings.LayerNorm"),
    }
    for n in range(num_layers):
        p = f"encoder.layer.{n}"
        state |= {
            f"{p}.attention.self.Wqkv.weight": normal(3 * h, h, std=h**-0.5),
            f"{p}.attention.self.Wqkv.bias": normal(3 * h),
            f"{p}.attention.output.dense.weight": normal(h, h, std=h**-0.5),
            f"{p}.attention.output.dense.bias": normal(h),
            **layer_norm(f"{p}.attention.output.LayerNorm"),
            f"{p}.mlp.gated_layers.weight": normal(2 * i, h, std=h**-0.5),
            f"{p}.mlp.wo.weight": normal(h, i, std=i**-0.5),
            f"{p}.mlp.wo.bias": normal(h),
            **layer_norm(f"{p}.mlp.layernorm"),
        }
    state |= {"pooler.dense.weight": normal(h, h), "pooler.dense.bias": normal(h)}
    save_file(
        {f"bert.{k}": v.contiguous() for k, v in state.items()},
        str(directory / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return directory
