"""Where fast DNABERT-S's GPU time goes, per `embedding.fast_dnabert_precision`: tokens/s as a stream and a
torch.profiler table of one token budget, its kernels put in groups (issue 12 point 4: DNABERT-S at 2,000,000
tokens/s; point 3: what `fp16-split` adds).

    python bench/real_models.py --out /tmp/m --tokenizer .benchdata/tokenizer.json
    python bench/dnabert_profile.py --models-dir /tmp/m --device cuda --out dnabert_profile.json

For each precision: the stream (every frame in calls of --call frames, the next one tokenized and launched
while the GPU works, as the sidecar's compute thread does) of fresh 500 bp and 300 bp frames, tokens/s; then
one call of a full budget profiled: the GPU time of each group of kernels (GEMMs, attention, the compiled
fusions, elementwise passes, copies, ...), the ten largest kernels, and the call's wall time against the sum
of its kernels (the difference: tokenizing, and the GPU waiting for the host).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_models import DNA_SIZES, write_dnabert  # noqa: E402
from workload import many_frames  # noqa: E402

from virnucflow.embedding_settings import DNABERT_PRECISIONS  # noqa: E402
from virnucflow.models.dnabert_s import load_dnabert_s  # noqa: E402
from virnucflow.models.mosaicbert_fast import FastDnabertS  # noqa: E402
from virnucflow.models.packed import embed_stream  # noqa: E402

GROUPS = (  # the first pattern that a kernel's name holds names its group (attention's kernels are CUTLASS too)
    ("attention", ("fmha", "attention", "flash", "cudnn", "flex")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "cublas")),
    ("compiled fusion", ("triton",)),
    ("layer norm", ("layer_norm", "layernorm")),
    ("copy / cast / cat", ("copy", "cat", "convert", "to_copy")),
    ("reduction / index_add", ("index", "reduce", "sum")),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
)


def group_of(name):
    low = name.lower()
    return next((group for group, patterns in GROUPS if any(p in low for p in patterns)), "other")


def add_model_arguments(ap):
    """The options that say where DNABERT-S is (or is made) and where it runs."""
    ap.add_argument("--models-dir", required=True, help="DNABERT-S is made here if absent")
    ap.add_argument("--tokenizer", help="the real tokenizer.json, for a model made here (bench/real_models.py)")
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--device", default="cuda")


def dnabert_dir(args):
    """DNABERT-S's directory under --models-dir, as bench/real_models.py names it; made there if absent."""
    directory = Path(args.models_dir) / f"dnabert_s_{args.size}_random"
    if not (directory / "model.safetensors").exists():
        write_dnabert(directory, args.tokenizer, **DNA_SIZES[args.size])
    return directory


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def one_budget(model, seqs):
    """The first of `seqs` that together fit one of the model's token budgets."""
    budget, batch = 0, []
    for seq in seqs:
        budget += model.count_tokens(seq)
        if budget > model.max_batch_tokens:
            break
        batch.append(seq)
    return batch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stream(model, seqs, call, device):
    """Seconds for every frame in calls of `call` frames, as the sidecar's compute thread sends them: the next
    call tokenized and launched while the GPU works on the last (`embed_stream`)."""
    sync(device)
    start = time.perf_counter()
    for _ in embed_stream(model, (seqs[i:i + call] for i in range(0, len(seqs), call))):
        pass
    sync(device)
    return time.perf_counter() - start


def profiled(model, seqs, device):
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"  # on the CPU (the smoke test) the operators' own CPU time stands in

    def us(event):
        return event.device_time_total if cuda else event.self_cpu_time_total

    model.embed(seqs)
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        model.embed(seqs)
        sync(device)
        wall = time.perf_counter() - start
    events = [e for e in prof.key_averages() if us(e) > 0]
    groups = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + us(e) / 1e3
    top = sorted(events, key=us, reverse=True)[:10]
    return {"wall_ms": round(wall * 1e3, 1), "kernel_ms": round(sum(map(us, events)) / 1e3, 1),
            "groups_ms": {g: round(ms, 2) for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top": [{"kernel": e.key[:100], "ms": round(us(e) / 1e3, 2), "calls": e.count} for e in top]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--frames", type=int, default=20_000, help="frames of each read length in the stream")
    ap.add_argument("--call", type=int, default=10_000, help="frames per embed call (a part)")
    ap.add_argument("--precisions", nargs="+", default=list(DNABERT_PRECISIONS), choices=DNABERT_PRECISIONS)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    device = torch.device(args.device)
    dna_dir = dnabert_dir(args)
    workloads = {bp: [r[1] for r in many_frames(args.frames, bp, seed=200 + bp, workers=8)] for bp in (500, 300)}
    result = {"device": device_name(device), "torch": torch.__version__, "frames": args.frames, "call": args.call,
              "precisions": {}}
    for precision in args.precisions:
        model = FastDnabertS(load_dnabert_s(str(dna_dir), device="cpu"), device=device, precision=precision)
        row = {"budget_tokens": model.max_batch_tokens}
        for bp, seqs in workloads.items():
            tokens = int(sum(model.count_tokens(s) for s in seqs))
            model.embed(seqs[:256])
            seconds = stream(model, seqs, args.call, device)
            row[f"{bp}bp"] = {"tokens": tokens, "tokens_per_s": round(tokens / seconds),
                              "frames_per_s": round(len(seqs) / seconds)}
        batch = one_budget(model, workloads[500])
        row["profile_500bp_budget"] = {"frames": len(batch), **profiled(model, batch, device)}
        result["precisions"][precision] = row
        print(precision, json.dumps(row), flush=True)
        del model
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
