"""The demo's tiny random models, written in the real formats: a 2-layer fair-esm ESM-2 checkpoint, a
MosaicBERT (DNABERT-S) hub directory with a DNA BPE tokenizer, and MLP classifiers pickled as the
original pickles them. Their predictions mean nothing; they exercise every loading path."""

import logging
from pathlib import Path

from virnucflow.classifier import write_random_classifier
from virnucflow.models.dnabert_s import load_dnabert_s, write_tiny_dnabert_s
from virnucflow.models.esm2 import load_esm2, write_tiny_esm2_checkpoint

log = logging.getLogger(__name__)

ESM2_FILE = "esm2_t2_demo.pt"
DNABERT_DIR = "dnabert_s_demo"


def write_demo_models(out_dir, seed=0):
    out_dir = Path(out_dir)
    esm2_path = write_tiny_esm2_checkpoint(out_dir / ESM2_FILE, seed=seed)
    dnabert_dir = write_tiny_dnabert_s(out_dir / DNABERT_DIR, seed=seed)
    input_dim = load_dnabert_s(str(dnabert_dir)).dim + load_esm2(str(esm2_path)).dim
    for size in (300, 500):
        write_random_classifier(out_dir / f"{size}_model.pth", input_dim=input_dim, seed=seed + size)
    log.info("demo models (input dim %d) written to %s", input_dim, out_dir)
    return out_dir
