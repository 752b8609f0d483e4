"""The merged `.pt` written without torch is the file torch.save writes: same records, same pickle, same
values bit for bit; torch.load (weights_only, also memory-mapped) and the classify step read it."""

import zipfile

import numpy as np
import pytest
import torch

from virnucflow import torch_format
from virnucflow.classifier import classify_files, write_random_classifier
from virnucflow.features import load_merged, save_merged

pytestmark = pytest.mark.unit

CASES = {
    "typical": ([f"read{i}_chunk_{i % 3 + 1}F{i % 3 + 1}" for i in range(5)], (5, 24)),
    "one_row": (["r1_chunk_1R2"], (1, 3328)),
    "no_rows": ([], (0, 3328)),
    "batches": ([f"id{i:05d}" for i in range(2345)], (2345, 3)),  # list appends in batches of 1000
    "memo_past_255": ([f"seq{i}" for i in range(300)], (300, 2)),  # LONG_BINPUT for memo slots >= 256
}


def values(shape, seed=0):
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    if data.size:
        data.flat[0], data.flat[-1] = np.float32(-0.0), np.float32(np.nextafter(np.float32(0), np.float32(1)))
    return data


def by_torch(path, ids, data):
    """What the original's merge step (torch.save of a contiguous tensor) writes."""
    tensor = torch.empty(data.shape, dtype=torch.float32)
    tensor.copy_(torch.from_numpy(data))
    torch.save({"ids": list(ids), "data": tensor}, path)


def records(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_records_and_their_bytes_are_torch_saves(tmp_path, case):
    ids, shape = CASES[case]
    data = values(shape)
    ours, theirs = tmp_path / "ours" / "output_1_merged.pt", tmp_path / "torch" / "output_1_merged.pt"
    theirs.parent.mkdir()
    torch_format.save_ids_and_matrix(ours, ids, data)
    by_torch(theirs, ids, data)
    mine, torchs = records(ours), records(theirs)
    # torch's one extra record is a random id of this save, which nothing reads back
    assert list(mine) == [n for n in torchs if n != "output_1_merged/.data/serialization_id"]
    assert mine == {n: torchs[n] for n in mine}
    assert mine["output_1_merged/data/0"] == data.astype("<f4").tobytes()
    assert [p.name for p in ours.parent.iterdir()] == [ours.name]  # no temporary file left


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_load_weights_only_gives_what_torch_save_would(tmp_path, case, mmap):
    ids, shape = CASES[case]
    data = values(shape, seed=1)
    ours, theirs = tmp_path / "a.pt", tmp_path / "b.pt"
    torch_format.save_ids_and_matrix(ours, ids, data)
    by_torch(theirs, ids, data)
    got, want = torch.load(ours, weights_only=True, mmap=mmap), torch.load(theirs, weights_only=True)
    assert set(got) == {"ids", "data"} and type(got["ids"]) is list and got["ids"] == want["ids"] == ids
    assert got["data"].dtype == torch.float32 and tuple(got["data"].shape) == shape
    assert got["data"].stride() == want["data"].stride() and not got["data"].requires_grad
    assert np.array_equal(got["data"].numpy().view(np.uint32), data.view(np.uint32))  # bit for bit, -0.0 too


def test_every_record_starts_at_the_alignment_torch_declares(tmp_path):
    path = tmp_path / "m.pt"
    torch_format.save_ids_and_matrix(path, ["a", "b"], values((2, 5)))
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        assert archive.read("m/.storage_alignment") == b"64"
        for info in archive.infolist():
            name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
                int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename


def test_records_too_large_for_zip32_headers_are_still_read(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_format, "ZIP64_FROM", 0)  # every record as a >= 1 GiB one would be written
    path = tmp_path / "big.pt"
    data = values((3, 7))
    torch_format.save_ids_and_matrix(path, ["x", "y", "z"], data)
    for mmap in (False, True):
        got = torch.load(path, weights_only=True, mmap=mmap)
        assert got["ids"] == ["x", "y", "z"] and np.array_equal(got["data"].numpy(), data)


def test_odd_ids_and_repeated_ids_load_as_given(tmp_path):
    ids = ["", "a", "a", "ünïcødé_chunk_1F1", "with space", "x" * 300, "tab\there"]
    data = values((len(ids), 4))
    torch_format.save_ids_and_matrix(tmp_path / "m.pt", ids, data)
    got = torch.load(tmp_path / "m.pt", weights_only=True)
    assert got["ids"] == ids and np.array_equal(got["data"].numpy(), data)


def test_bad_arguments_write_nothing(tmp_path):
    for ids, data in ((["a"], np.zeros((2, 3))), (["a", 2], np.zeros((2, 3))), (["a"], np.zeros(3))):
        with pytest.raises(ValueError):
            torch_format.save_ids_and_matrix(tmp_path / "m.pt", ids, data)
    assert list(tmp_path.iterdir()) == []


def test_the_classify_step_reads_the_file(tmp_path):
    ids = [f"r{i}_chunk_1F{i % 3 + 1}" for i in range(6)]
    data = values((6, 40), seed=3)
    save_merged(tmp_path / "ours.pt", {"ids": ids, "data": data})
    by_torch(tmp_path / "torch.pt", ids, data)
    loaded = load_merged(tmp_path / "ours.pt")
    assert loaded["ids"] == ids and torch.equal(loaded["data"], torch.from_numpy(data))
    model = tmp_path / "300_model.pth"
    write_random_classifier(model, input_dim=40, seed=2)
    for name in ("ours", "torch"):
        out = tmp_path / name
        assert classify_files(model, [tmp_path / f"{name}.pt"], out) == 6
    for table in ("prediction_results.txt", "prediction_results_highestscore.csv"):
        assert (tmp_path / "ours" / table).read_bytes() == (tmp_path / "torch" / table).read_bytes()
