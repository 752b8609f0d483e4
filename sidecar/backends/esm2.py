"""ESM-2 backend: the resident fair-esm model of virnucflow.models.esm2 (exact: fp32, each request in the
original's batches), or in fast mode the packed fp16 FastEsm2 built on those weights (read in fp16 on the CPU, as the
real files hold them, moved to the device once)."""

from . import Backend


class Esm2Backend(Backend):
    key = "esm2"

    def _load(self):
        from virnucflow.models.esm2 import load_esm2

        if self.mode == "exact":
            return load_esm2(self.source, device=self.device, trusted=self.trusted)
        from virnucflow.models.esm2_fast import FastEsm2

        import torch

        # read in fp16, as FastEsm2 runs it: no fp32 copy of the weights is made and converted back
        return FastEsm2(load_esm2(self.source, device="cpu", trusted=self.trusted, dtype=torch.float16),
                        device=self.device, max_batch_tokens=self.max_batch_tokens)
