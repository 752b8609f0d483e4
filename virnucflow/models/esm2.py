"""ESM-2 loading (fair-esm checkpoints, offline) and exact (original-numerics) protein embedding.

What the original does (VirNucPro `units.extract_esm`): fair-esm `esm2_t36_3B_UR50D`, fp32,
`repr_layers=[36]` (the final layer, after `emb_layer_norm_after`), batches of <= 2048 tokens
from `FastaBatchedDataset.get_batch_indices(2048, extra_toks_per_seq=1)`, collated by
`alphabet.get_batch_converter()` WITHOUT a truncation length, so the model always sees the whole
protein. Its `truncation_seq_length=1024` only bounds the mean: `t[i, 1 : min(1024, len) + 1]`,
i.e. residues 1..min(len, 1024); BOS (position 0), EOS and padding are excluded, residues past
1024 are seen by attention but left out of the mean. (fair-esm's scripts/extract.py instead
hands its 1022 to the batch converter, which cuts the input.) fair-esm's forward applies the token-dropout rescaling itself: embeddings are
multiplied by (1 - 0.15 * 0.8) / (1 - mask ratio) = 0.88 when no token is <mask>.

Exact mode here batches as the original does, with fair-esm's own code: the proteins given to `embed`
(a part, or one sidecar request) in the batches of `FastaBatchedDataset.get_batch_indices(2048,
extra_toks_per_seq=1)` (sorted by length, so they depend on lengths only), collated by the batch
converter through a DataLoader, fp32 with TF32 off (models.numerics), same slice and mean. A protein's
vector depends slightly on its batch mates (padding: fair-esm issue 273), so the same proteins in the
same batches are what makes the numbers the original's; results come back in input order.

Loading: `esm.pretrained.load_model_and_alphabet_local` fails on torch >= 2.6 and wants a
contact-regression file, so the checkpoint is read here with torch's weights_only unpickler
(virnucflow.safe_load), allowing `argparse.Namespace` (the real files pickle `cfg['model']` as one).
A checkpoint that pickles any other class or function is refused with a one-line error naming it:
a full unpickle, which fair-esm always did, would run code from the file. Only a checkpoint whose
sha256 the user pinned (`--unsafe-trust-pickle`, config `models.unsafe_trust_pickle_sha256`) is
unpickled in full, after its hash matched. The model is then built like fair-esm's
`_load_model_and_alphabet_core_v2` (the ESM2 class, ESM-1b alphabet, 'encoder.sentence_encoder.' /
'encoder.' prefixes removed, the same key check) but with its weights on the meta device and no random
init (virnucflow.models.empty_init), and the weights are assigned after an exact upcast to fp32 (what
fair-esm's `load_state_dict` copy does to the fp16 file), which skips ~22 s of random init for the 3B
model. The contact head (absent without the regression file, unused here) is zero-filled.
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from virnucflow import safe_load
from sidecar.exact_batches import EXTRA_TOKS_PER_SEQ, TOKS_PER_BATCH
from virnucflow.errors import InputError
from virnucflow.model_sources import esm2_checkpoint
from virnucflow.models.empty_init import empty_weights
from virnucflow.models.numerics import exact_numerics

TRUNCATION_SEQ_LENGTH = 1024
_PREFIX = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")
_CONTACT_KEYS = {"contact_head.regression.weight", "contact_head.regression.bias"}


class Esm2:
    """A loaded fair-esm ESM-2 model; `embed` reproduces the original's features."""

    def __init__(self, model, alphabet, name: str, device: str):
        self.model = model
        self.alphabet = alphabet
        self.batch_converter = alphabet.get_batch_converter()
        self.name = name
        self.device = device
        self.dim = model.embed_dim
        self.layer = model.num_layers

    def count_tokens(self, protein: str) -> int:
        return len(protein) + 2

    def embed(self, proteins: list[str]) -> np.ndarray:
        """float32 [N, dim] in input order: mean of the last layer over residues 1..min(len, 1024), computed
        in the original's batches of these proteins."""
        import esm

        if any(not protein for protein in proteins):
            raise ValueError("cannot embed an empty protein")
        exact_numerics()
        out = np.empty((len(proteins), self.dim), dtype=np.float32)
        dataset = esm.FastaBatchedDataset([str(i) for i in range(len(proteins))], proteins)
        batches = dataset.get_batch_indices(TOKS_PER_BATCH, extra_toks_per_seq=EXTRA_TOKS_PER_SEQ)
        loader = torch.utils.data.DataLoader(dataset, collate_fn=self.batch_converter, batch_sampler=batches)
        with torch.inference_mode():
            for labels, strs, tokens in loader:
                result = self.model(tokens.to(self.device), repr_layers=[self.layer])
                representation = result["representations"][self.layer]
                for i, label in enumerate(labels):
                    end = min(TRUNCATION_SEQ_LENGTH, len(strs[i])) + 1
                    out[int(label)] = representation[i, 1:end].mean(0).cpu().numpy()
        return out


