"""Where fast DNABERT-S's fp16 difference comes from, and what each way of removing it buys: a CPU study.

fp16 matrix products on this CPU are ~40x slower than fp32, so each numeric variant is emulated in fp32 with
fp16 rounding at the points where the GPU path rounds: a product of fp16 inputs accumulated in fp32 is exact
in fp32 up to the order of the sums, which is what the tensor cores do. The forward is the packed one of
virnucflow.models.mosaicbert_fast (same weights, same order of operations); the reference is the same forward
with nothing rounded (fp32, which equals DnabertS.embed to ~1e-7: checked on the first frames).

Variants (ROUNDING): which points are rounded to fp16.
  fp16            the shipped default: weights, GEMM inputs and outputs, attention, residual stream, embeddings
                  (LayerNorm scales and shifts fp32)
  fp16-fp32-residual   the same with the residual stream in fp32
  fp16-fp32-attention  the same with attention (q, k, v, the ALiBi bias, the output) in fp32
  fp32-out        GEMM outputs fp32 (cuBLAS out_dtype), residual fp32; weights still fp16
  split           weights as two fp16 halves (hi + lo: 22 bits), GEMM outputs fp32, residual fp32, embeddings fp32:
                  the precision fp16-split where cuBLAS returns fp32 products
  split-fp16-out  the same with GEMM outputs rounded to fp16 (fp16-split where it cannot)
  split-fp16-residual  `split` with the residual stream (every LayerNorm's output) in fp16: what a split path
                  whose LayerNorms write fp16 (half the memory traffic of its fp32 stream) would lose
  split-mlp, split-attention, split-gated, split-wo, split-first-half, split-second-half
                  `split` for those products only (PARTIAL), fp16 weights and outputs for the others: where the
                  difference comes from, and what splitting part of the GEMM work would buy

  fp16-offset     fp16, minus the mean difference (fp16 - fp32) of the same model on a calibration set drawn at
                  load time (uniform random DNA of 300 and 500 bp, fixed seed, --calibration frames): a
                  load-time correction of the offset that every frame shares; costs one fp32 pass at load
  fp16-affine     fp16 + fp16 @ A + b, A (768 x 768) and b fitted at load by ridge regression of fp32 - fp16 on
                  the fp16 features of the same calibration set (--ridge: penalty as a fraction of the Gram's
                  mean eigenvalue; --rank: A of that rank, on the fp16 features' first principal components, 0
                  full); one row per --calibration x --ridge x --rank; costs the two passes at load, a solve,
                  and one 768 x 768 product per frame, applied to the fp32 pooled features

Figures per variant: 1 - mean cosine to the reference, and with a random classifier calibrated 50/50 on the
reference features (ESM-2 features random and the same on both sides: DNABERT-S's share alone) the mean logit
shift and mean |shift|. The flips of a classifier grow with mean |shift| (the density of logits at the
boundary times it), so the ratio of each variant's mean |shift| to fp16's scales the H200's measured flips.

    python bench/dnabert_rounding.py --models-dir /tmp/m --tokenizer .benchdata/tokenizer.json --frames 400
    python bench/dnabert_rounding.py --models-dir /tmp/m --tokenizer .benchdata/tokenizer.json --frames 240 \
        --variants fp16 fp16-offset fp16-affine split --calibration 512 1024 2048 --ridge 1e-3 1e-2 1e-1 --rank 0 64
"""

import argparse
import functools
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import emit  # noqa: E402
from agreement import calibrated_shift  # noqa: E402
from real_models import DNA_SIZES, write_dnabert  # noqa: E402
from workload import many_frames  # noqa: E402

from virnucflow.classifier import write_random_classifier  # noqa: E402
from virnucflow.models.dnabert_s import load_dnabert_s  # noqa: E402
from virnucflow.models.mosaicbert import alibi_bias  # noqa: E402
from virnucflow.models.packed import Packing, bucket_attention  # noqa: E402

