"""In-process embedding of one part, as the original does it: load both models, embed, save, exit."""

import logging
import time

from virnucflow.embedding_files import save_embeddings
from virnucflow.fasta import read_fasta

log = logging.getLogger(__name__)


def resolve_device(device):
    """'auto' picks the first CUDA device when there is one, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def read_part(path):
    """(ids, sequences) of a part file; a part may be empty when no frame was kept."""
    from pathlib import Path

    if Path(path).stat().st_size == 0:
        return [], []
    records = list(read_fasta(path))
    return [r[0] for r in records], [r[1] for r in records]


def embed_part_in_process(nucleotide_fa, protein_faa, dnabert_out, esm_out,
                          esm2_source, dnabert_source, dnabert_revision=None, device="auto", trusted=()):
    """Embed one part with both models; nothing is written unless both succeed.

    Both models are loaded before either embeds, so that a bad model file fails the job at once.
    trusted: sha256s of model files that may be unpickled in full (see virnucflow.safe_load).
    """
    from virnucflow.models.dnabert_s import load_dnabert_s
    from virnucflow.models.esm2 import load_esm2

    device = resolve_device(device)
    parts = [read_part(nucleotide_fa), read_part(protein_faa)]
    started = time.perf_counter()
    models = [load_dnabert_s(dnabert_source, dnabert_revision, device=device, trusted=trusted),
              load_esm2(esm2_source, device=device, trusted=trusted)]
    log.info("models loaded in %.1f s", time.perf_counter() - started)
    results = []
    for (ids, seqs), model, out in zip(parts, models, (dnabert_out, esm_out)):
        started = time.perf_counter()
        results.append((out, ids, model.embed(seqs)))
        log.info("%s: %d sequences, embed %.1f s -> %s", model.name, len(ids), time.perf_counter() - started, out)
    for out, ids, vectors in results:
        save_embeddings(out, ids, vectors)
