"""Exact mode against the original's own loops on one part: the same features, and how fast each is.

(a) the original: VirNucPro's extract_esm (fair-esm's loader, FastaBatchedDataset, get_batch_indices(2048,
extra_toks_per_seq=1), the batch converter; bench/original.py) and its one-sequence-per-forward DNABERT-S
loop; (b) virnucflow's exact mode in this process on the same files: the models of virnucflow.models.esm2 /
.dnabert_s and their `embed`, which is what virnucflow.embedding.embed_in_process (`virnucflow embed
--transport in-process`) runs once it has loaded them. Each model is loaded once per side, before its
clock starts; both sides warm up on 8 sequences first. Prints JSON: frames/s of each side per model,
the ratio exact/original, and the largest absolute difference of the features (0 on the same device).

    python bench/real_models.py --out /tmp/m --tokenizer .benchdata/tokenizer.json
    python bench/exact_vs_original.py --models-dir /tmp/m --frames 10000 --device cuda --out exact.json
    python bench/exact_vs_original.py --size tiny --models-dir /tmp/t --frames 50 --device cpu   # CI size
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import emit  # noqa: E402
from original import load_original_esm2, original_dnabert_s, original_esm2  # noqa: E402
from real_models import make  # noqa: E402
from workload import write_parts  # noqa: E402

WARMUP = 8


def _release(device):
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def _exact(model, seqs, warm_seqs):
    """virnucflow's exact embedding of a part by a loaded model, after a warm-up: (vectors, seconds)."""
    model.embed(warm_seqs)
    return _timed(model.embed, seqs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", required=True, help="models made by bench/real_models.py (made here if absent)")
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--tokenizer", help="the real DNABERT-S tokenizer.json, if the models are made here")
    ap.add_argument("--frames", type=int, default=10_000, help="kept frames in the part")
    ap.add_argument("--read-length", type=int, default=500)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    from virnucflow.embed_part import read_part
    from virnucflow.models.dnabert_s import load_dnabert_s
    from virnucflow.models.esm2 import load_esm2

    esm_path, dna_dir = make(args.models_dir, args.size, args.tokenizer)
    work = Path(tempfile.mkdtemp(prefix="virnucflow-exact-"))
    (fa, faa), = write_parts(work, 1, args.frames, args.read_length)
    (warm_fa, warm_faa), = write_parts(work / "warm", 1, WARMUP, args.read_length, seed=1)
    result = {"device": args.device, "frames": args.frames, "read_length": args.read_length, "size": args.size}

    # ESM-2: the original's extract_esm, then exact mode
    model, alphabet = load_original_esm2(esm_path, args.device)
    original_esm2(model, alphabet, warm_faa, args.device)
    by_label, original_s = original_esm2(model, alphabet, faa, args.device)
    del model
    _release(args.device)
    _, proteins = read_part(faa)
    import esm

    labels = esm.FastaBatchedDataset.from_file(str(faa)).sequence_labels
    original = np.stack([by_label[label] for label in labels])
    model = load_esm2(str(esm_path), device=args.device)
    exact, exact_s = _exact(model, proteins, read_part(warm_faa)[1])
    del model
    _release(args.device)
    result["esm2"] = _figures(original, original_s, exact, exact_s, args.frames)

    # DNABERT-S: the original's one-sequence-per-forward loop, then exact mode
    _, dna = read_part(fa)
    dnabert = load_dnabert_s(str(dna_dir), device=args.device)
    original_dnabert_s(dnabert, read_part(warm_fa)[1], args.device)
    original, original_s = original_dnabert_s(dnabert, dna, args.device)
    exact, exact_s = _exact(dnabert, dna, read_part(warm_fa)[1])
    result["dnabert_s"] = _figures(original, original_s, exact, exact_s, args.frames)

    emit(result, args.out)


def _figures(original, original_s, exact, exact_s, frames):
    return {"original_frames_per_s": round(frames / original_s, 2), "exact_frames_per_s": round(frames / exact_s, 2),
            "ratio_exact_to_original": round(original_s / exact_s, 4),
            "max_abs_diff": float(np.abs(original - exact).max()) if frames else 0.0,
            "bit_identical": bool(np.array_equal(original, exact))}


if __name__ == "__main__":
    main()