def read_checkpoint(path: Path, trusted=()) -> dict:
    """The checkpoint's data, unpickling only tensors and argparse.Namespace unless its sha256 is in `trusted`."""
    try:
        return safe_load.load(
            path, allowed=[argparse.Namespace], trusted=trusted, mmap=zipfile.is_zipfile(path),
            needs="an ESM-2 checkpoint holds only tensors and argparse.Namespace")
    except InputError:
        raise
    except Exception as error:  # torch raises RuntimeError, EOFError, ... for a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: not a readable ESM-2 checkpoint ({reason}); fetch it again") from None


def build_model(data: dict, where: str, dtype=torch.float32):
    """ESM2 + alphabet from checkpoint data, as fair-esm's v2 loader but without random init. The floating
    weights in `dtype`: fp32 as fair-esm; fp16 for the fast path, which then skips converting the fp16 file
    to fp32 and back (the same values: fp16 -> fp32 is exact), seconds of a 3B model's start."""
    import esm
    from esm.model.esm2 import ESM2

    try:
        cfg = data["cfg"]["model"]
        raw_state = data["model"]
        shape = (cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_attention_heads)
        token_dropout = cfg.token_dropout
    except (KeyError, TypeError, AttributeError) as error:
        raise InputError(f"{where} is not a fair-esm ESM-2 checkpoint ({error!r})") from error
    state = {
        _PREFIX.sub("", key): value.to(dtype) if value.is_floating_point() else value
        for key, value in raw_state.items()
    }
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    with empty_weights():
        model = ESM2(*shape, alphabet=alphabet, token_dropout=token_dropout)
    expected = set(model.state_dict())
    missing = expected - _CONTACT_KEYS - state.keys()
    unexpected = state.keys() - expected
    if missing or unexpected:
        raise InputError(
            f"{where} does not fit ESM-2 {shape}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=False, assign=True)
    head = model.contact_head.regression
    if head.weight.is_meta:  # new zero tensors: an op on the meta ones (to_empty) would import sympy, seconds
        head.weight = torch.nn.Parameter(torch.zeros(head.weight.shape), requires_grad=False)
        head.bias = torch.nn.Parameter(torch.zeros(head.bias.shape), requires_grad=False)
    return model, alphabet


def load_esm2(source: str, device: str = "cpu", trusted=(), dtype=torch.float32) -> Esm2:
    """Load a fair-esm ESM-2 checkpoint (name in the torch hub cache, or .pt path); never downloads.

    trusted: sha256s of checkpoints that may be unpickled in full (see virnucflow.safe_load); dtype: of the
    floating weights (fp32 for exact mode; see build_model).
    """
    path = esm2_checkpoint(source)
    model, alphabet = build_model(read_checkpoint(path, trusted), str(path), dtype)
    model = model.to(device).eval().requires_grad_(False)
    return Esm2(model, alphabet, path.stem, device)


def write_tiny_esm2_checkpoint(
    path: str | Path, num_layers: int = 2, embed_dim: int = 32, heads: int = 4, seed: int = 0
) -> Path:
    """A tiny random ESM-2 checkpoint in the real fair-esm file format (fp16, like the real files).

    {'model': state dict with 'encoder.sentence_encoder.' (and 'encoder.lm_head.') keys, no
    contact head (that lives in the separate regression file), 'cfg': {'model': Namespace}}.
    Name the file esm2_*.pt so that fair-esm treats it as ESM-2.
    """
    import esm
    from esm.model.esm2 import ESM2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
        model = ESM2(num_layers, embed_dim, heads, alphabet=alphabet, token_dropout=True)
        state = {}
        for key, value in model.state_dict().items():
            if key in _CONTACT_KEYS:
                continue
            if "layer_norm" in key:  # make LayerNorms non-trivial so a wrong load shows
                value = value + 0.1 * torch.randn(value.shape)
            prefix = "encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder."
            state[prefix + key] = value.half()
    cfg = argparse.Namespace(
        _name="esm2",
        arch="esm2",
        encoder_layers=num_layers,
        encoder_embed_dim=embed_dim,
        encoder_ffn_embed_dim=4 * embed_dim,
        encoder_attention_heads=heads,
        token_dropout=True,
        max_positions=1024,
        dropout=0.0,
        attention_dropout=0.0,
    )
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    return path
