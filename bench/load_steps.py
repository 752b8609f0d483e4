"""Where a fast sidecar's start goes: each step of loading ESM-2 and DNABERT-S, timed in one process.

The steps are the ones `sidecar serve --mode fast` runs (sidecar/backends), called one at a time with the
device synchronised after each: import torch, CUDA's context, import fair-esm, read the checkpoint (mmap),
build the model on the meta device, touch every weight page (the page faults of the mmap), copy the weights
to the GPU, the packed model without its compile checks, then each compile check. A second copy to the GPU
through a pinned staging buffer shows what the copy itself could cost. Run it twice: the second process is
the warm start of issue 12 point 5.

    python bench/load_steps.py --models-dir /tmp/m --size real --device cuda:0 --out steps.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS = {}
_last = [time.perf_counter()]


def step(name, sync=None):
    if sync is not None:
        sync()
    now = time.perf_counter()
    STEPS[name] = round(now - _last[0], 3)
    print(f"{name:40s} {STEPS[name]:7.3f} s", flush=True)
    _last[0] = now


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", required=True)
    parser.add_argument("--size", default="real")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--out")
    args = parser.parse_args()
    started = time.perf_counter()
    import torch

    step("import torch")
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.set_device(torch.device(args.device))
        torch.zeros(1, device=args.device)
    step("CUDA context", sync)
    import esm  # noqa: F401

    from virnucflow.models.esm2 import Esm2, build_model, read_checkpoint
    from virnucflow.models.esm2_fast import FastEsm2

    step("import fair-esm and virnucflow")
    path = next(Path(args.models_dir).glob(f"esm2_t*_{args.size}_random.pt"))
    data = read_checkpoint(path)
    step("ESM-2: read checkpoint (mmap)")
    model, alphabet = build_model(data, str(path), torch.float16)
    step("ESM-2: build on meta, assign")
    params = list(model.parameters()) + list(model.buffers())
    total = sum(p.numel() * p.element_size() for p in params)
    checksum = sum(float(p.detach().view(-1)[:: max(1, 4096 // p.element_size())].float().sum()) for p in params)
    step("ESM-2: touch every page")
    if cuda:
        staged = _pinned_copy(params, args.device, torch)
        step("ESM-2: pinned staging copy (discarded)", sync)
        del staged
    model.to(args.device)
    step("ESM-2: model.to(device)", sync)
    fast = FastEsm2(Esm2(model, alphabet, path.stem, args.device), device=args.device, compile=False)
    step("ESM-2: packed model, no compile", sync)
    fast._setup_rotary(True)
    step(f"ESM-2: rotary compile check (compiled={fast.compiled})", sync)

    from virnucflow.models.dnabert_s import load_dnabert_s
    from virnucflow.models.mosaicbert_fast import FastDnabertS

    step("import DNABERT-S modules")
    exact = load_dnabert_s(str(Path(args.models_dir) / f"dnabert_s_{args.size}_random"), device="cpu")
    step("DNABERT-S: read and build (CPU)")
    dna = FastDnabertS(exact, device=args.device, compile=False)
    step("DNABERT-S: packed model, no compile", sync)
    dna._setup_fusion(True)
    step(f"DNABERT-S: compile checks (compiled={dna.compiled})", sync)
    result = {"steps": STEPS, "total_s": round(time.perf_counter() - started, 3), "esm2_bytes": total,
              "checksum": checksum, "torch": torch.__version__}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


def _pinned_copy(params, device, torch, chunk=256 << 20):
    """Every tensor copied to the device through two pinned buffers of `chunk` bytes (the copy of one
    overlaps the fill of the other)."""
    buffers = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    events = [None, None]
    out, which = [], 0
    for p in params:
        src = p.detach().contiguous().view(-1).view(torch.uint8)
        dst = torch.empty(src.numel(), dtype=torch.uint8, device=device)
        for start in range(0, src.numel(), chunk):
            n = min(chunk, src.numel() - start)
            if events[which] is not None:
                events[which].synchronize()
            buffers[which][:n].copy_(src[start:start + n])
            dst[start:start + n].copy_(buffers[which][:n], non_blocking=True)
            events[which] = torch.cuda.Event()
            events[which].record()
            which ^= 1
        out.append(dst)
    return out


if __name__ == "__main__":
    main()
