"""DNABERT-S backend: the resident MosaicBERT model of virnucflow.models.dnabert_s (exact: fp32, one
sequence per forward), or in fast mode the packed FastDnabertS built on those weights (fp16 unless
embedding.fast_dnabert_precision says otherwise)."""

from . import Backend


class DnabertSBackend(Backend):
    key = "dnabert_s"

    def _load(self):
        from virnucflow.models.dnabert_s import load_dnabert_s

        if self.mode == "exact":
            return load_dnabert_s(self.source, revision=self.revision, device=self.device, trusted=self.trusted)
        from virnucflow.models.mosaicbert_fast import FastDnabertS

        return FastDnabertS(load_dnabert_s(self.source, revision=self.revision, device="cpu", trusted=self.trusted),
                            device=self.device, max_batch_tokens=self.max_batch_tokens,
                            precision=self.dnabert_precision)
