"""ESM-2 backend: the resident fair-esm model of virnucflow.models.esm2 (exact: fp32, one protein per
forward), or in fast mode the packed fp16 FastEsm2 built on those weights (loaded on the CPU, converted to
fp16 there, moved to the device once)."""

from . import Backend


class Esm2Backend(Backend):
    key = "esm2"

    def _load(self):
        from virnucflow.models.esm2 import load_esm2

        if self.mode == "exact":
            return load_esm2(self.source, device=self.device, trusted=self.trusted)
        from virnucflow.models.esm2_fast import FastEsm2

        return FastEsm2(load_esm2(self.source, device="cpu", trusted=self.trusted), device=self.device,
                        max_batch_tokens=self.max_batch_tokens)