ROUNDING = {  # point -> rounded to fp16?  (weights: "fp16", "split" (hi + lo) or "fp32")
    "fp32": dict(weights="fp32", gemm_in=False, gemm_out=False, residual=False, attention=False, embeddings=False),
    "fp16": dict(weights="fp16", gemm_in=True, gemm_out=True, residual=True, attention=True, embeddings=True),
    "fp16-fp32-residual": dict(weights="fp16", gemm_in=True, gemm_out=True, residual=False, attention=True,
                               embeddings=True),
    "fp16-fp32-attention": dict(weights="fp16", gemm_in=True, gemm_out=True, residual=True, attention=False,
                                embeddings=True),
    "fp32-out": dict(weights="fp16", gemm_in=True, gemm_out=False, residual=False, attention=True, embeddings=True),
    "split": dict(weights="split", gemm_in=True, gemm_out=False, residual=False, attention=True, embeddings=False),
    "split-fp16-out": dict(weights="split", gemm_in=True, gemm_out=True, residual=False, attention=True,
                           embeddings=False),
    "split-fp16-residual": dict(weights="split", gemm_in=True, gemm_out=False, residual=True, attention=True,
                                embeddings=False),
}
# split for some products only (fp32 out for those, fp16 for the others; residual and embeddings fp32 as in
# `split`): which products carry the difference, and what a split of part of the GEMM work would buy
PARTIAL = {"split-mlp": ("mlp.",), "split-attention": ("attention.",), "split-gated": ("mlp.gated_layers",),
           "split-wo": ("mlp.wo",), "split-first-half": tuple(f"layer.{i}." for i in range(6)),
           "split-second-half": tuple(f"layer.{i}." for i in range(6, 12))}
for _name, _parts in PARTIAL.items():
    ROUNDING[_name] = dict(weights="split", gemm_in=True, gemm_out=True, residual=False, attention=True,
                           embeddings=False, split_only=_parts)


def fp16(x):
    return x.half().float()


def split(w):
    """w as hi + lo, both fp16 values (lo scaled by 2^12 while stored, so that it stays a normal fp16 number)."""
    hi = fp16(w)
    return hi + fp16((w - hi) * 4096) / 4096


class Emulated:
    """The packed forward of FastDnabertS in fp32, rounded to fp16 where `rounding` says."""

    def __init__(self, model, rounding):
        self.model, self.r = model, rounding
        weights = {"fp16": fp16, "split": split, "fp32": lambda w: w}[rounding["weights"]]
        only = rounding.get("split_only")
        self.split_names = set()  # products of split weights, whose outputs stay fp32 in a partial split
        self.w = {}
        for name, p in model.named_parameters():
            if p.ndim != 2 or "embeddings" in name:
                continue
            if only is not None and not any(part in name for part in only):
                self.w[name] = fp16(p.detach())
            else:
                self.w[name] = weights(p.detach())
                if only is not None:
                    self.split_names.add(name)
        self.heads = model.config.num_attention_heads

    def _round(self, point, x):
        return fp16(x) if self.r[point] else x

    def _linear(self, x, name, bias=None):
        y = F.linear(self._round("gemm_in", x), self.w[name])
        if name in self.split_names:  # a partial split's products of split weights stay fp32
            return y if bias is None else y + bias.detach()
        y = self._round("gemm_out", y)
        return y if bias is None else self._round("gemm_out", y + bias.detach())

    def _alibi(self, length):
        return self._round("attention", alibi_bias(self.heads, length))

    def forward(self, ids, packing):
        m = self.model
        emb = m.embeddings
        table = self._round("embeddings", emb.word_embeddings.weight.detach())
        x = self._round("embeddings", table[ids] + self._round("embeddings", emb.token_type_embeddings.weight.detach()[0]))
        x = self._round("residual", F.layer_norm(x, (x.shape[1],), emb.LayerNorm.weight, emb.LayerNorm.bias,
                                                 emb.LayerNorm.eps))
        T, H = ids.shape[0], self.heads
        D = x.shape[1] // H
        for i, layer in enumerate(m.encoder.layer):
            p = f"encoder.layer.{i}."
            att = layer.attention
            qkv = self._linear(x, p + "attention.self.Wqkv.weight", att.self.Wqkv.bias).view(T, 3, H, D)
            q, k, v = (self._round("attention", qkv[:, j]) for j in range(3))
            o = self._round("attention", bucket_attention(q, k, v, packing, self._alibi, scale=1 / math.sqrt(D)))
            y = self._linear(o.reshape(T, -1), p + "attention.output.dense.weight", att.output.dense.bias)
            ln = att.output.LayerNorm
            x = self._round("residual", F.layer_norm(y + x, ln.normalized_shape, ln.weight, ln.bias, ln.eps))
            mlp = layer.mlp
            width = mlp.gated_layers.weight.shape[0] // 2
            gated = self._linear(x, p + "mlp.gated_layers.weight")
            h = self._round("gemm_in", F.gelu(gated[:, :width]) * gated[:, width:])
            y = self._linear(h, p + "mlp.wo.weight", mlp.wo.bias)
            ln = mlp.layernorm
            x = self._round("residual", F.layer_norm(y + x, ln.normalized_shape, ln.weight, ln.bias, ln.eps))
        return x

    @torch.no_grad()
    def embed(self, tokens, batch=64):
        out = []
        for start in range(0, len(tokens), batch):
            group = tokens[start:start + batch]
            lengths = np.array([len(t) for t in group])
            order = np.argsort(-lengths, kind="stable")
            packing = Packing(lengths[order], "cpu")
            states = self.forward(torch.from_numpy(np.concatenate([group[j] for j in order])), packing)
            sums = torch.zeros((len(group), states.shape[1]), dtype=torch.float64)
            sums.index_add_(0, packing.seq_ids, states.double())
            means = (sums / torch.from_numpy(lengths[order]).double()[:, None]).float().numpy()
            result = np.empty_like(means)
            result[order] = means
            out.append(result)
        return np.concatenate(out)


