"""Random-weight models for benchmarks, in the real formats: tiny (CI) or real size (ESM-2 3B, DNABERT-S)."""

from pathlib import Path

from virnucflow.models.dnabert_s import write_tiny_dnabert_s
from virnucflow.models.esm2 import write_tiny_esm2_checkpoint

SIZES = {
    # ESM-2 3B: 36 layers, 2560 wide, 40 heads; DNABERT-S: 12 layers, 768 wide, 12 heads, vocab 4096
    "real": dict(esm=dict(num_layers=36, embed_dim=2560, heads=40),
                 dnabert=dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, vocab_size=4096)),
    "tiny": dict(esm=dict(), dnabert=dict()),
}


def make_models(out_dir, size):
    """Return (esm2_checkpoint, dnabert_dir), writing them unless they are already there."""
    out_dir = Path(out_dir)
    layers = SIZES[size]["esm"].get("num_layers", 2)
    esm_path = out_dir / f"esm2_t{layers}_{size}_random.pt"
    dnabert_dir = out_dir / f"dnabert_s_{size}_random"
    if not esm_path.exists():
        write_tiny_esm2_checkpoint(esm_path, **SIZES[size]["esm"])
    if not (dnabert_dir / "model.safetensors").exists():
        write_tiny_dnabert_s(dnabert_dir, **SIZES[size]["dnabert"])
    return esm_path, dnabert_dir
