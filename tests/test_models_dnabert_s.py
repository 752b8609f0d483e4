"""DNABERT-S: tiny hub-format maker, tokenizer, exact embedding, offline hub-cache resolution."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from virnucflow.errors import InputError
from virnucflow.models.dnabert_s import load_dnabert_s, write_tiny_dnabert_s

pytestmark = pytest.mark.unit

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dnabert_s"
FILES = (
    "config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_dnabert_s(tmp_path_factory.mktemp("dnabert") / "tiny")


def test_tiny_maker_is_fast_and_byte_deterministic(tiny_dir, tmp_path):
    start = time.perf_counter()
    again = write_tiny_dnabert_s(tmp_path / "again", seed=0)
    assert time.perf_counter() - start < 10
    other = write_tiny_dnabert_s(tmp_path / "other", seed=1)
    for name in FILES:
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (
        tiny_dir / "model.safetensors"
    ).read_bytes()


def test_tiny_tokenizer_mirrors_the_real_one(tiny_dir):
    spec = json.loads((tiny_dir / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in spec["added_tokens"]}
    assert ids == {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4}
    assert spec["pre_tokenizer"]["type"] == "Whitespace"
    assert spec["post_processor"]["type"] == "TemplateProcessing"
    assert spec["truncation"]["max_length"] == 512  # like the hub file: the loader must undo it
    if (REFERENCE / "tokenizer" / "tokenizer.json").is_file():
        real = json.loads((REFERENCE / "tokenizer" / "tokenizer.json").read_text())
        for key in ("added_tokens", "pre_tokenizer", "post_processor", "normalizer"):
            assert spec[key] == real[key], key
        assert spec["model"]["type"] == real["model"]["type"]
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            assert json.loads((tiny_dir / name).read_text()) == json.loads(
                (REFERENCE / "tokenizer" / name).read_text()
            )
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["vocab_size"] == len(spec["model"]["vocab"])
    assert set(load_file(str(tiny_dir / "model.safetensors"))) >= {
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.1.mlp.gated_layers.weight",
        "bert.pooler.dense.weight",
    }


def test_tokenizer_round_trip_without_truncation(tiny_dir):
    model = load_dnabert_s(str(tiny_dir))
    rng = np.random.default_rng(3)
    seq = "".join(rng.choice(list("ACGT"), 3000))
    encoding = model.tokenizer.encode(seq)
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
    assert "".join(encoding.tokens[1:-1]) == seq
    assert model.count_tokens(seq) == len(encoding.ids) > 512
    assert model.count_tokens("") == 2


def test_embed_is_the_mean_over_all_tokens_and_batch_independent(tiny_dir):
    model = load_dnabert_s(str(tiny_dir))
    assert (model.dim, model.name, model.device) == (64, str(tiny_dir), "cpu")
    seqs = ["ACGTAGCTAGCTAGGATCGA" * 4, "TTTTGGGGCCCCAAAA", "GATTACA" * 60]
    vectors = model.embed(seqs)
    assert vectors.shape == (3, 64) and vectors.dtype == np.float32
    with torch.inference_mode():
        hidden = model.model(torch.tensor([model.token_ids(seqs[1])]))[0]
    np.testing.assert_array_equal(vectors[1], hidden.mean(0).numpy())
    for i, seq in enumerate(seqs):
        np.testing.assert_array_equal(model.embed([seq])[0], vectors[i])
    assert model.embed([]).shape == (0, 64)


def test_reference_tiny_through_the_loader(tmp_path):
    if not (REFERENCE / "tiny" / "model.safetensors").is_file():
        pytest.skip(f"reference data absent: {REFERENCE}")
    for path in [*(REFERENCE / "tiny").iterdir(), *(REFERENCE / "tokenizer").iterdir()]:
        (tmp_path / path.name).symlink_to(path)
    model = load_dnabert_s(str(tmp_path))
    expected = load_file(str(REFERENCE / "tiny" / "vectors.safetensors"))
    sequences = (REFERENCE / "tiny" / "sequences.txt").read_text().split()
    vectors = model.embed(sequences)
    for i, seq in enumerate(sequences):
        assert model.token_ids(seq) == expected[f"input_ids_{i}"].tolist()
        np.testing.assert_allclose(vectors[i], expected[f"mean_{i}"].numpy(), atol=1e-5, rtol=0)


def _fake_hub_cache(home: Path, tiny_dir: Path) -> Path:
    repo = home / "hub" / "models--someone--tiny-dnabert"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for name in FILES:
        (snapshot / name).write_bytes((tiny_dir / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def test_hub_id_resolves_offline_from_the_cache(tiny_dir, tmp_path, monkeypatch):
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    snapshot = _fake_hub_cache(tmp_path, tiny_dir)
    seq = ["ACGTTTGACCA" * 7]
    expected = load_dnabert_s(str(tiny_dir)).embed(seq)
    pinned = load_dnabert_s("someone/tiny-dnabert", revision=REVISION)
    assert pinned.name == "someone/tiny-dnabert"
    np.testing.assert_array_equal(pinned.embed(seq), expected)
    np.testing.assert_array_equal(load_dnabert_s("someone/tiny-dnabert").embed(seq), expected)
    assert snapshot.is_dir()


def test_missing_model_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(InputError) as caught:
        load_dnabert_s("zhihan1996/DNABERT-S", revision=REVISION)
    message = str(caught.value)
    assert "\n" not in message and "hf download zhihan1996/DNABERT-S" in message
    assert f"--revision {REVISION}" in message and str(tmp_path / "empty-cache") in message
    with pytest.raises(InputError, match="directory not found"):
        load_dnabert_s(str(tmp_path / "no" / "such" / "dir"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="tokenizer.json missing"):
        load_dnabert_s(str(tmp_path / "half"))
