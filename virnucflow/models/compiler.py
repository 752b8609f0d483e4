"""torch.compile for the fast models: one compile per function, and its first-use cost paid while weights load.

A fast sidecar on CUDA compiles three small functions (ESM-2's rotary step, DNABERT-S's residual add +
LayerNorm and its GELU x gate). The first compile in a process imports torch._dynamo and inductor and starts
Triton; on the H200 machine that and the compiles were about 5 s of a 14.5 s warm model load
(bench/load_steps.py). Two things cut it:

- `compile_for_tokens` compiles a function once, for any token count: static widths (`dynamic=None`; with
  `dynamic=True` the widths were symbolic too and the rotary kernel took 65-121 ms per 64k-token batch instead of
  15, docs/benchmarks.md) and the first dimension of the first call's tensors marked dynamic, where before a
  second token count recompiled it.
- `start(device)` imports and exercises that machinery in a background thread while the caller reads the
  weights and copies them to the GPU (file reads and device copies, which release the GIL); the models call
  `wait()` before their own first compile, so no two threads import torch._dynamo at once. Whatever the
  thread fails at is left to the models' own compile checks, which fall back to eager ops.
"""

import threading

_lock = threading.Lock()
_thread = None


def start(device):
    """Begin the warm-up on `device` (once per process)."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_warm_up, args=(str(device),), name="compile-warm-up", daemon=True)
            _thread.start()


def wait():
    """Return once the warm-up (if started) has finished."""
    thread = _thread
    if thread is not None:
        thread.join()


def compile_for_tokens(function):
    """`function` compiled once for any size of its tensors' first dimension (call `mark_tokens` on the
    first call's tensors)."""
    import torch

    return torch.compile(function, dynamic=None)


def mark_tokens(*tensors):
    """The first dimension of these tensors is symbolic in the compile that their call starts."""
    import torch

    for tensor in tensors:
        torch._dynamo.mark_dynamic(tensor, 0)


def _warm_up(device):
    try:
        import torch
        from torch.nn.attention import varlen  # noqa: F401 - the fast models' attention; it imports torch._dynamo

        step = compile_for_tokens(_scaled)
        with torch.inference_mode():
            x = torch.ones(7, 4, device=device, dtype=torch.float16)
            mark_tokens(x)
            step(x)
    except Exception:  # noqa: BLE001 - the models' own checks decide
        return


def _scaled(x):
    return (x.float() * 0.5).to(x.dtype)
