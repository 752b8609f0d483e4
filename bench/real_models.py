"""Random-weight models at real size, made fast: ESM-2 3B drawn on the GPU and written in the real fair-esm
format (fp16, like the real file, so the rotary `inv_freq` buffers are fp16-rounded as there), and
DNABERT-S (MosaicBERT, 12 x 768) with the real BPE tokenizer when its tokenizer.json is given.

Weights follow fair-esm's / PyTorch's default initialisation (Linear: U(+-1/sqrt(fan_in)), embeddings
N(0, 1)), with LayerNorms perturbed (weight 1 + 0.1 N, bias 0.1 N) as the tiny makers do. With these,
activations stay O(1) through 36 layers: no fp16 overflow, no rescaling was needed.

    python bench/real_models.py --out /tmp/models [--tokenizer .benchdata/tokenizer.json] [--size tiny]
"""

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

ESM_SIZES = {"real": dict(num_layers=36, embed_dim=2560, heads=40), "tiny": dict(num_layers=3, embed_dim=64, heads=4)}
DNA_SIZES = {"real": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, vocab_size=4096),
             "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=4096)}


def write_esm2(path, num_layers, embed_dim, heads, seed=0, device=None):
    import esm
    from esm.model.esm2 import ESM2

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    with torch.device("meta"):
        model = ESM2(num_layers, embed_dim, heads, alphabet=alphabet, token_dropout=True)
    gen = torch.Generator(device=device).manual_seed(seed)
    state = {}
    embed = None
    for key, meta in model.state_dict().items():
        if key.startswith("contact_head."):
            continue
        shape = meta.shape
        if key.endswith("rot_emb.inv_freq"):
            dim = 2 * shape[0]
            value = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        elif key in ("embed_tokens.weight", "lm_head.weight"):
            if embed is None:
                embed = torch.randn(shape, generator=gen, device=device)
                embed[alphabet.padding_idx] = 0
            value = embed
        elif "layer_norm" in key:
            noise = 0.1 * torch.randn(shape, generator=gen, device=device)
            value = noise + 1 if key.endswith("weight") else noise
        else:
            fan_in = shape[1] if len(shape) == 2 else _fan_in(model, key)
            bound = 1 / math.sqrt(fan_in)
            value = (torch.rand(shape, generator=gen, device=device) * 2 - 1) * bound
        prefix = "encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder."
        state[prefix + key] = value.half().cpu()
    cfg = argparse.Namespace(_name="esm2", arch="esm2", encoder_layers=num_layers, encoder_embed_dim=embed_dim,
                             encoder_ffn_embed_dim=4 * embed_dim, encoder_attention_heads=heads, token_dropout=True,
                             max_positions=1024, dropout=0.0, attention_dropout=0.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    return Path(path)


def _fan_in(model, key):
    """fan_in of the Linear owning a bias (or the lm_head bias: the embedding width)."""
    module_name = key.rsplit(".", 1)[0]
    module = model.get_submodule(module_name)
    weight = getattr(module, "weight", None)
    return weight.shape[1] if weight is not None and weight.ndim == 2 else model.embed_dim


def write_dnabert(directory, tokenizer=None, seed=0, **dims):
    from virnucflow.models.dnabert_s import write_tiny_dnabert_s

    directory = Path(directory)
    write_tiny_dnabert_s(directory, seed=seed, **dims)
    if tokenizer:
        config = json.loads((directory / "config.json").read_text())
        from tokenizers import Tokenizer

        size = Tokenizer.from_file(str(tokenizer)).get_vocab_size()
        if size > config["vocab_size"]:
            raise SystemExit(f"tokenizer has {size} tokens, the model {config['vocab_size']}")
        shutil.copy(tokenizer, directory / "tokenizer.json")
    return directory


def make(out, size="real", tokenizer=None):
    out = Path(out)
    esm_path = out / f"esm2_t{ESM_SIZES[size]['num_layers']}_{size}_random.pt"
    dna_dir = out / f"dnabert_s_{size}_random"
    t0 = time.perf_counter()
    if not esm_path.exists():
        write_esm2(esm_path, **ESM_SIZES[size])
    t1 = time.perf_counter()
    if not (dna_dir / "model.safetensors").exists():
        write_dnabert(dna_dir, tokenizer, **DNA_SIZES[size])
    print(f"models: {esm_path} ({t1 - t0:.1f} s), {dna_dir} ({time.perf_counter() - t1:.1f} s)", flush=True)
    write_manifest(out, esm_path, dna_dir)
    return esm_path, dna_dir


def write_manifest(out, esm_path, dna_dir):
    """Record each file's sha256 and size in `out/manifest.json`, as `virnucflow fetch-models` does when it
    downloads the real models, so that the workflow's fingerprints of these models come from the manifest
    (virnucflow.fingerprint) as for fetched ones, instead of reading 6 GB on a run's first DAG."""
    from virnucflow.fingerprint import MANIFEST_NAME, sha256_file
    from virnucflow.model_sources import dnabert_files

    t0 = time.perf_counter()
    files = {}
    for path in [esm_path, *dnabert_files(dna_dir)]:
        files[path.relative_to(out).as_posix()] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest = out / MANIFEST_NAME
    manifest.write_text(json.dumps({"files": files, "written_by": "bench/real_models.py"}, indent=1) + "\n")
    print(f"manifest: {manifest} ({len(files)} files, {time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--tokenizer", help="the real DNABERT-S tokenizer.json (else a tiny trained one)")
    args = ap.parse_args()
    make(args.out, args.size, args.tokenizer)
    sys.exit(0)
