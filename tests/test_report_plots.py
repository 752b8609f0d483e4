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


LONG = "Sample_from_the_sequencing_core_run_2026_11_30_lane_4_plate_2"[:60]  # 60 characters


def figures_with_a_long_name():
    from virnucflow import report_plots

    samples = [sample(LONG, 8, 1), sample("short", 6, 2), sample(LONG[:-1] + "Z", 5, 3)]
    stats = [run_stats(s) for s in samples]
    return {
        "scores": report_plots.score_distribution_figure(samples),
        "fraction": report_plots.viral_fraction_figure(samples),
        "stats": report_plots.run_stats_figure(samples, stats),
        "tracks": report_plots.score_tracks_figure(samples[0], 500, 3),
    }


def drawn_texts(fig):
    """The texts that the figure draws: tick labels within the view limits, titles, axis labels, legends."""
    from matplotlib.text import Text

    ticks, hidden = [], set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks():
                hidden.add(id(tick.label1))
                hidden.add(id(tick.label2))
                if lo - 1e-9 <= tick.get_loc() <= hi + 1e-9 and tick.label1.get_visible() and tick.label1.get_text():
                    ticks.append(tick.label1)
    others = [t for t in fig.findobj(Text) if id(t) not in hidden and t.get_visible() and t.get_text()]
    return ticks, others


def test_a_60_character_sample_name_stays_off_the_plots():
    import matplotlib.pyplot as plt
    from matplotlib.legend import Legend

    assert len(LONG) == 60
    for name, fig in figures_with_a_long_name().items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        plots = [ax.get_window_extent(renderer) for ax in fig.axes]
        ticks, others = drawn_texts(fig)
        assert any("\u2026" in t.get_text() or LONG in t.get_text() for t in ticks + others), name
        for text in ticks + others:
            box = text.get_window_extent(renderer)
            assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1, (name, text.get_text())
            assert fig.bbox.y0 - 1 <= box.y0 and box.y1 <= fig.bbox.y1 + 1, (name, text.get_text())
        for label in ticks:  # the sample names are tick labels: none runs into a plot
            assert not any(label.get_window_extent(renderer).overlaps(p) for p in plots), (name, label.get_text())
        for legend in fig.legends:  # the figure's legends hide no plot, nor the title
            box = legend.get_window_extent(renderer)
            assert not any(box.overlaps(p) for p in plots), name
            if fig._suptitle is not None:
                assert not box.overlaps(fig._suptitle.get_window_extent(renderer)), name
        assert not [lg for ax in fig.axes for lg in ax.findobj(Legend) if lg.axes is ax and lg.get_visible()
                    and any(lg.get_window_extent(renderer).overlaps(p) for p in plots if p != ax.bbox)], name
        plt.close(fig)


def test_short_labels_keep_start_and_end_and_stay_distinct():
    from virnucflow.report_plots import short_labels

    labels = short_labels([LONG, LONG[:-1] + "Z", "short"])
    assert labels[2] == "short" and len(set(labels)) == 3
    assert all(len(label) <= 28 for label in labels)
    assert labels[0].startswith(LONG[:10]) and labels[0].endswith(LONG[-10:]) and "\u2026" in labels[0]
    # names that differ only in the middle get longer labels, not the same one
    twins = ["A" * 30 + "x" + "B" * 30, "A" * 30 + "y" + "B" * 30]
    assert len(set(short_labels(twins))) == 2
