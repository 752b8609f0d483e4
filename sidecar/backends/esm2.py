"""ESM-2 backend: the resident fair-esm model of virnucflow.models.esm2 (exact fp32, per-sequence)."""

from . import Backend


class Esm2Backend(Backend):
    key = "esm2"

    def _load(self):
        from virnucflow.models.esm2 import load_esm2

        return load_esm2(self.source, device=self.device)
