"""ESM-2 and DNABERT-S throughput on one GPU: the original's settings, exact mode, fast mode; and fast-vs-exact
agreement on >= 10,000 frames of realistic 500 bp and 300 bp inputs.

Two phases, meant to run at once on two GPUs of one machine:

    python bench/real_models.py --out /tmp/m --tokenizer .benchdata/tokenizer.json
    python bench/throughput.py reference --models-dir /tmp/m --device cuda:1 --ref /tmp/ref.npz &
    python bench/throughput.py speed --models-dir /tmp/m --device cuda:0 --ref /tmp/ref.npz --out speed.json

`speed` measures, on its device: the fp16 and bf16 matmul ceiling (8192^3) in the same run; per model and
workload, sequences/s, tokens/s and achieved TFLOP/s (useful FLOPs: 2 x weight-matrix parameters per token
plus 4 x L x width per token and layer for attention; the original's ESM forward also runs the unused LM
head, not counted) for the original's settings (ESM-2: fair-esm, fp32, 2048-token batches; DNABERT-S: fp32,
one sequence per call — which is also exact mode for DNABERT-S), exact mode (fp32; ESM-2 in the original's
batches since issue 12, one protein per forward before) and fast mode; a token-budget sweep; a torch.profiler
table of the top CUDA kernels of one fast batch per model. It then waits for `reference` and writes the agreement figures: the reference is the packed
path in fp32 (TF32 off) on all agreement frames, itself checked against the exact path (fp32; ESM-2 in the
original's batches) on a subset; fast embeddings are compared per sequence (cosine), and through a random-weight
classifier (virnucflow.classifier.write_random_classifier) for labels and scores.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agreement import calibrated_classifier, classifier_agreement, embedding_summary  # noqa: E402
from real_models import ESM_SIZES  # noqa: E402
from workload import many_frames  # noqa: E402

from virnucflow.models.dnabert_s import load_dnabert_s  # noqa: E402
from virnucflow.models.esm2 import TRUNCATION_SEQ_LENGTH, load_esm2  # noqa: E402
from virnucflow.models.esm2_fast import FastEsm2  # noqa: E402
from virnucflow.models.mosaicbert_fast import FastDnabertS  # noqa: E402
from virnucflow.models.packed import embed_stream  # noqa: E402

RESULT = {}


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def save(out):
    if out:
        Path(out).write_text(json.dumps(RESULT, indent=1))


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    value = fn()
    sync(device)
    return value, time.perf_counter() - t0


def model_paths(models_dir, size):
    d = Path(models_dir)
    return d / f"esm2_t{ESM_SIZES[size]['num_layers']}_{size}_random.pt", d / f"dnabert_s_{size}_random"


def workloads(n):
    """{'500bp': frames, '300bp': frames}: n frames each, for the timings."""
    return {"500bp": many_frames(n, 500, seed=0, workers=8), "300bp": many_frames(n, 300, seed=1, workers=8)}


# ---- FLOPs ------------------------------------------------------------------------------------------------

def esm_flops(lengths, layers, dim):
    per_token = 2 * layers * (4 * dim * dim + 2 * dim * 4 * dim)
    return sum(per_token * n + 4 * layers * dim * n * n for n in lengths)


def dnabert_flops(lengths, layers, dim, inter):
    per_token = 2 * layers * (4 * dim * dim + 3 * dim * inter)
    return sum(per_token * n + 4 * layers * dim * n * n for n in lengths)


def ceiling(device, size):
    out = {}
    n = 8192 if str(device).startswith("cuda") else 256
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        reps = 20 if str(device).startswith("cuda") else 2
        _, dt = timed(lambda: [a @ b for _ in range(reps)], device)
        out[name] = 2 * n ** 3 * reps / dt / 1e12
    log("matmul ceiling TFLOP/s", out)
    return out


def rate(seqs, tokens, flops, seconds, peak):
    tf = flops / seconds / 1e12
    return {"sequences": seqs, "tokens": tokens, "seconds": round(seconds, 4), "seq_per_s": seqs / seconds,
            "tokens_per_s": tokens / seconds, "tflops": tf, "fraction_of_fp16_ceiling": tf / peak}


# ---- profiling --------------------------------------------------------------------------------------------

def profile(fn, device, top=15):
    if not str(device).startswith("cuda"):
        return None
    try:
        return _profile(fn, device, top)
    except Exception as exc:  # noqa: BLE001 - a profiler problem must not lose the other figures
        return {"error": f"{exc.__class__.__name__}: {exc}"}


def _profile(fn, device, top):
    from torch.profiler import ProfilerActivity, profile as prof

    fn()
    sync(device)
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        t0 = time.perf_counter()
        fn()
        sync(device)
        wall = time.perf_counter() - t0
    rows = []
    total = 0.0
    for e in p.key_averages():
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if t > 0 and str(getattr(e, "device_type", "")).endswith("CUDA"):
            rows.append((e.key, t / 1e3, e.count))
            total += t / 1e3
    rows.sort(key=lambda r: -r[1])
    return {"wall_ms": wall * 1e3, "kernel_ms": total, "gpu_busy_fraction": total / (wall * 1e3),
            "top": [{"kernel": k[:120], "ms": round(ms, 3), "share": round(ms / total, 4), "calls": c}
                    for k, ms, c in rows[:top]]}


# ---- original settings ------------------------------------------------------------------------------------

def esm_original(exact, proteins):
    """fair-esm as VirNucPro runs it: FastaBatchedDataset batches of <= 2048 tokens, fp32, repr layer 36."""
    from esm.data import FastaBatchedDataset

    dataset = FastaBatchedDataset([str(i) for i in range(len(proteins))], proteins)
    batches = dataset.get_batch_indices(2048, extra_toks_per_seq=1)
    out = np.empty((len(proteins), exact.dim), dtype=np.float32)
    with torch.inference_mode():
        for batch in batches:
            _, strs, tokens = exact.batch_converter([(str(i), proteins[i]) for i in batch])
            reps = exact.model(tokens.to(exact.device), repr_layers=[exact.layer])["representations"][exact.layer]
            for j, i in enumerate(batch):
                end = min(TRUNCATION_SEQ_LENGTH, len(proteins[i])) + 1
                out[i] = reps[j, 1:end].mean(0).cpu().numpy()
    return out


# ---- phases -----------------------------------------------------------------------------------------------

def agreement_set(agree_n):
    """The agreement frames, the same in both phases: agree_n/2 from 500 bp reads, then agree_n/2 from 300 bp."""
    half = agree_n // 2
    rows = many_frames(half, 500, seed=100, workers=8) + many_frames(half, 300, seed=101, workers=8)
    return {"dna": [f[1] for f in rows], "protein": [f[2] for f in rows]}


def phase_reference(args):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = args.device
    esm_path, dna_dir = model_paths(args.models_dir, args.size)
    agree = agreement_set(args.agree_frames)
    out = {}
    dna = load_dnabert_s(str(dna_dir), device=device)
    sub = args.check_exact
    out["dna_exact_subset"] = dna.embed(agree["dna"][:sub])
    fast32 = FastDnabertS(dna, dtype=torch.float32, max_batch_tokens=args.budget)
    out["dna_ref"], dt = timed(lambda: fast32.embed(agree["dna"]), device)
    log(f"reference DNABERT-S packed fp32: {len(agree['dna'])} seqs in {dt:.1f} s")
    del dna, fast32
    if args.only_dna:
        np.savez(args.ref + ".tmp.npz", **out)
        os.replace(args.ref + ".tmp.npz", args.ref)
        return
    esm = load_esm2(str(esm_path), device=device)
    out["esm_exact_subset"], dt = timed(lambda: esm.embed(agree["protein"][:sub]), device)
    log(f"reference ESM-2 exact fp32 (the original's batches): {sub} seqs in {dt:.1f} s")
    fast32 = FastEsm2(esm, dtype=torch.float32, max_batch_tokens=args.budget)
    out["esm_ref"], dt = timed(lambda: fast32.embed(agree["protein"]), device)
    log(f"reference ESM-2 packed fp32: {len(agree['protein'])} seqs in {dt:.1f} s")
    tmp = args.ref + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, args.ref)


def phase_speed(args):
    device = args.device
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    esm_path, dna_dir = model_paths(args.models_dir, args.size)
    RESULT.update(device=device, torch=torch.__version__, args=vars(args),
                  gpu=torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu")
    RESULT["ceiling_tflops"] = ceil = ceiling(device, args.size)
    peak = ceil["fp16"]
    work = workloads(args.frames)
    agree = agreement_set(args.agree_frames)
    fast_agree = {}
    RESULT["dnabert_s"], RESULT["esm2"] = {}, {}

    # ---- DNABERT-S ----
    t0 = time.perf_counter()
    dna = load_dnabert_s(str(dna_dir), device=device)
    cfg = dna.model.config
    RESULT["dnabert_s"]["load_s"] = time.perf_counter() - t0

    def dflops(seqs):
        lengths = [len(e.ids) for e in dna.tokenizer.encode_batch(seqs)]
        return lengths, dnabert_flops(lengths, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size)

    for wname, rows in (work.items() if args.original_frames else ()):
        seqs = [f[1] for f in rows[:args.original_frames]]
        lengths, fl = dflops(seqs)
        dna.embed(seqs[:5])
        _, dt = timed(lambda: dna.embed(seqs), device)
        r = rate(len(seqs), sum(lengths), fl, dt, peak)
        RESULT["dnabert_s"][f"original_{wname}"] = RESULT["dnabert_s"][f"exact_{wname}"] = r
        log(f"DNABERT-S original/exact {wname}: {r['seq_per_s']:.0f} seq/s {r['tokens_per_s']:.0f} tok/s")
        save(args.out)
    # Variants on the same weights; every timing runs on frames no earlier timing has seen, because cuDNN caches
    # an execution plan per attention shape and repeated inputs would hide the cost of building them.
    variants = {}
    dna_variants = (("eager_cudnn", False, "default"), ("fused_cudnn", None, "default"), ("default", None, "auto"))
    fresh = {}
    for wname, bp in (("500bp", 500), ("300bp", 300)):
        pool = many_frames(args.frames * args.dna_reps * 2 * len(dna_variants), bp, seed=100 + bp, workers=16)
        fresh[wname] = iter([pool[i:i + args.frames] for i in range(0, len(pool), args.frames)])
    for variant, compile_, attention in dna_variants:
        fast, dt = timed(lambda: FastDnabertS(dna, dtype=torch.float16, max_batch_tokens=args.dna_budget,
                                              compile=compile_, attention=attention), device)
        res = variants[variant] = {"init_s": dt, "compiled": fast.compiled, "attention": fast.attention}
        fast_agree["dna"] = fast.embed(agree["dna"])  # also the warm-up; the default variant's is kept
        for wname, rows in work.items():
            fast.embed([f[1] for f in rows[:2000]])
            calls = [[f[1] for f in next(fresh[wname])] for _ in range(args.dna_reps)]
            lengths, fl = dflops([s for c in calls for s in c])
            _, dt = timed(lambda: [fast.embed(c) for c in calls], device)
            r = res[f"calls_{wname}"] = rate(len(lengths), sum(lengths), fl, dt, peak)
            log(f"DNABERT-S fast {variant} {wname}, {args.dna_reps} calls of {args.frames}: {r['seq_per_s']:.0f} "
                f"seq/s {r['tokens_per_s']:.0f} tok/s {r['tflops']:.0f} TFLOP/s ({r['fraction_of_fp16_ceiling']:.1%})")
            # the sidecar's way: chunks of one token budget, tokenized ahead, launched before the last is read
            seqs = [f[1] for _ in range(args.dna_reps) for f in next(fresh[wname])]
            lengths, fl = dflops(seqs)
            chunk = max(1, args.dna_budget // max(1, round(sum(lengths) / len(lengths))))
            chunks = [seqs[i:i + chunk] for i in range(0, len(seqs), chunk)]
            _, dt = timed(lambda: sum(len(v) for v in embed_stream(fast, chunks)), device)
            r = res[f"stream_{wname}"] = rate(len(seqs), sum(lengths), fl, dt, peak)
            log(f"DNABERT-S fast {variant} {wname}, stream of {len(chunks)} chunks: {r['seq_per_s']:.0f} seq/s "
                f"{r['tokens_per_s']:.0f} tok/s {r['tflops']:.0f} TFLOP/s ({r['fraction_of_fp16_ceiling']:.1%})")
            RESULT["dnabert_s"][f"fast_{wname}"] = res[f"calls_{wname}"]
            RESULT["dnabert_s"][f"fast_stream_{wname}"] = res[f"stream_{wname}"]
            save(args.out)
        seqs = [f[1] for f in work["500bp"][:args.frames]]
        tokens_once = fast.tokenize(seqs)
        _, tok_s = timed(lambda: fast.tokenize(seqs), "cpu")
        res["tokenize_s_per_1000"] = tok_s / len(seqs) * 1000
        batch = sorted(tokens_once, key=len, reverse=True)
        batch = batch[:max(1, args.dna_budget // max(len(batch[0]), 1))]
        res["profile"] = profile(lambda: fast._embed_sorted(batch), device)
        RESULT["dnabert_s"]["variants"] = variants
        RESULT["dnabert_s"].update(fast_init_s=res["init_s"], compiled=fast.compiled, budget=args.dna_budget)
        save(args.out)
    dna = fast = None  # free the DNABERT-S models before ESM-2 loads (the closures above still name dna)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    if args.only_dna:
        return dna_agreement(args, agree, fast_agree)

    # ---- ESM-2 ----
    t0 = time.perf_counter()
    esm = load_esm2(str(esm_path), device=device)
    RESULT["esm2"]["load_s"] = time.perf_counter() - t0
    layers, dim = esm.model.num_layers, esm.dim

    def eflops(proteins):
        lengths = [len(p) + 2 for p in proteins]
        return lengths, esm_flops(lengths, layers, dim)

    for wname, rows in (work.items() if args.original_frames else ()):
        proteins = [f[2] for f in rows[:args.original_frames]]
        lengths, fl = eflops(proteins)
        esm_original(esm, proteins[:8])
        _, dt = timed(lambda: esm_original(esm, proteins), device)
        r = rate(len(proteins), sum(lengths), fl, dt, peak)
        RESULT["esm2"][f"original_{wname}"] = r
        log(f"ESM-2 original {wname}: {r['seq_per_s']:.1f} seq/s {r['tokens_per_s']:.0f} tok/s "
            f"{r['tflops']:.0f} TFLOP/s")
        proteins = proteins[:args.exact_frames]
        lengths, fl = eflops(proteins)
        _, dt = timed(lambda: esm.embed(proteins), device)
        r = rate(len(proteins), sum(lengths), fl, dt, peak)
        RESULT["esm2"][f"exact_{wname}"] = r
        log(f"ESM-2 exact {wname}: {r['seq_per_s']:.1f} seq/s {r['tokens_per_s']:.0f} tok/s {r['tflops']:.0f} TFLOP/s")
        save(args.out)
    fast, dt = timed(lambda: FastEsm2(esm, dtype=torch.float16, max_batch_tokens=args.budget), device)
    RESULT["esm2"].update(attention=fast.attention, fast_init_s=dt, compiled=fast.compiled, budget=args.budget)
    fast_agree["esm"] = fast.embed(agree["protein"])  # also the warm-up
    for wname, rows in work.items():
        proteins = [f[2] for f in rows[:args.frames]]
        lengths, fl = eflops(proteins)
        _, dt = timed(lambda: fast.embed(proteins), device)
        r = rate(len(proteins), sum(lengths), fl, dt, peak)
        RESULT["esm2"][f"fast_{wname}"] = r
        log(f"ESM-2 fast {wname}: {r['seq_per_s']:.0f} seq/s {r['tokens_per_s']:.0f} tok/s "
            f"{r['tflops']:.0f} TFLOP/s ({r['fraction_of_fp16_ceiling']:.1%})")
        save(args.out)
    sweep = {}
    proteins = [f[2] for f in work["500bp"][:args.sweep_frames]]
    lengths, fl = eflops(proteins)
    for budget in args.sweep:
        fast.max_batch_tokens = budget
        fast.embed(proteins[:200])
        _, dt = timed(lambda: fast.embed(proteins), device)
        sweep[str(budget)] = rate(len(proteins), sum(lengths), fl, dt, peak)["tokens_per_s"]
    fast.max_batch_tokens = args.budget
    RESULT["esm2"]["budget_sweep_tokens_per_s"] = sweep
    log("ESM-2 fast budget sweep (tokens/s):", sweep)
    tokens = sorted((fast.token_ids(p) for p in proteins), key=len, reverse=True)
    batch, used = [], 0
    for t in tokens:
        if used + len(t) > args.budget:
            break
        batch.append(t)
        used += len(t)
    RESULT["esm2"]["profile"] = profile(lambda: fast._embed_sorted(batch), device)
    save(args.out)

    # ---- agreement against the reference phase ----
    ref = wait_for_reference(args)
    if ref is not None:
        from virnucflow.classifier import write_random_classifier

        sub = len(ref["esm_exact_subset"])
        agreement = {
            "frames": len(agree["dna"]),
            "reference_packed_fp32_vs_exact": {
                "dnabert_s": embedding_summary(ref["dna_exact_subset"], ref["dna_ref"][:sub]),
                "esm2": embedding_summary(ref["esm_exact_subset"], ref["esm_ref"][:sub])},
            "fast_vs_exact_subset": {
                "dnabert_s": embedding_summary(ref["dna_exact_subset"], fast_agree["dna"][:sub]),
                "esm2": embedding_summary(ref["esm_exact_subset"], fast_agree["esm"][:sub])},
            "fast_vs_reference": {
                "dnabert_s": embedding_summary(ref["dna_ref"], fast_agree["dna"]),
                "esm2": embedding_summary(ref["esm_ref"], fast_agree["esm"])},
        }
        clf = Path(args.ref).with_suffix(".classifier.pth")
        write_random_classifier(clf, input_dim=ref["dna_ref"].shape[1] + ref["esm_ref"].shape[1])
        agreement["classifier_random_as_is"] = classifier_agreement(clf, ref["dna_ref"], ref["esm_ref"],
                                                                    fast_agree["dna"], fast_agree["esm"])
        calibrated = calibrated_classifier(clf, np.concatenate([ref["dna_ref"], ref["esm_ref"]], axis=1))
        agreement["classifier"] = classifier_agreement(calibrated, ref["dna_ref"], ref["esm_ref"],
                                                       fast_agree["dna"], fast_agree["esm"])
        half = len(agree["dna"]) // 2
        for part, rows in (("500bp", slice(0, half)), ("300bp", slice(half, None))):
            agreement[f"classifier_{part}"] = classifier_agreement(
                calibrated, ref["dna_ref"][rows], ref["esm_ref"][rows], fast_agree["dna"][rows],
                fast_agree["esm"][rows])
        RESULT["agreement"] = agreement
        log("agreement:", json.dumps(agreement, indent=1))
    else:
        log("no reference embeddings: agreement not measured")
    save(args.out)


def wait_for_reference(args):
    """The reference phase's embeddings (up to --wait-ref seconds for them to appear), or None."""
    deadline = time.monotonic() + args.wait_ref
    while args.ref and not Path(args.ref).exists() and time.monotonic() < deadline:
        time.sleep(2)
    return np.load(args.ref) if args.ref and Path(args.ref).exists() else None


