"""The report's figures for awkward inputs: many samples, a sample with no scored chunk, a long record."""

import random

import pytest

from virnucflow.contigs import chunk_ids
from virnucflow.report_data import SampleData, run_stats
from virnucflow.report_plots import plot_run_stats, plot_score_distribution, plot_score_tracks, plot_viral_fraction, top_contigs

pytestmark = pytest.mark.unit

PNG = b"\x89PNG\r\n\x1a\n"


def sample(name, n_records, seed, scored=True):
    rng = random.Random(seed)
    contigs, scores, calls = [], {}, {}
    for i in range(n_records):
        length = rng.randint(200, 5000)
        ids = chunk_ids(f"{name}_r{i}", length, 500)
        for chunk in ids:
            if scored and rng.random() < 0.7:
                scores[chunk] = rng.random()
                calls[chunk] = scores[chunk] > 0.5
        viral = sum(calls.get(c, False) for c in ids)
        mine = [scores[c] for c in ids if c in scores]
        contigs.append({"sequence_id": f"{name}_r{i}", "length": length, "chunks": len(ids), "chunks_scored": len(mine),
                        "chunks_viral": viral, "viral_fraction": viral / len(ids),
                        "max_virus_score": max(mine) if mine else None,
                        "mean_virus_score": sum(mine) / len(mine) if mine else None,
                        "call": "virus" if viral and viral >= 0.5 * len(ids) else "others"})
    return SampleData(name, scores, calls, contigs, kept_frames=len(scores) * 2, parts=1,
                      embed_seconds=[rng.random() * 10 for _ in range(3)] if scored else [])


def test_many_samples_and_an_unscored_one(tmp_path):
    samples = [sample(f"s{i}", 30, i) for i in range(15)] + [sample("nothing_kept", 5, 99, scored=False)]
    stats = [run_stats(s) for s in samples]
    assert stats[-1]["chunks_scored"] == 0 and stats[-1]["embed_seconds"] == "NA"
    for name, draw in (("scores", lambda p: plot_score_distribution(samples, p)),
                       ("fraction", lambda p: plot_viral_fraction(samples, p)),
                       ("stats", lambda p: plot_run_stats(samples, stats, p))):
        draw(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG), name
    plot_score_tracks(samples[-1], 500, 10, tmp_path / "empty_tracks.png")
    assert (tmp_path / "empty_tracks.png").read_bytes().startswith(PNG)
    assert not list(tmp_path.glob(".*.tmp"))


def test_top_contigs_puts_viral_records_first():
    s = sample("s", 40, 7)
    top = top_contigs(s.contigs, 10)
    assert len(top) == 10 and all(r["chunks_scored"] for r in top)
    calls = [r["call"] for r in top]
    assert calls == sorted(calls, key=lambda c: c != "virus")
