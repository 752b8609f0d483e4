"""DNABERT-S backend: the resident MosaicBERT model of virnucflow.models.dnabert_s (exact fp32, per-sequence)."""

from . import Backend


class DnabertSBackend(Backend):
    key = "dnabert_s"

    def _load(self):
        from virnucflow.models.dnabert_s import load_dnabert_s

        return load_dnabert_s(self.source, revision=self.revision, device=self.device)
