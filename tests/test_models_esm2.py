"""ESM-2: real-format tiny checkpoint, offline loading, exact embedding vs fair-esm's own forward."""

import argparse
import warnings

import esm
import numpy as np
import pytest
import torch

from virnucflow.errors import InputError
from virnucflow.models.esm2 import load_esm2, write_tiny_esm2_checkpoint

pytestmark = pytest.mark.unit

PROTEINS = ["MKVLAAGIVG", "MSTNPKPQRKTKRNTNRRPQDVKFPGGGQIVGGVYLLPRRGPRLGVRATRKTSERSQPRGRRQ", "W"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_esm2_checkpoint(tmp_path_factory.mktemp("esm") / "esm2_t2_tiny.pt")


@pytest.fixture(scope="module")
def model(checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the safe weights_only path must suffice
        return load_esm2(str(checkpoint))


@pytest.fixture(scope="module")
def reference(checkpoint):
    """fair-esm's own loader on the same file (the original's code path)."""
    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Regression weights not found"
        ref, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2_t2_tiny", data, None)
    return ref.eval(), alphabet.get_batch_converter()


def _reference_means(reference, proteins):
    ref, convert = reference
    _, _, tokens = convert([(str(i), p) for i, p in enumerate(proteins)])
    with torch.no_grad():
        rep = ref(tokens, repr_layers=[2])["representations"][2]
    return np.stack(
        [rep[i, 1 : min(1024, len(p)) + 1].mean(0).numpy() for i, p in enumerate(proteins)]
    )


def test_checkpoint_is_in_the_real_fair_esm_format(checkpoint):
    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert set(data) == {"model", "cfg"}
    cfg = data["cfg"]["model"]
    assert isinstance(cfg, argparse.Namespace)
    assert (cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_attention_heads) == (2, 32, 4)
    assert cfg.token_dropout is True
    keys = set(data["model"])
    assert "encoder.sentence_encoder.embed_tokens.weight" in keys
    assert "encoder.sentence_encoder.layers.1.self_attn.rot_emb.inv_freq" in keys
    assert "encoder.lm_head.dense.weight" in keys and not any("contact_head" in k for k in keys)
    assert {v.dtype for v in data["model"].values()} == {torch.float16}


def test_meta_built_model_equals_fair_esm_build(model, reference):
    ref_state = reference[0].state_dict()
    state = model.model.state_dict()
    assert state.keys() == ref_state.keys()
    for key, value in ref_state.items():
        if not key.startswith("contact_head."):
            assert value.dtype == torch.float32 and torch.equal(state[key], value), key
    assert (model.dim, model.layer, model.name, model.device) == (32, 2, "esm2_t2_tiny", "cpu")
    assert model.count_tokens("MKV") == 5


def test_embed_matches_fair_esm_forward_one_at_a_time(model, reference):
    vectors = model.embed(PROTEINS)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    for i, protein in enumerate(PROTEINS):
        np.testing.assert_allclose(vectors[i], _reference_means(reference, [protein])[0], atol=1e-5)


def test_embed_is_the_originals_padded_batch(model, reference):
    """The three proteins fit one of the original's batches: sorted by length, padded, one forward."""
    order = sorted(range(len(PROTEINS)), key=lambda i: (len(PROTEINS[i]), i))
    batched = _reference_means(reference, [PROTEINS[i] for i in order])
    vectors = model.embed(PROTEINS)
    np.testing.assert_array_equal(vectors[order], batched)
    np.testing.assert_array_equal(model.embed(PROTEINS[::-1]), vectors[::-1])  # the input order is kept


def test_embed_of_nothing_and_of_an_empty_protein(model):
    assert model.embed([]).shape == (0, 32)
    with pytest.raises(ValueError):
        model.embed([""])


def test_long_protein_is_seen_whole_but_averaged_over_residues_1_to_1024(model, reference):
    protein = ("MKVLAAGIVGSTNPKPQRKT" * 60)[:1100]
    ref, convert = reference
    _, _, tokens = convert([("long", protein)])
    assert tokens.shape[1] == 1102  # no input truncation
    with torch.no_grad():
        rep = ref(tokens, repr_layers=[2])["representations"][2][0]
    vector = model.embed([protein])[0]
    np.testing.assert_allclose(vector, rep[1:1025].mean(0).numpy(), atol=1e-5)
    assert not np.allclose(vector, rep[1:1101].mean(0).numpy(), atol=1e-4)


def test_forward_applies_the_token_dropout_scaling(model):
    _, _, tokens = model.batch_converter([("p", "MKVL")])
    with torch.no_grad():
        layer0 = model.model(tokens, repr_layers=[0])["representations"][0][0]
    expected = model.model.embed_tokens.weight[tokens[0]] * (1 - 0.15 * 0.8)
    torch.testing.assert_close(layer0, expected, atol=1e-7, rtol=1e-6)


def test_model_name_resolves_in_torch_home(checkpoint, model, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = tmp_path / "hub" / "checkpoints" / "esm2_t2_tiny.pt"
    target.parent.mkdir(parents=True)
    target.symlink_to(checkpoint)
    by_name = load_esm2("esm2_t2_tiny")
    np.testing.assert_array_equal(by_name.embed(PROTEINS[:1]), model.embed(PROTEINS[:1]))
    with pytest.raises(InputError) as caught:
        load_esm2("esm2_t36_3B_UR50D")
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / "hub" / "checkpoints" / "esm2_t36_3B_UR50D.pt") in message


def test_bad_paths_and_files_are_input_errors(checkpoint, tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_esm2(str(tmp_path / "esm2_missing.pt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "esm2_other.pt")
    with pytest.raises(InputError, match="not a fair-esm ESM-2 checkpoint"):
        load_esm2(str(tmp_path / "esm2_other.pt"))
    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    del data["model"]["encoder.sentence_encoder.layers.0.fc1.bias"]
    torch.save(data, tmp_path / "esm2_cut.pt")
    with pytest.raises(InputError, match="missing.*layers.0.fc1.bias"):
        load_esm2(str(tmp_path / "esm2_cut.pt"))

