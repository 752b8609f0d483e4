"""Sidecar backends over the real tiny models: one load, exact vectors, halving on CUDA out-of-memory."""

import os

import numpy as np
import pytest
import torch

from sidecar.backends import SequenceFailed, configure_device, cuda_memory, make_backend
from test_sidecar_support import pools

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def backends(models):
    return {"esm2": make_backend("esm2", models["esm2_path"]).load(),
            "dnabert_s": make_backend("dnabert_s", models["dnabert_path"]).load()}


def test_backends_load_once_and_embed_exactly_like_the_models(backends, models):
    for key, seqs in pools(n=12).items():
        backend = backends[key]
        assert backend.loads == 1 and backend.load_seconds > 0 and backend.dim == models[key].dim
        assert backend.count_tokens(seqs[0]) == models[key].count_tokens(seqs[0])
        assert np.array_equal(backend.embed_batch(seqs), models[key].embed(seqs))


class OomAbove:
    """Wraps a real model's embed: raises CUDA out-of-memory for batches larger than `limit`."""

    def __init__(self, model, limit):
        self.model, self.limit, self.calls = model, limit, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def embed(self, seqs):
        self.calls.append(len(seqs))
        if len(seqs) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.model.embed(seqs)


def test_out_of_memory_splits_the_batch_in_halves(backends):
    backend = backends["dnabert_s"]
    seqs = pools(n=10)["dnabert_s"]
    expected = backend.embed_batch(seqs)
    real = backend.model
    backend.model = OomAbove(real, limit=3)
    try:
        got = backend.embed_batch(seqs)
        assert backend.model.calls == [10, 5, 2, 3, 5, 2, 3]
        assert np.array_equal(got, expected)
        backend.model = OomAbove(real, limit=0)  # even one sequence does not fit
        with pytest.raises(SequenceFailed, match="out of memory on one sequence"):
            backend.embed_batch(seqs[:1])
        matrix, errors = backend.embed_rows(seqs[:2])
        assert set(errors) == {0, 1} and all("out of memory" in e for e in errors.values())
    finally:
        backend.model = real


def test_exact_esm2_request_is_never_split_nor_deduplicated(backends):
    """Exact ESM-2 computes a request in the original's batches: halves or cached rows would change them."""
    backend = backends["esm2"]
    seqs = pools(n=10)["esm2"]
    assert backend.whole_requests and not backend.cache.enabled
    real = backend.model
    backend.model = OomAbove(real, limit=3)
    try:
        matrix, errors = backend.embed_rows(seqs)
        assert backend.model.calls == [10]
        assert set(errors) == set(range(10)) and all("original's batches" in e for e in errors.values())
    finally:
        backend.model = real


def test_a_failing_sequence_fails_alone(backends):
    backend = backends["dnabert_s"]
    seqs = pools(n=4)["dnabert_s"]
    real = backend.model

    class RejectsSecond(OomAbove):
        def embed(self, batch):
            if seqs[1] in batch:
                raise ValueError("bad sequence")
            return self.model.embed(batch)

    backend.model = RejectsSecond(real, limit=99)
    try:
        matrix, errors = backend.embed_rows(seqs)
    finally:
        backend.model = real
    assert list(errors) == [1] and "ValueError: bad sequence" in errors[1]
    assert np.array_equal(matrix[[0, 2, 3]], real.embed([seqs[0], seqs[2], seqs[3]]))


def test_device_checks():
    assert configure_device("cpu") == "cpu" and cuda_memory("cpu") is None
    with pytest.raises(ValueError, match="unsupported device"):
        configure_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            configure_device("cuda:0")
    with pytest.raises(ValueError, match="unknown model"):
        make_backend("bert", "x")


def test_the_compile_cache_is_private_and_per_model(tmp_path, monkeypatch):
    """embedding.compile_cache_dir: torch.compile's caches go to a 0700 subdirectory of the models' fingerprints
    (a changed model gets its own), and a directory that other users may write is refused in one line."""
    from sidecar.backends import use_compile_cache
    from sidecar.safe_files import UnsafePath

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "cache"
    first = use_compile_cache(root, {"esm2": "a" * 64, "dnabert_s": "b" * 64})
    assert first.parent == root and (root.stat().st_mode & 0o777, first.stat().st_mode & 0o777) == (0o700, 0o700)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(first / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(first / "triton")
    assert use_compile_cache(root, {"esm2": "a" * 64, "dnabert_s": "b" * 64}) == first
    assert use_compile_cache(root, {"esm2": "c" * 64, "dnabert_s": "b" * 64}) != first
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafePath, match=r"compile cache directory .*shared has mode 0777, open to other users; "
                                         r"run: chmod go-w") as caught:
        use_compile_cache(shared, {"esm2": "a" * 64})
    assert "\n" not in str(caught.value)
