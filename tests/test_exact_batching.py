"""Exact mode's ESM-2 features are the original's bit for bit: a part is embedded in the batches of VirNucPro's
`extract_esm` (fair-esm's get_batch_indices(2048, extra_toks_per_seq=1)), in this process and through a real
exact-mode sidecar, with two clients at once. The reference is bench/original.py, the original's loop.

The model is a tiny ESM-2 64 wide: on the CPU with one thread, the demo's 32-wide one gives the same bits
whatever the batch (so a test with it could not tell batches apart); at 64 wide a protein's vector changes
with its batch mates, which the test checks, so a wrong batch fails it."""

import random
import subprocess
import sys
from pathlib import Path

import esm
import numpy as np
import pytest

from sidecar.exact_batches import original_batches
from test_sidecar_support import Sidecar
from virnucflow.embedding_files import load_embeddings
from virnucflow.models.esm2 import write_tiny_esm2_checkpoint

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from original import load_original_esm2, original_esm2  # noqa: E402

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def _write_part(path, seed, n=200):
    """A protein part of n records, lengths 20..600 (many 2048-token batches), headers with spaces."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        protein = "".join(rng.choice(AMINO) for _ in range(rng.randint(20, 600)))
        lines += [f">frame{seed}_{i} len={len(protein)} part {seed}", protein[:300], protein[300:]]
    path.write_text("\n".join(line for line in lines if line) + "\n")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_esm2_checkpoint(tmp_path_factory.mktemp("esm64") / "esm2_t2_w64.pt", embed_dim=64)


def _original(checkpoint, fasta):
    """The original's features, in the file's order (the original keys them by the whole header line)."""
    model, alphabet = load_original_esm2(checkpoint)
    by_label, _ = original_esm2(model, alphabet, fasta)
    labels = esm.FastaBatchedDataset.from_file(str(fasta)).sequence_labels
    return np.stack([by_label[label] for label in labels])


@pytest.mark.unit
def test_clients_batches_are_fair_esms():
    rng = random.Random(0)
    cases = [[], [1], [5000], [2047, 1, 2048, 3000, 1], [rng.randint(1, 700) for _ in range(500)],
             [rng.choice((10, 100, 167)) for _ in range(3000)]]
    for lengths in cases:
        dataset = esm.FastaBatchedDataset([str(i) for i in range(len(lengths))], ["A" * n for n in lengths])
        assert original_batches(lengths) == dataset.get_batch_indices(2048, extra_toks_per_seq=1)


@pytest.mark.unit
def test_in_process_exact_features_equal_the_originals_bit_for_bit(checkpoint, tmp_path):
    from virnucflow.embed_part import read_part
    from virnucflow.embedding import embed_in_process
    from virnucflow.embedding_settings import EmbeddingSettings
    from virnucflow.models.esm2 import load_esm2

    fasta = _write_part(tmp_path / "part.faa", seed=1)
    ids, proteins = read_part(fasta)
    assert len(original_batches([len(p) for p in proteins])) > 20
    settings = EmbeddingSettings(esm2=str(checkpoint), device="cpu", mode="exact")
    arrays, _ = embed_in_process(settings, {"esm2": (ids, proteins)})
    original = _original(checkpoint, fasta)
    assert np.array_equal(arrays["esm2"], original)
    model = load_esm2(str(checkpoint))
    alone = np.stack([model.embed([protein])[0] for protein in proteins])
    assert not np.array_equal(alone, original)  # one protein per forward is not the original's numbers


@pytest.mark.process
def test_exact_sidecar_features_equal_the_originals_bit_for_bit_with_two_clients(checkpoint, tmp_path):
    fastas = [_write_part(tmp_path / f"part{seed}.faa", seed=seed) for seed in (2, 3)]
    esm2 = str(checkpoint)
    sidecar = Sidecar(tmp_path, ["--esm2", esm2, "--device", "cpu", "--mode", "exact"])
    try:
        sidecar.wait_ready()
        clients = [subprocess.Popen(
            [sys.executable, "-m", "virnucflow", "embed", "--transport", "sidecar", "--endpoint-file",
             str(sidecar.endpoint_file), "--esm2", esm2, "--mode", "exact", "--protein", str(fasta),
             "--esm-out", str(fasta.with_suffix(".npz"))], stderr=subprocess.PIPE, text=True) for fasta in fastas]
        for client in clients:
            assert client.wait(300) == 0, client.stderr.read()
            client.stderr.close()
        with sidecar.client() as client:
            status = client.status()
    finally:
        sidecar.close()
    for fasta in fastas:
        ids, vectors = load_embeddings(fasta.with_suffix(".npz"))
        assert list(ids) == [f"{fasta.stem.replace('part', 'frame')}_{i}" for i in range(200)]  # input order
        assert np.array_equal(vectors, _original(checkpoint, fasta))
    # one request per original batch, each computed alone
    lengths = [[len(p) for p in esm.FastaBatchedDataset.from_file(str(f)).sequence_strs] for f in fastas]
    assert status["models"]["esm2"]["requests"] == sum(len(original_batches(n)) for n in lengths)
