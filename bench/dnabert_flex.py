"""Fast DNABERT-S's attention as one kernel for every length (FlexAttention) against its per-length SDPA calls:
GPU time of one token budget, wall time, and the features' agreement (issue 12 point 4; a study, not the product).

    python bench/dnabert_flex.py --models-dir /tmp/m --device cuda --tokenizer .benchdata/tokenizer.json

The product runs attention as one SDPA call per run of equal-length sequences (`bucket_attention`: 18 lengths
x 12 layers = 216 calls per 262,144-token budget of 500 bp frames, docs/benchmarks.md run 16), because torch's
varlen flash attention takes no ALiBi bias. FlexAttention takes the packed tokens at once: ALiBi as a score
modification (-slope x |i - j|, computed in fp32) and the sequences as a block mask built from their known
boundaries (each 128-token query block sees the key blocks of the sequences it holds; the mask inside them
compares sequence ids), one compiled kernel per layer. Prints, for the same budget of frames: each path's
kernel time and wall time of one call, the share of the kernel time in attention, and the per-frame cosine of
the flex features to the product's.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dnabert_profile import add_model_arguments, device_name, dnabert_dir, one_budget, profiled, sync  # noqa: E402
from workload import many_frames  # noqa: E402

from virnucflow.models import mosaicbert_fast  # noqa: E402
from virnucflow.models.dnabert_s import load_dnabert_s  # noqa: E402
from virnucflow.models.mosaicbert import alibi_slopes  # noqa: E402
from virnucflow.models.mosaicbert_fast import FastDnabertS  # noqa: E402

BLOCK = 128


def document_mask(packing, device):
    """The BlockMask of packed sequences (sorted, contiguous): query block i sees the key blocks from the first
    token of its first sequence to the last token of its last one."""
    from torch.nn.attention.flex_attention import BlockMask

    lengths = np.asarray(packing.lengths)
    starts = np.asarray(packing.starts)
    ends = starts + lengths
    total = packing.total
    seq_of = np.repeat(np.arange(len(lengths)), lengths)
    blocks = -(-total // BLOCK)
    first = seq_of[np.arange(blocks) * BLOCK]
    last = seq_of[np.minimum(np.arange(blocks) * BLOCK + BLOCK - 1, total - 1)]
    low, high = starts[first] // BLOCK, (ends[last] - 1) // BLOCK
    count = high - low + 1
    indices = np.zeros((blocks, blocks), dtype=np.int32)  # the kernel wants a row as wide as the key blocks
    indices[:, :count.max()] = np.minimum(low[:, None] + np.arange(count.max())[None, :], blocks - 1)
    seq_ids = padded(packing.seq_ids, blocks * BLOCK, -1)  # the last block's rows past the end: masked apart

    def same_sequence(b, h, q, kv):
        return seq_ids[q] == seq_ids[kv]

    kv_num = torch.from_numpy(count.astype(np.int32))[None, None].to(device)
    kv_idx = torch.from_numpy(indices.astype(np.int32))[None, None].to(device)
    try:
        return BlockMask.from_kv_blocks(kv_num, kv_idx, BLOCK_SIZE=BLOCK, mask_mod=same_sequence,
                                        seq_lengths=(total, total), compute_q_blocks=False)
    except TypeError:  # a torch without compute_q_blocks
        return BlockMask.from_kv_blocks(kv_num, kv_idx, BLOCK_SIZE=BLOCK, mask_mod=same_sequence,
                                        seq_lengths=(total, total))


def padded(tensor, size, value):
    """`tensor` (1-D) extended to `size` with `value`: the kernel reads whole blocks."""
    out = torch.full((size,), value, dtype=tensor.dtype, device=tensor.device)
    out[:len(tensor)] = tensor
    return out


def flex_attention_fn(heads, device):
    """bucket_attention's signature, computed by one compiled flex_attention call over all tokens."""
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    slopes = torch.tensor(alibi_slopes(heads), dtype=torch.float32, device=device)
    masks = {}

    def attention(q, k, v, packing, bias_for_length=None, scale=None, backends=None):
        key = id(packing)
        if key not in masks:
            masks.clear()
            masks[key] = document_mask(packing, q.device), padded(packing.positions, -(-packing.total // BLOCK) * BLOCK, 0)
        block_mask, positions = masks[key]

        def alibi(score, b, h, qi, kvi):
            return score - slopes[h] * (positions[qi] - positions[kvi]).abs()

        out = compiled(*(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)), score_mod=alibi,
                       block_mask=block_mask, scale=scale)
        return out.squeeze(0).transpose(0, 1)

    return attention


def timed_call(model, seqs, device, profile):
    """Features and the mean wall time of three calls; with `profile`, also the kernel time of one call and
    its attention's share (dnabert_profile's groups)."""
    model.embed(seqs)
    sync(device)
    start = time.perf_counter()
    for _ in range(3):
        features = model.embed(seqs)
    sync(device)
    row = {"wall_ms": round((time.perf_counter() - start) / 3 * 1e3, 1)}
    if profile:
        kernels = profiled(model, seqs, device)
        row.update(kernel_ms=kernels["kernel_ms"], attention_ms=kernels["groups_ms"].get("attention", 0.0))
    return features, row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--frames", type=int, default=4000, help="frames of 500 bp drawn; as many as fill one budget")
    ap.add_argument("--out")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = FastDnabertS(load_dnabert_s(str(dnabert_dir(args)), device="cpu"), device=device)
    seqs = one_budget(model, [dna for _, dna, _ in many_frames(args.frames, 500, seed=700, workers=8)])
    result = {"device": device_name(device), "torch": torch.__version__, "frames": len(seqs),
              "tokens": int(sum(map(model.count_tokens, seqs)))}
    cuda = device.type == "cuda"
    product, result["buckets"] = timed_call(model, seqs, device, cuda)
    if args.out:  # so far, in case the compile below runs out of time
        Path(args.out).write_text(json.dumps(result, indent=1))
    start = time.perf_counter()
    mosaicbert_fast.bucket_attention = flex_attention_fn(model.heads, device)  # the forward's attention
    flex, _ = timed_call(model, seqs[:64], device, False)
    result["flex_first_call_s"] = round(time.perf_counter() - start, 1)  # the compile
    flex, result["flex"] = timed_call(model, seqs, device, cuda)
    cos = (flex * product).sum(1) / (np.linalg.norm(flex, axis=1) * np.linalg.norm(product, axis=1))
    result["cosine_flex_to_buckets"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    if cuda:
        result["kernel_ratio_buckets_over_flex"] = round(result["buckets"]["kernel_ms"] / result["flex"]["kernel_ms"], 3)
    result["wall_ratio_buckets_over_flex"] = round(result["buckets"]["wall_ms"] / result["flex"]["wall_ms"], 3)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
