"""Fast mode against exact mode at tiny size on the CPU: embeddings, classifier labels, deduplication.

Tolerances: the packed path in fp32 must match the exact per-sequence path to cosine >= 0.99999 and
max |diff| <= 1e-4 (only summation order differs); in fp16 (what a GPU sidecar runs) to cosine >= 0.999,
the issue's bar, with >= 99% label agreement and scores within 0.01 for a random classifier, and >= 95% for
one calibrated to split these very features half/half (most rows near its boundary) on these ~80 frames.
The H200 figures on 10,000 real-size frames are in docs/benchmarks.md.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from agreement import calibrated_classifier, classifier_agreement, cosines  # noqa: E402
from workload import frames  # noqa: E402

from sidecar.backends import make_backend  # noqa: E402
from virnucflow.embedding_settings import DNABERT_PRECISIONS, EmbeddingSettings  # noqa: E402
from virnucflow.classifier import write_random_classifier  # noqa: E402
from virnucflow.models.dnabert_s import load_dnabert_s, write_tiny_dnabert_s  # noqa: E402
from virnucflow.models.esm2 import load_esm2, write_tiny_esm2_checkpoint  # noqa: E402
from virnucflow.models.esm2_fast import FastEsm2  # noqa: E402
from virnucflow.models.mosaicbert_fast import FastDnabertS  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast")
    esm = write_tiny_esm2_checkpoint(out / "esm2_t3_tiny.pt", num_layers=3, embed_dim=64, heads=4)
    dna = write_tiny_dnabert_s(out / "dnabert", num_layers=2, hidden_size=64, num_heads=4)
    rows = frames(50, 500) + frames(30, 300, seed=1)
    dna_seqs = [r[1] for r in rows] + ["A", "ACGT" * 200]
    proteins = [r[2] for r in rows] + ["MK", "ACDEFGHIKLMNPQRSTVWY" * 52]  # 1040 aa: past the 1024 cut
    exact_dna = load_dnabert_s(str(dna)).embed(dna_seqs)
    exact_esm = load_esm2(str(esm)).embed(proteins)
    return dict(esm=esm, dna=dna, dna_seqs=dna_seqs, proteins=proteins, exact_dna=exact_dna,
                exact_esm=exact_esm, out=out)


def _fast(setup, dtype, budget=1500):
    esm = FastEsm2(load_esm2(str(setup["esm"])), dtype=dtype, max_batch_tokens=budget)
    dna = FastDnabertS(load_dnabert_s(str(setup["dna"])), dtype=dtype, max_batch_tokens=budget)
    return dna.embed(setup["dna_seqs"]), esm.embed(setup["proteins"])


@pytest.mark.unit
def test_packed_fp32_matches_exact_nearly_bit_for_bit(setup):
    dna, esm = _fast(setup, torch.float32)
    for fast, exact in ((dna, setup["exact_dna"]), (esm, setup["exact_esm"])):
        assert cosines(fast, exact).min() >= 0.99999
        assert np.abs(fast - exact).max() <= 1e-4


@pytest.mark.unit
def test_fp16_fast_agrees_with_exact(setup):
    dna, esm = _fast(setup, torch.float16)
    assert cosines(dna, setup["exact_dna"]).min() >= 0.999
    assert cosines(esm, setup["exact_esm"]).min() >= 0.999
    classifier = setup["out"] / "clf.pth"
    write_random_classifier(classifier, input_dim=dna.shape[1] + esm.shape[1], hidden_dim=32)
    result = classifier_agreement(classifier, setup["exact_dna"], setup["exact_esm"], dna, esm)
    assert result["label_agreement"] >= 0.99, result
    assert result["max_score_diff"] < 0.01, result
    # made to split these features half/half, so that many rows sit near the boundary: a harder test
    exact = np.concatenate([setup["exact_dna"], setup["exact_esm"]], axis=1)
    hard = classifier_agreement(calibrated_classifier(classifier, exact), setup["exact_dna"], setup["exact_esm"],
                                dna, esm)
    assert 0.3 <= hard["virus_fraction_exact"] <= 0.7, hard
    assert hard["label_agreement"] >= 0.95, hard
    assert hard["max_score_diff"] < 0.05, hard


@pytest.mark.unit
def test_batch_composition_and_order_do_not_matter_much(setup):
    """Length sorting restores input order; a different token budget changes nothing beyond fp32 noise."""
    a = FastEsm2(load_esm2(str(setup["esm"])), dtype=torch.float32, max_batch_tokens=300)
    b = FastEsm2(load_esm2(str(setup["esm"])), dtype=torch.float32, max_batch_tokens=100_000)
    proteins = setup["proteins"][:30]
    assert np.abs(a.embed(proteins) - b.embed(proteins[::-1])[::-1]).max() <= 1e-5


@pytest.mark.unit
def test_fast_backend_deduplicates_within_and_across_batches(setup):
    assert EmbeddingSettings().resolved_mode("cpu") == "exact"
    assert EmbeddingSettings().resolved_mode("cuda:1") == "fast"
    backend = make_backend("esm2", str(setup["esm"]), mode="fast", cache_bytes=1 << 20).load()
    seqs = setup["proteins"][:10]
    first, errors = backend.embed_rows(seqs + seqs[:3])
    assert not errors
    assert np.array_equal(first[10:], first[:3])
    assert backend.cache.stats()["hits"] == 3 and backend.cache.stats()["misses"] == 10
    again, _ = backend.embed_rows(seqs[::-1])
    assert np.array_equal(again, first[:10][::-1])
    assert backend.cache.stats()["hits"] == 13
    assert cosines(first[:10], setup["exact_esm"][:10]).min() >= 0.999


@pytest.mark.unit
def test_cache_is_bounded_and_exact_mode_stays_bit_identical(setup):
    backend = make_backend("dnabert_s", str(setup["dna"]), mode="exact", cache_bytes=1 << 20,
                           cache_entries=5).load()
    vectors, _ = backend.embed_rows(setup["dna_seqs"][:20])
    assert np.array_equal(vectors, setup["exact_dna"][:20])
    stats = backend.cache.stats()
    assert stats["entries"] == 5 and stats["evictions"] == 15
    vectors, _ = backend.embed_rows(setup["dna_seqs"][15:20])  # the 5 most recent: all hits
    assert np.array_equal(vectors, setup["exact_dna"][15:20])
    assert backend.cache.stats()["hits"] == 5


@pytest.mark.unit
def test_stream_and_launch_keep_input_order(setup):
    """embed_stream (the sidecar's way: next chunk tokenized and launched before the last is read) gives what
    one embed call gives, chunk by chunk in order; an empty launch is an empty matrix."""
    from virnucflow.models.packed import embed_stream

    dna = FastDnabertS(load_dnabert_s(str(setup["dna"])), dtype=torch.float32, max_batch_tokens=700)
    seqs = setup["dna_seqs"]
    chunks = [seqs[:7], seqs[7:8], seqs[8:40], [], seqs[40:]]
    streamed = list(embed_stream(dna, chunks))
    assert [len(v) for v in streamed] == [len(c) for c in chunks]
    assert np.abs(np.concatenate(streamed) - dna.embed(seqs)).max() <= 1e-5
    assert dna.launch([]).result().shape == (0, dna.dim)


@pytest.mark.process
def test_fast_sidecar_with_concurrent_clients_matches_exact(setup, tmp_path):
    """A fast-mode sidecar (fp16 here, as on a GPU) under 6 concurrent clients with tiny batch budgets, so
    that many batches go through the two-deep launch/collect pipeline with the token arrays made at
    admission: every row matches its own exact vector, duplicates across clients are embedded once."""
    import threading

    from test_sidecar_support import Sidecar

    sidecar = Sidecar(tmp_path, ["--esm2", str(setup["esm"]), "--dnabert-s", str(setup["dna"]), "--mode", "fast",
                                 "--max-batch-tokens", "300"])
    try:
        sidecar.wait_ready()
        results, errors = {}, []

        def client(k):
            rows = list(range(k, len(setup["proteins"]), 3))  # every row is asked for by two clients
            try:
                with sidecar.client(max_request_seqs=5, window=3) as c:
                    results[k] = (rows, c.embed("esm2", rows, [setup["proteins"][i] for i in rows]),
                                  c.embed("dnabert_s", rows, [setup["dna_seqs"][i] for i in rows]))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(k % 3,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for rows, esm, dna in results.values():
            assert cosines(esm, setup["exact_esm"][rows]).min() >= 0.999
            assert cosines(dna, setup["exact_dna"][rows]).min() >= 0.999
        with sidecar.client() as c:
            status = c.status()
        assert status["mode"] == "fast"
        for model, seqs in (("esm2", setup["proteins"]), ("dnabert_s", setup["dna_seqs"])):
            # each distinct sequence embedded once, also when its twin was in a batch still in flight
            assert status["models"][model]["dedup"]["misses"] == len(set(seqs))
            assert status["models"][model]["loads"] == 1
    finally:
        sidecar.close()


@pytest.mark.unit
def test_fast_dnabert_precision_meets_the_point_3_bounds_in_fp32(setup):
    """The issue's bounds for fast against exact (bench/agreement.BOUNDS: mean logit shift of a classifier
    calibrated 50/50 on the exact features, label agreement, per-sequence cosine of each model), with fast
    ESM-2 in fp16 as a fast sidecar runs it (also on the CPU). DNABERT-S in fp16 misses the shift bound here
    (about -0.003, the shared offset that the issue measured on the GPU); embedding.fast_dnabert_precision
    fp32 meets them all; fp16-split meets the shift bound (measured -0.00006, fp16 -0.0023) and more than
    halves the mean |shift| (0.0011 against 0.0027), but flips 1 label of 82 here (fp32 none)."""
    from agreement import BOUNDS, calibrated_shift

    classifier = setup["out"] / "clf_point3.pth"
    write_random_classifier(classifier, input_dim=128, hidden_dim=32)
    esm = FastEsm2(load_esm2(str(setup["esm"])), dtype=torch.float16).embed(setup["proteins"])
    figures = {}
    for precision in DNABERT_PRECISIONS:
        fast = FastDnabertS(load_dnabert_s(str(setup["dna"])), precision=precision)
        assert fast.precision == precision and fast.model.encoder.layer[0].mlp.wo.weight.dtype == fast.dtype
        figures[precision] = calibrated_shift(classifier, setup["exact_dna"], setup["exact_esm"],
                                              fast.embed(setup["dna_seqs"]), esm)
        assert 0.45 <= figures[precision]["virus_fraction_exact"] <= 0.55
        assert figures[precision]["cos_min"]["dnabert_s"] >= 0.999
    best = figures["fp32"]
    assert best["within_bounds"], best
    assert abs(best["mean_logit_shift"]) <= BOUNDS["mean_logit_shift"]
    assert best["label_agreement"] >= BOUNDS["label_agreement"]
    assert min(best["cos_min"].values()) >= BOUNDS["cos_min"]
    assert abs(best["mean_logit_shift"]) < abs(figures["fp16"]["mean_logit_shift"])
    # fp16-split (the weights' rounding removed): the shift within the bound, the per-frame difference halved
    split = figures["fp16-split"]
    assert abs(split["mean_logit_shift"]) <= BOUNDS["mean_logit_shift"], split
    assert split["mean_abs_logit_shift"] < 0.5 * figures["fp16"]["mean_abs_logit_shift"], split


@pytest.mark.unit
def test_fast_dnabert_precision_reaches_the_sidecars_backend(setup, tmp_path):
    from sidecar.server import ServeConfig

    settings = EmbeddingSettings(dnabert_s=str(setup["dna"]), device="cpu", mode="fast",
                                 fast_dnabert_precision="fp32")
    cfg = ServeConfig.from_settings(settings, str(tmp_path / "e.json"))
    assert (cfg.mode, cfg.fast_dnabert_precision) == ("fast", "fp32")
    backend = make_backend("dnabert_s", str(setup["dna"]), mode="fast", dnabert_precision=cfg.fast_dnabert_precision)
    assert backend.load().model.precision == "fp32"
    vectors, errors = backend.embed_rows(setup["dna_seqs"][:10])
    assert not errors and cosines(vectors, setup["exact_dna"][:10]).min() >= 0.99999
    with pytest.raises(ValueError, match="precision"):
        FastDnabertS(load_dnabert_s(str(setup["dna"])), precision="fp8")


@pytest.mark.unit
def test_fast_esm2_read_in_fp16_is_the_same_as_converted_from_fp32(setup):
    """A fast sidecar reads the fp16 checkpoint in fp16 (no fp32 copy made and converted back): the same
    weights, so the same features bit for bit."""
    via32 = FastEsm2(load_esm2(str(setup["esm"])), dtype=torch.float16)
    direct = FastEsm2(load_esm2(str(setup["esm"]), dtype=torch.float16), dtype=torch.float16)
    for key, value in via32.model.state_dict().items():
        assert torch.equal(direct.model.state_dict()[key], value), key
    assert np.array_equal(direct.embed(setup["proteins"][:20]), via32.embed(setup["proteins"][:20]))


@pytest.mark.process
def test_each_fused_step_is_compiled_once_and_never_again_while_embedding(setup):
    """The fast models' torch.compile steps (compiled on CUDA; here on the CPU's compiler): one graph per step,
    which serves every token count, and embedding parts of other sizes compiles nothing more. A recompile in the
    first request (its grad mode differed from the check's) or per new size would cost seconds of GPU time."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    esm = FastEsm2(load_esm2(str(setup["esm"])), dtype=torch.float32, compile=True)
    dna = FastDnabertS(load_dnabert_s(str(setup["dna"])), dtype=torch.float32, compile=True)
    assert esm.compiled and dna.compiled
    assert counters["stats"]["unique_graphs"] == 3  # the rotary step, add + LayerNorm, GELU x gate
    for size in (3, 17, 40):
        esm.embed(setup["proteins"][:size])
        dna.embed(setup["dna_seqs"][:size])
    assert counters["stats"]["unique_graphs"] == 3
    eager = FastEsm2(load_esm2(str(setup["esm"])), dtype=torch.float32, compile=False)
    assert np.allclose(esm.embed(setup["proteins"]), eager.embed(setup["proteins"]), atol=1e-5)
