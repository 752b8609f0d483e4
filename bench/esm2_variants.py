"""ESM-2 fast-path variants side by side on one device: tokens/s, share of the fp16 matmul ceiling measured in
the same run, and per-protein cosine against the packed fp32 path (TF32 off) on a subset.

    python bench/real_models.py --out /tmp/m --tokenizer .benchdata/tokenizer.json
    python bench/esm2_variants.py --models-dir /tmp/m --device cuda:0 --out esm2_variants.json

Variants (each a subclass of `FastEsm2` that changes one thing in the layer loop):
- base: the current fast path;
- add_ln: the residual add and the next LayerNorm as one compiled kernel;
- rotary2: the rotary step on half-width fp32 tables (cos/sin of the two halves are equal), compiled;
- gelu_epilogue: fc1's bias and GELU in cuBLASLt's GEMM epilogue (`torch._addmm_activation`; tanh GELU);
- all: add_ln + rotary2 + gelu_epilogue; all_erf: add_ln + rotary2 (erf GELU kept).
A profile (torch.profiler, top CUDA kernels) of one batch of `base` and of the fastest variant is added.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agreement import cosines  # noqa: E402
from real_models import ESM_SIZES, write_esm2  # noqa: E402
from workload import many_frames  # noqa: E402

from virnucflow.models.esm2 import load_esm2  # noqa: E402
from virnucflow.models.esm2_fast import FastEsm2, _rotary_qk, _tables  # noqa: E402


def _add_ln(x, y, weight, bias, eps: float):
    s = x + y
    return s, F.layer_norm(s, weight.shape, weight, bias, eps)


def _rotary_half(qkv, cos, sin, scaling: float):
    """qkv [T, 3, H, D], cos/sin [T, 1, D/2] fp32 -> q (scaled, rotated), k (rotated) in qkv's dtype."""
    half = qkv.shape[-1] // 2
    q = qkv[:, 0].float() * scaling
    k = qkv[:, 1].float()

    def rotate(x):
        a, b = x[..., :half], x[..., half:]
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

    return rotate(q).to(qkv.dtype), rotate(k).to(qkv.dtype)


def set_compiled(model):
    """dynamic=True makes every size symbolic (slow index math); dynamic=None recompiles once for a new token
    count and then keeps only that dimension symbolic, with heads and widths static."""
    dynamic = None if "static_dims" in model.flags else True
    model.__dict__.setdefault("_rotary_initial", model._rotary)
    model._rotary = model._rotary_initial
    model._add_ln_fn = torch.compile(_add_ln, dynamic=dynamic) if "add_ln" in model.flags else None
    model._rot_half = torch.compile(_rotary_half, dynamic=dynamic) if "rotary2" in model.flags else None
    if "static_dims" in model.flags and "rotary2" not in model.flags:
        model._rotary = torch.compile(_rotary_qk, dynamic=None)


