"""Merged feature files in the original layout, and the torch-free per-file embedding .npz files."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from virnucflow import features as Fe
from virnucflow.embedding_files import load_embeddings, save_embeddings
from virnucflow.errors import InputError


def embeddings(ids, dim, seed):
    return list(ids), np.random.default_rng(seed).normal(size=(len(ids), dim)).astype(np.float32)


IDS = [f"read{i}_chunk_{i % 2 + 1}{'FR'[i % 2]}{i % 3 + 1}" for i in range(7)]


@pytest.mark.unit
def test_merge_puts_dnabert_first_then_esm():
    dna, protein = embeddings(IDS, 768, 0), embeddings(IDS, 2560, 1)
    merged = Fe.merge_embeddings(dna, protein)
    assert merged["ids"] == IDS
    data = merged["data"]
    assert data.dtype == np.float32 and tuple(data.shape) == (7, Fe.MERGED_DIM) == (7, 3328)
    assert np.array_equal(data[:, :768], dna[1])
    assert np.array_equal(data[:, 768:], protein[1])


@pytest.mark.unit
def test_merge_accepts_tensors_and_float64():
    dna = (IDS, torch.randn(7, 768, dtype=torch.float64))
    protein = (tuple(IDS), torch.randn(7, 2560))
    data = Fe.merge_embeddings(dna, protein)["data"]
    assert data.dtype == np.float32
    assert np.array_equal(data[:, :768], dna[1].float().numpy())


@pytest.mark.unit
def test_merge_names_the_first_mismatch():
    swapped = IDS[:3] + [IDS[4], IDS[3]] + IDS[5:]
    with pytest.raises(InputError, match=r"row 3: '%s' vs '%s'" % (IDS[3], IDS[4])):
        Fe.merge_embeddings(embeddings(IDS, 768, 0), embeddings(swapped, 2560, 1))
    with pytest.raises(InputError, match=r"row 6: '%s' is present on one side only" % IDS[6]):
        Fe.merge_embeddings(embeddings(IDS, 768, 0), embeddings(IDS[:6], 2560, 1))


@pytest.mark.unit
def test_merge_checks_widths_and_rows():
    with pytest.raises(InputError, match="768"):
        Fe.merge_embeddings(embeddings(IDS, 767, 0), embeddings(IDS, 2560, 1))
    with pytest.raises(InputError, match="2560"):
        Fe.merge_embeddings(embeddings(IDS, 768, 0), embeddings(IDS, 1280, 1))
    with pytest.raises(InputError, match="rows"):
        Fe.merge_embeddings((IDS, np.zeros((6, 768))), embeddings(IDS, 2560, 1))
    small = Fe.merge_embeddings(embeddings(IDS, 3, 0), embeddings(IDS, 5, 1), dna_dim=3, protein_dim=5)
    assert tuple(small["data"].shape) == (7, 8)


@pytest.mark.unit
def test_merge_of_nothing():
    merged = Fe.merge_embeddings(([], np.zeros((0, 768))), ([], np.zeros((0, 2560))))
    assert merged["ids"] == [] and tuple(merged["data"].shape) == (0, 3328)


@pytest.mark.unit
def test_merged_file_roundtrip_in_original_layout(tmp_path):
    merged = Fe.merge_embeddings(embeddings(IDS, 768, 0), embeddings(IDS, 2560, 1))
    path = tmp_path / "output_1_merged.pt"
    Fe.save_merged(path, merged)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"ids", "data"} and type(raw["ids"]) is list and raw["ids"] == IDS
    assert raw["data"].dtype == torch.float32 and torch.equal(raw["data"], torch.from_numpy(merged["data"]))
    loaded = Fe.load_merged(path)
    assert loaded["ids"] == IDS and torch.equal(loaded["data"], torch.from_numpy(merged["data"]))


@pytest.mark.unit
def test_save_merged_does_not_write_a_views_whole_storage(tmp_path):
    big = torch.randn(1000, 3328)
    Fe.save_merged(tmp_path / "m.pt", {"ids": ["a", "b"], "data": big[:2]})
    assert (tmp_path / "m.pt").stat().st_size < 200_000


@pytest.mark.unit
def test_load_merged_reads_the_originals_files(tmp_path):
    path = tmp_path / "output_1_merged.pt"
    data = torch.stack([torch.cat((torch.tensor(list(map(float, range(768)))), torch.randn(2560))) for _ in range(3)])
    torch.save({"ids": ["a", "b", "c"], "data": data, "labels": [1]}, path)
    loaded = Fe.load_merged(path)
    assert loaded["ids"] == ["a", "b", "c"] and torch.equal(loaded["data"], data)


@pytest.mark.unit
def test_load_merged_refuses_bad_files(tmp_path):
    misaligned = tmp_path / "misaligned.pt"  # what merge_data saves when ESM lacks an id
    torch.save({"ids": ["a", "b", "c"], "data": torch.randn(2, 3328)}, misaligned)
    not_dict = tmp_path / "tensor.pt"
    torch.save(torch.randn(2, 3328), not_dict)
    bad_ids = tmp_path / "ids.pt"
    torch.save({"ids": [1, 2], "data": torch.randn(2, 3328)}, bad_ids)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    for path in [misaligned, not_dict, bad_ids, text, tmp_path / "missing.pt"]:
        with pytest.raises(InputError) as excinfo:
            Fe.load_merged(path)
        assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)


@pytest.mark.unit
def test_embedding_npz_roundtrip(tmp_path):
    ids = ["plain", "ünïcødé_chunk_1F1", "with space", "x" * 300, ""]
    array = np.random.default_rng(0).normal(size=(5, 11))
    path = tmp_path / "output_1_DNABERT_S"  # no .npz suffix: must not grow one
    save_embeddings(path, ids, array)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with np.load(path, allow_pickle=False) as raw:
        assert raw["ids"].dtype.kind == "U" and raw["data"].dtype == np.float32
    got_ids, got = load_embeddings(path)
    assert got_ids == ids and got.dtype == np.float32
    assert np.array_equal(got, array.astype(np.float32))


@pytest.mark.unit
def test_embedding_npz_empty(tmp_path):
    save_embeddings(tmp_path / "e.npz", [], np.zeros((0, 768)))
    ids, data = load_embeddings(tmp_path / "e.npz")
    assert ids == [] and data.shape == (0, 768)


@pytest.mark.unit
def test_save_embeddings_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        save_embeddings(tmp_path / "a.npz", ["a", "b"], np.zeros((3, 4)))
    with pytest.raises(ValueError):
        save_embeddings(tmp_path / "a.npz", ["a", 2], np.zeros((2, 4)))
    with pytest.raises(ValueError):
        save_embeddings(tmp_path / "a.npz", ["a\0"], np.zeros((1, 4)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
def test_load_embeddings_refuses_bad_files(tmp_path):
    pickled = tmp_path / "pickled.npz"
    with open(pickled, "wb") as handle:
        np.savez(handle, ids=np.array(["a", None], dtype=object), data=np.zeros((2, 3)))
    npy = tmp_path / "plain.npy"
    np.save(npy, np.zeros(3))
    extra = tmp_path / "extra.npz"
    with open(extra, "wb") as handle:
        np.savez(handle, ids=np.array(["a"]), data=np.zeros((1, 3)), more=np.zeros(1))
    rows = tmp_path / "rows.npz"
    with open(rows, "wb") as handle:
        np.savez(handle, ids=np.array(["a"]), data=np.zeros((2, 3)))
    text = tmp_path / "text.npz"
    text.write_text("nope")
    for path in [pickled, npy, extra, rows, text, tmp_path / "missing.npz"]:
        with pytest.raises(InputError) as excinfo:
            load_embeddings(path)
        assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)


@pytest.mark.process
def test_embedding_files_module_does_not_import_torch(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from virnucflow.embedding_files import save_embeddings, load_embeddings\n"
        f"save_embeddings({str(tmp_path / 'x.npz')!r}, ['a'], np.ones((1, 2)))\n"
        f"load_embeddings({str(tmp_path / 'x.npz')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.unit
def test_merge_files_end_to_end(tmp_path):
    dna, protein = embeddings(IDS, 768, 0), embeddings(IDS, 2560, 1)
    save_embeddings(tmp_path / "d.npz", *dna)
    save_embeddings(tmp_path / "p.npz", *protein)
    merged = Fe.merge_files(tmp_path / "d.npz", tmp_path / "p.npz", tmp_path / "output_1_merged.pt")
    loaded = Fe.load_merged(tmp_path / "output_1_merged.pt")
    assert loaded["ids"] == IDS and torch.equal(loaded["data"], torch.from_numpy(merged["data"]))
    save_embeddings(tmp_path / "p2.npz", IDS[::-1], protein[1])
    with pytest.raises(InputError) as excinfo:
        Fe.merge_files(tmp_path / "d.npz", tmp_path / "p2.npz", tmp_path / "bad.pt")
    assert "d.npz" in str(excinfo.value) and "p2.npz" in str(excinfo.value)
    assert not (tmp_path / "bad.pt").exists()


@pytest.mark.process
def test_the_merge_command_never_imports_torch(tmp_path):
    """Each part's merge job is a process of its own: it must not pay torch's import (seconds each)."""
    dna, protein = embeddings(IDS, 768, 0), embeddings(IDS, 2560, 1)
    save_embeddings(tmp_path / "d.npz", *dna)
    save_embeddings(tmp_path / "p.npz", *protein)
    out = tmp_path / "merged" / "output_1_merged.pt"
    code = ("import sys\nfrom virnucflow.cli import main\n"
            "try:\n    main(sys.argv[1:])\nfinally:\n    print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n")
    proc = subprocess.run([sys.executable, "-c", code, "merge", "--dnabert", str(tmp_path / "d.npz"),
                           "--esm", str(tmp_path / "p.npz"), "--output", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    loaded = torch.load(out, weights_only=True)
    assert loaded["ids"] == IDS and np.array_equal(loaded["data"].numpy(), np.concatenate([dna[1], protein[1]], axis=1))
