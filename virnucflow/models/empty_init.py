"""Build a torch module whose weights will be assigned from a file: no memory for them, no random init.

The loaders here build ESM-2 and MosaicBERT and then assign the weights read from the file, so their
constructors' random init is never wanted. Built under `torch.device("meta")` the weights cost nothing, but
ops on meta tensors go through torch's Python reference ops, whose first call imports torch._dynamo (and
`to_empty` imports sympy): `nn.Embedding`'s `normal_`, ESM-2's rotary `inv_freq = 1 / 10000 ** ...`. ESM-2 3B's
build took 4.0 s on the H200 machine that way, 0.06 s this way (bench/load_steps.py), paid by every load, also
in exact mode, which never compiles.

Within `empty_weights()` each parameter is moved to the meta device as the module registers it (it was made
with `torch.empty`, whose pages are never touched), buffers are made on the CPU as usual (ESM-2's `inv_freq`,
a few numbers), and torch.nn.init's functions return their tensor untouched (as `accelerate`'s
`init_empty_weights` and transformers' `no_init_weights` do for the same reason).
"""

import contextlib

import torch

_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                   "sparse_")


def _untouched(tensor, *args, **kwargs):
    return tensor


@contextlib.contextmanager
def empty_weights():
    """Inside: parameters land on the meta device, torch.nn.init leaves tensors as they are (process-wide:
    build one model at a time, in one thread)."""
    register = torch.nn.Module.register_parameter

    def register_on_meta(module, name, param):
        if param is not None:
            param = torch.nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS if hasattr(torch.nn.init, name)}
    torch.nn.Module.register_parameter = register_on_meta
    for name in saved:
        setattr(torch.nn.init, name, _untouched)
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)