class Variant(FastEsm2):
    def __init__(self, exact, flags, **kw):
        super().__init__(exact, **kw)
        self.flags = set(flags)
        set_compiled(self)

    def forward_packed(self, ids, packing, mask_counts):
        if not self.flags - {"static_dims"}:
            return super().forward_packed(ids, packing, mask_counts)
        m = self.model
        x = F.embedding(ids, m.embed_tokens.weight)
        if self.token_dropout:
            is_mask = ids == m.mask_idx
            lengths = packing.cu_seqlens[1:] - packing.cu_seqlens[:-1]
            ratio = mask_counts.to(torch.float32) / lengths.to(torch.float32)
            scale = (1 - 0.15 * 0.8) / (1 - ratio)
            x = (x.float().masked_fill(is_mask[:, None], 0.0) * scale[packing.seq_ids][:, None]).to(self.dtype)
        positions = packing.positions.to(torch.float32)
        inv = self.inv_freq[0]
        if self._rot_half is not None:
            freqs = (positions[:, None] * inv[None, :])[:, None, :]
            tables = (freqs.cos(), freqs.sin())
        else:
            tables = _tables(positions, inv)
        T, H, D = ids.shape[0], self.heads, self.head_dim
        layers = m.layers
        ln = layers[0].self_attn_layer_norm
        h = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        for index, layer in enumerate(layers):
            attn = layer.self_attn
            qkv = F.linear(h, layer.qkv_weight, layer.qkv_bias).view(T, 3, H, D)
            if self._rot_half is not None:
                q, k = self._rot_half(qkv, tables[0], tables[1], self.scaling)
            else:
                q, k = self._rotary(qkv, tables[0], tables[1], self.scaling)
            o = self._attention(q, k, qkv[:, 2], packing)
            y = F.linear(o.reshape(T, self.dim), attn.out_proj.weight, attn.out_proj.bias)
            x, h = self._residual_ln(x, y, layer.final_layer_norm)
            if "gelu_epilogue" in self.flags:
                h = torch._addmm_activation(layer.fc1.bias, h, layer.fc1.weight.t(), use_gelu=True)
            else:
                h = F.gelu(F.linear(h, layer.fc1.weight, layer.fc1.bias))
            y = F.linear(h, layer.fc2.weight, layer.fc2.bias)
            following = layers[index + 1].self_attn_layer_norm if index + 1 < len(layers) else m.emb_layer_norm_after
            x, h = self._residual_ln(x, y, following)
        return h

    def _residual_ln(self, x, y, ln):
        if self._add_ln_fn is not None:
            return self._add_ln_fn(x, y, ln.weight, ln.bias, ln.eps)
        s = x + y
        return s, F.layer_norm(s, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


VARIANTS = {"base": [], "add_ln": ["add_ln"], "rotary2": ["rotary2"], "gelu_epilogue": ["gelu_epilogue"],
            "all_erf": ["add_ln", "rotary2"], "all": ["add_ln", "rotary2", "gelu_epilogue"],
            "rotary_static": ["static_dims"], "rotary2_static": ["rotary2", "static_dims"],
            "add_ln_static": ["add_ln", "static_dims"],
            "all_static": ["add_ln", "rotary2", "gelu_epilogue", "static_dims"]}


def ceiling(device, n=8192, reps=20):
    a = torch.randn(n, n, device=device, dtype=torch.float16)
    b = torch.randn(n, n, device=device, dtype=torch.float16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def flops_per_token(dim, layers, mean_len):
    return layers * (2 * 12 * dim * dim + 4 * mean_len * dim)


def timed(model, proteins, device, chunk):
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    t = time.perf_counter()
    outs = [model.embed(proteins[i:i + chunk]) for i in range(0, len(proteins), chunk)]
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    return np.concatenate(outs), time.perf_counter() - t


def profile(model, proteins, device):
    from torch.profiler import ProfilerActivity, profile as prof
    model.embed(proteins)
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        model.embed(proteins)
        torch.cuda.synchronize(device)
    rows = []
    events = sorted(p.key_averages(), key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events)
    for e in events[:14]:
        rows.append({"kernel": e.key[:90], "ms": round(e.device_time_total / 1e3, 2),
                     "share": round(e.device_time_total / total, 4)})
    return {"kernel_ms": round(total / 1e3, 1), "top": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--frames", type=int, default=6000)
    ap.add_argument("--agree", type=int, default=400)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--budget", type=int, default=65536)
    ap.add_argument("--out")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ckpt = Path(args.models_dir) / "esm2.pt"
    if not ckpt.exists():
        write_esm2(ckpt, **ESM_SIZES[args.size])
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "frames": args.frames}
    if device.type == "cuda":
        result["fp16_ceiling_tflops"] = round(ceiling(device), 1)
    workloads = {bp: [p for _, _, p in many_frames(args.frames, bp, seed=bp)] for bp in (500, 300)}
    agree = workloads[500][: args.agree // 2] + workloads[300][: args.agree // 2]
    exact = load_esm2(str(ckpt), device="cpu")
    dim, layers = exact.dim, exact.layer
    ref_model = Variant(exact, [], dtype=torch.float32, device=device, max_batch_tokens=16384)
    reference = ref_model.embed(agree)
    del ref_model
    exact = load_esm2(str(ckpt), device="cpu")
    model = None
    for name in args.variants:
        if model is None:
            model = Variant(exact, VARIANTS[name], device=device, max_batch_tokens=args.budget)
        else:  # reuse the converted weights; only the forward changes
            model.flags = set(VARIANTS[name])
            set_compiled(model)
        model.embed(agree[:50])  # compile / warm
        got = model.embed(agree)
        cos = cosines(reference, got)
        row = {"cos_min": float(cos.min()), "cos_mean": float(cos.mean())}
        for bp, proteins in workloads.items():
            model.embed(proteins[:500])
            _, seconds = timed(model, proteins, device, 10000)
            tokens = sum(len(p) + 2 for p in proteins)
            mean_len = tokens / len(proteins)
            tflops = tokens * flops_per_token(dim, layers, mean_len) / seconds / 1e12
            row[f"{bp}bp"] = {"tokens_per_s": round(tokens / seconds), "tflops": round(tflops, 1),
                              "of_ceiling": round(tflops / result.get("fp16_ceiling_tflops", float("nan")), 4)}
        result[name] = row
        print(name, json.dumps(row), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
    if device.type == "cuda":
        best = max(args.variants, key=lambda n: result[n]["500bp"]["tokens_per_s"])
        batch = workloads[500][:380]
        for name in dict.fromkeys(["base", best]):
            model.flags = set(VARIANTS[name])
            set_compiled(model)
            result[f"profile_{name}"] = profile(model, batch, device)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
