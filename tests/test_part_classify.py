"""Results follow each part: every part scored on its own, the tables put together at the end, byte for byte
those of one classification over all parts (also when a chunk's frames fall on both sides of a part boundary)."""

import numpy as np
import pytest

from virnucflow import torch_format
from virnucflow.classifier import classify_files, classify_part, write_random_classifier
from virnucflow.predictions import BATCH_SIZE, HIGHEST_NAME, RESULTS_NAME, assemble, batch_window, score_jobs

FRAMES = ("F1", "F2", "F3", "R1", "R2", "R3")


def frame_ids(n):
    """n frame ids, the frames of each chunk in a row (six, or three every seventh chunk), as translate
    writes them."""
    ids, chunk = [], 0
    while len(ids) < n:
        chunk += 1
        kept = FRAMES[::2] if chunk % 7 == 0 else FRAMES
        ids += [f"rec{chunk // 4}_chunk_{chunk % 4 + 1}{frame}" for frame in kept]
    return ids[:n]


@pytest.mark.unit
@pytest.mark.parametrize("records_per_file, rows", [(100, 730), (40, 300), (301, 600), (512, 513)])
def test_per_part_tables_equal_the_one_shot_tables(tmp_path, records_per_file, rows):
    model = tmp_path / "model.pth"
    write_random_classifier(model, input_dim=12, seed=1)
    ids = frame_ids(rows)
    data = np.random.default_rng(0).normal(size=(rows, 12)).astype(np.float32) * 3
    n_parts = -(-rows // records_per_file)
    merged = []
    for k in range(n_parts):
        rows_k = slice(k * records_per_file, (k + 1) * records_per_file)
        merged.append(tmp_path / f"output_{k + 1}_merged.pt")
        torch_format.save_ids_and_matrix(merged[-1], ids[rows_k], data[rows_k])
    # some chunk has frames in two parts, so the per-chunk table must look across parts
    assert any(ids[b - 1][:-2] == ids[b][:-2] for b in range(records_per_file, rows, records_per_file))

    one_shot = tmp_path / "one_shot"
    one_shot.mkdir()
    classify_files(model, merged, one_shot)

    tables = []
    for part in score_jobs(n_parts, records_per_file):
        first, last = batch_window(part, records_per_file, n_parts)
        tables.append(tmp_path / f"scores_{part}.tsv")
        classify_part(model, merged[first - 1:last], first, part, records_per_file, tables[-1])
    per_part = tmp_path / "per_part"
    per_part.mkdir()
    assemble(tables, per_part)
    for name in (RESULTS_NAME, HIGHEST_NAME):
        assert (per_part / name).read_bytes() == (one_shot / name).read_bytes(), name
    assert "".join(t.read_text() for t in tables) == (one_shot / RESULTS_NAME).read_text().split("\n", 1)[1]


@pytest.mark.unit
def test_the_batch_window_is_the_parts_around_a_part():
    # the original's 10,000 frames a part: a part shares a batch with its two neighbours
    assert batch_window(1, 10_000, 5) == (1, 2)
    assert batch_window(3, 10_000, 5) == (2, 4)
    assert batch_window(5, 10_000, 5) == (4, 5)
    assert batch_window(1, 10_000, 1) == (1, 1)
    assert batch_window(2, 2 * BATCH_SIZE, 3) == (2, 2)  # parts of whole batches need nothing else
    # the demo's 40 frames a part: seven parts to a job, and a batch spans up to 8 parts
    assert score_jobs(9, 40) == [1, 8]
    assert batch_window(1, 40, 9) == (1, 9) and batch_window(8, 40, 9) == (7, 9)
    assert score_jobs(3, 10_000) == [1, 2, 3] and score_jobs(200, 1) == [1]


@pytest.mark.unit
def test_an_empty_sample_gets_header_only_tables(tmp_path):
    model = tmp_path / "model.pth"
    write_random_classifier(model, input_dim=12, seed=1)
    part = tmp_path / "output_1_merged.pt"
    torch_format.save_ids_and_matrix(part, [], np.zeros((0, 12), np.float32))
    classify_part(model, [part], 1, 1, 10_000, tmp_path / "scores.tsv")
    assemble([tmp_path / "scores.tsv"], tmp_path)
    assert (tmp_path / RESULTS_NAME).read_text() == "Sequence_ID\tPrediction\tscore1\tscore2\n"
    assert (tmp_path / HIGHEST_NAME).read_text() == "Modified_ID\tIs_Virus\n"
