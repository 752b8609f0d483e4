"""MosaicBERT forward: bit-level agreement with the reference hub code's outputs, ALiBi, loading."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from virnucflow.models.dnabert_s import load_tokenizer, write_tiny_dnabert_s
from virnucflow.models.mosaicbert import alibi_bias, alibi_slopes, load_mosaicbert

pytestmark = pytest.mark.unit

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dnabert_s"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_dnabert_s(tmp_path_factory.mktemp("dnabert") / "tiny")


def test_reference_tiny_model_matches_hub_code_outputs():
    if not (REFERENCE / "tiny" / "model.safetensors").is_file():
        pytest.skip(f"reference data absent: {REFERENCE}")
    model = load_mosaicbert(REFERENCE / "tiny")
    tokenizer = load_tokenizer(REFERENCE / "tokenizer" / "tokenizer.json")
    expected = load_file(str(REFERENCE / "tiny" / "vectors.safetensors"))
    sequences = (REFERENCE / "tiny" / "sequences.txt").read_text().split()
    assert sequences
    with torch.inference_mode():
        for i, seq in enumerate(sequences):
            ids = tokenizer.encode(seq).ids
            assert ids == expected[f"input_ids_{i}"].tolist()
            hidden = model(torch.tensor([ids]))[0]
            torch.testing.assert_close(hidden, expected[f"hidden_{i}"], atol=1e-5, rtol=0)
            mean = hidden.mean(0)  # over ALL tokens, [CLS] and [SEP] included
            torch.testing.assert_close(mean, expected[f"mean_{i}"], atol=1e-5, rtol=0)


def test_alibi_slopes_power_of_two_and_twelve_heads():
    assert alibi_slopes(8) == [2.0**-k for k in range(1, 9)]
    # DNABERT-S has 12 heads: 8 power-of-two slopes, then every other slope of 16 heads.
    assert alibi_slopes(12) == pytest.approx(
        [2.0**-k for k in range(1, 9)] + [2.0**-k for k in (0.5, 1.5, 2.5, 3.5)], rel=1e-15
    )
    bias = alibi_bias(4, 5)
    assert bias.shape == (1, 4, 5, 5) and bias.dtype == torch.float32
    assert bias[0, 0, 1, 4].item() == pytest.approx(-3 * 0.25)
    assert torch.equal(bias[0], bias[0].transpose(-1, -2))


def test_batched_with_mask_matches_one_at_a_time(tiny_dir):
    model = load_mosaicbert(tiny_dir)
    tokenizer = load_tokenizer(tiny_dir / "tokenizer.json")
    ids = [tokenizer.encode(s).ids for s in ("ACGTTGCA" * 5, "GGGATTACA", "T" * 70)]
    width = max(map(len, ids))
    batch = torch.tensor([row + [3] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    with torch.inference_mode():
        batched = model(batch, mask)
        for i, row in enumerate(ids):
            alone = model(torch.tensor([row]))[0]
            torch.testing.assert_close(batched[i, : len(row)], alone, atol=1e-5, rtol=1e-5)
            assert not batched[i, len(row) :].any()


def test_pytorch_model_bin_and_prefix_handling(tiny_dir, tmp_path):
    state = load_file(str(tiny_dir / "model.safetensors"))
    assert all(k.startswith("bert.") for k in state) and "bert.pooler.dense.weight" in state
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text((tiny_dir / "config.json").read_text())
    torch.save({k.removeprefix("bert."): v for k, v in state.items()}, plain / "pytorch_model.bin")
    ids = torch.tensor([[1, 7, 9, 11, 2]])
    with torch.inference_mode():
        assert torch.equal(load_mosaicbert(plain)(ids), load_mosaicbert(tiny_dir)(ids))


def test_weights_not_fitting_the_config_are_refused(tiny_dir, tmp_path):
    state = load_file(str(tiny_dir / "model.safetensors"))
    del state["bert.encoder.layer.1.mlp.wo.bias"]
    state["bert.encoder.layer.1.mlp.extra"] = torch.zeros(1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_dir / "config.json").read_text())
    torch.save(state, broken / "pytorch_model.bin")
    with pytest.raises(ValueError, match="missing.*mlp.wo.bias.*unexpected.*mlp.extra"):
        load_mosaicbert(broken)
    with pytest.raises(FileNotFoundError):
        load_mosaicbert(tmp_path)