def dna_agreement(args, agree, fast_agree):
    ref = wait_for_reference(args)
    if ref is not None:
        sub = len(ref["dna_exact_subset"])
        RESULT["agreement"] = {"frames": len(agree["dna"]), "dnabert_s": {
            "reference_packed_fp32_vs_exact": embedding_summary(ref["dna_exact_subset"], ref["dna_ref"][:sub]),
            "fast_vs_exact_subset": embedding_summary(ref["dna_exact_subset"], fast_agree["dna"][:sub]),
            "fast_vs_reference": embedding_summary(ref["dna_ref"], fast_agree["dna"])}}
        log("agreement:", json.dumps(RESULT["agreement"], indent=1))
    save(args.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=("speed", "reference"))
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--frames", type=int, default=10000, help="frames per workload for the fast timings")
    ap.add_argument("--agree-frames", type=int, default=10000, help="frames compared fast vs exact (half each)")
    ap.add_argument("--original-frames", type=int, default=192, help="0 skips the original/exact timings")
    ap.add_argument("--exact-frames", type=int, default=96)
    ap.add_argument("--check-exact", type=int, default=64, help="reference: frames also run per-sequence exact")
    ap.add_argument("--budget", type=int, default=65536, help="fast-mode ESM-2 tokens per batch")
    ap.add_argument("--dna-budget", type=int, default=262144, help="fast-mode DNABERT-S tokens per batch")
    ap.add_argument("--sweep", type=int, nargs="*", default=[16384, 131072])
    ap.add_argument("--sweep-frames", type=int, default=2000)
    ap.add_argument("--dna-reps", type=int, default=3)
    ap.add_argument("--ref", help="reference embeddings (.npz) written by `reference`, read by `speed`")
    ap.add_argument("--wait-ref", type=float, default=300.0)
    ap.add_argument("--out", help="JSON results (rewritten after every step)")
    ap.add_argument("--only-dna", action="store_true", help="DNABERT-S only (timings and agreement)")
    args = ap.parse_args()
    (phase_speed if args.phase == "speed" else phase_reference)(args)


if __name__ == "__main__":
    main()
