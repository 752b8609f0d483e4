"""Fast mode against exact mode on one device, for each DNABERT-S precision of fast mode: the issue's point 3.

Exact features: ESM-2 in the original's batches (virnucflow.models.esm2, as `extract_esm`) and DNABERT-S one
sequence per forward, fp32, TF32 off. Fast features: FastEsm2 in fp16 (as a fast sidecar runs it) and
FastDnabertS in each precision of embedding.fast_dnabert_precision. For each, the figures of
bench/agreement.calibrated_shift against exact (a random classifier calibrated 50/50 on the exact features:
mean logit shift, label agreement, per-sequence cosine of each model), on all frames and per read length,
and the fast DNABERT-S frames/s. Frames: half from 500 bp reads, half from 300 bp (workload.many_frames).

    python bench/real_models.py --out /tmp/m --tokenizer .benchdata/tokenizer.json
    python bench/fast_precision.py --models-dir /tmp/m --frames 10000 --device cuda --out precision.json
    python bench/fast_precision.py --size tiny --models-dir /tmp/t --frames 100 --device cpu   # CI size
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import emit  # noqa: E402
from agreement import calibrated_shift  # noqa: E402
from real_models import make  # noqa: E402
from workload import many_frames  # noqa: E402

from virnucflow.classifier import write_random_classifier  # noqa: E402
from virnucflow.embedding_settings import DNABERT_PRECISIONS  # noqa: E402
from virnucflow.models.dnabert_s import load_dnabert_s  # noqa: E402
from virnucflow.models.esm2 import load_esm2  # noqa: E402
from virnucflow.models.esm2_fast import FastEsm2  # noqa: E402
from virnucflow.models.mosaicbert_fast import FastDnabertS  # noqa: E402


def timed(device, function, *args):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = function(*args)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def release(device):
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", required=True, help="models made by bench/real_models.py (made here if absent)")
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--tokenizer", help="the real DNABERT-S tokenizer.json, if the models are made here")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precisions", nargs="+", default=list(DNABERT_PRECISIONS), choices=DNABERT_PRECISIONS)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    device = args.device
    esm_path, dna_dir = make(args.models_dir, args.size, args.tokenizer)
    half = args.frames // 2
    rows = many_frames(half, 500, seed=100, workers=8) + many_frames(args.frames - half, 300, seed=101, workers=8)
    dna_seqs, proteins = [r[1] for r in rows], [r[2] for r in rows]
    parts = {"all": slice(None), "500bp": slice(0, half), "300bp": slice(half, None)}
    result = {"device": device, "frames": len(rows), "size": args.size, "esm2_fast": "fp16"}

    esm = load_esm2(str(esm_path), device=device)
    esm_exact, seconds = timed(device, esm.embed, proteins)
    result["esm2_exact_frames_per_s"] = round(len(rows) / seconds, 1)
    del esm
    release(device)
    fast_esm = FastEsm2(load_esm2(str(esm_path), device="cpu"), device=device)
    fast_esm.embed(proteins[:64])
    esm_fast, seconds = timed(device, fast_esm.embed, proteins)
    result["esm2_fast_frames_per_s"] = round(len(rows) / seconds, 1)
    del fast_esm
    release(device)

    dna = load_dnabert_s(str(dna_dir), device=device)
    dna_exact, seconds = timed(device, dna.embed, dna_seqs)
    result["dnabert_s_exact_frames_per_s"] = round(len(rows) / seconds, 1)
    del dna
    release(device)

    classifier = Path(args.models_dir) / "precision_classifier.pth"
    write_random_classifier(classifier, input_dim=dna_exact.shape[1] + esm_exact.shape[1], seed=3)
    result["precisions"] = {}
    for precision in args.precisions:
        fast = FastDnabertS(load_dnabert_s(str(dna_dir), device="cpu"), device=device, precision=precision)
        fast.embed(dna_seqs[:64])
        dna_fast, seconds = timed(device, fast.embed, dna_seqs)
        figures = {"dnabert_s_fast_frames_per_s": round(len(rows) / seconds, 1)}
        for name, rows_of in parts.items():
            figures[name] = calibrated_shift(classifier, dna_exact[rows_of], esm_exact[rows_of], dna_fast[rows_of],
                                             esm_fast[rows_of])
        # the shift with ESM-2 exact: what DNABERT-S alone contributes
        figures["all_dnabert_s_only"] = calibrated_shift(classifier, dna_exact, esm_exact, dna_fast, esm_exact)
        result["precisions"][precision] = figures
        print(precision, json.dumps(figures["all"]), flush=True)
        del fast
        release(device)
    emit(result, args.out)


if __name__ == "__main__":
    main()