def calibration_features(exact, frames, name, cache=None, seed=12345):
    """The features of `name` (fp32 or fp16) on the calibration set, uniform random DNA of 500 and 300 bp
    alternately (fixed seed; the first n of a larger set are the set of n), and the seconds they took; kept in
    `cache` (a directory) when given, so that another run or a second process at the same time reuses them."""
    path = Path(cache) / f"calibration_{name}_{seed}_{frames}.npz" if cache else None
    if path and path.exists():
        kept = np.load(path)
        return kept["features"], float(kept["seconds"])
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), size=500 if i % 2 == 0 else 300)) for i in range(frames)]
    tokens = [np.array(exact.tokenizer.encode(s).ids, dtype=np.int64) for s in seqs]
    t0 = time.perf_counter()
    features = Emulated(exact.model, ROUNDING[name]).embed(tokens)
    seconds = time.perf_counter() - t0
    if path:
        np.savez(path, features=features, seconds=seconds)
    return features, seconds


def fp16_offset(rounded, reference):
    """mean(fp16 - fp32) of the model's features over the calibration set."""
    return (rounded.astype(np.float64) - reference.astype(np.float64)).mean(0).astype(np.float32)


def fp16_affine(rounded, reference, ridge, rank=0):
    """A and b with fp32 - fp16 = fp16 @ A + b fitted over the calibration set by ridge regression on the
    centred features, penalty ridge x trace(Gram) / width (the Gram's mean eigenvalue); with `rank`, the fit
    uses only the first `rank` principal components of the fp16 features (A of that rank)."""
    x = rounded.astype(np.float64)
    r = reference.astype(np.float64) - x
    mx, mr = x.mean(0), r.mean(0)
    xc = x - mx
    basis = np.linalg.svd(xc, full_matrices=False)[2][:rank].T if rank else np.eye(x.shape[1])
    z = xc @ basis
    penalty = ridge * np.einsum("ij,ij->", xc, xc) / x.shape[1]
    coef = np.linalg.solve(z.T @ z + penalty * np.eye(z.shape[1]), z.T @ (r - mr))
    a = basis @ coef
    return a.astype(np.float32), (mr - mx @ a).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", required=True, help="DNABERT-S is made here if absent (bench/real_models.py)")
    ap.add_argument("--tokenizer", help="the real DNABERT-S tokenizer.json")
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--variants", nargs="+", default=[v for v in ROUNDING if v != "fp32"],
                    choices=[*ROUNDING, "fp16-offset", "fp16-affine"])
    ap.add_argument("--calibration", type=int, nargs="+", default=[128],
                    help="frames of the fp16-offset and fp16-affine calibration set (a row for each)")
    ap.add_argument("--ridge", type=float, nargs="+", default=[1e-2],
                    help="fp16-affine's ridge penalties, as fractions of the Gram's mean eigenvalue")
    ap.add_argument("--rank", type=int, nargs="+", default=[0], help="fp16-affine's ranks of A (0: full)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    dna_dir = Path(args.models_dir) / f"dnabert_s_{args.size}_random"
    if not (dna_dir / "model.safetensors").exists():
        write_dnabert(dna_dir, args.tokenizer, **DNA_SIZES[args.size])
    exact = load_dnabert_s(str(dna_dir), device="cpu")
    half = args.frames // 2
    rows = many_frames(half, 500, seed=100, workers=2) + many_frames(args.frames - half, 300, seed=101, workers=2)
    tokens = [np.array(exact.tokenizer.encode(r[1]).ids, dtype=np.int64) for r in rows]
    result = {"frames": len(rows), "size": args.size, "tokens": int(sum(map(len, tokens))), "variants": {}}

    t0 = time.perf_counter()
    reference = Emulated(exact.model, ROUNDING["fp32"]).embed(tokens)
    result["reference_seconds"] = round(time.perf_counter() - t0, 1)
    check = exact.embed([r[1] for r in rows[:4]])
    result["reference_vs_dnabert_s_max_abs"] = float(np.abs(check - reference[:4]).max())
    rng = np.random.default_rng(7)
    esm = rng.standard_normal((len(rows), 2560)).astype(np.float32) * float(reference.std())
    classifier = Path(args.models_dir) / "rounding_classifier.pth"
    write_random_classifier(classifier, input_dim=reference.shape[1] + esm.shape[1], seed=3)
    base = None

    @functools.cache
    def emulated(name):
        return Emulated(exact.model, ROUNDING[name]).embed(tokens)

    @functools.cache
    def calibration(frames):  # the largest set's features once (kept in --models-dir), its first `frames` of them
        largest = max(args.calibration)
        (f32, s32), (f16, s16) = (calibration_features(exact, largest, n, cache=args.models_dir)
                                  for n in ("fp32", "fp16"))
        result["calibration_seconds"] = {"frames": largest, "fp32": round(s32, 1), "fp16": round(s16, 1)}
        return f16[:frames], f32[:frames]

    def corrected(name):  # (row name, features, what the row adds) for each setting of a variant
        if name == "fp16-offset":
            for frames in args.calibration:
                offset = fp16_offset(*calibration(frames))
                row = name if len(args.calibration) == 1 else f"{name} cal={frames}"
                yield row, emulated("fp16") - offset, {"calibration": frames,
                                                       "offset_norm": float(np.linalg.norm(offset))}
        elif name == "fp16-affine":
            for frames, ridge, rank in itertools.product(args.calibration, args.ridge, args.rank):
                rounded, reference_cal = calibration(frames)
                t0 = time.perf_counter()
                a, b = fp16_affine(rounded, reference_cal, ridge, rank)
                fit = time.perf_counter() - t0
                residual = reference_cal.astype(np.float64) - rounded
                left = residual - rounded @ a - b  # what the fit leaves of the centred residual, on its own set
                explained = 1 - np.square(left).sum() / np.square(residual - residual.mean(0)).sum()
                yield (f"{name} cal={frames} ridge={ridge:g} rank={rank or 'full'}",
                       emulated("fp16") + emulated("fp16") @ a + b,
                       {"calibration": frames, "ridge": ridge, "rank": rank or a.shape[0], "fit_seconds": round(fit, 3),
                        "calibration_residual_explained": round(float(explained), 3)})
        else:
            yield name, emulated(name), {}

    for name in args.variants:
        for row, fast, extra in corrected(name):
            figures = calibrated_shift(classifier, reference, esm, fast, esm)
            a, b = fast.astype(np.float64), reference.astype(np.float64)
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            entry = {"one_minus_cos_mean": float(1 - cos.mean()),
                     "mean_logit_shift": figures["mean_logit_shift"],
                     "mean_abs_logit_shift": figures["mean_abs_logit_shift"],
                     "labels_differ": figures["labels_differ"], **extra}
            if name == "fp16":
                base = entry
            if base:
                entry["abs_shift_vs_fp16"] = round(entry["mean_abs_logit_shift"] / base["mean_abs_logit_shift"], 3)
            result["variants"][row] = entry
            print(row, json.dumps(entry), flush=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
