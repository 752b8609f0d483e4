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
                          esm2_source, dnabert_source, dnabert_revision=None, device="auto"):
    from virnucflow.models.dnabert_s import load_dnabert_s
    from virnucflow.models.esm2 import load_esm2

    device = resolve_device(device)
    for path, out, load in (
        (nucleotide_fa, dnabert_out, lambda: load_dnabert_s(dnabert_source, dnabert_revision, device=device)),
        (protein_faa, esm_out, lambda: load_esm2(esm2_source, device=device)),
    ):
        ids, seqs = read_part(path)
        started = time.perf_counter()
        model = load()
        loaded = time.perf_counter()
        vectors = model.embed(seqs)
        save_embeddings(out, ids, vectors)
        log.info("%s: %d sequences, load %.1f s, embed %.1f s -> %s",
                 model.name, len(ids), loaded - started, time.perf_counter() - loaded, out)
        del model
