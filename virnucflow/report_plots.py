"""The report's figures (matplotlib, Agg backend): score distribution, viral fractions, run
statistics, and score tracks along the top records of a sample.

A chunk's virus score is the largest P(virus) over its kept frames; chunks without a kept frame
have none. Figures are written atomically as PNG. Long sample and record names are shortened in
the labels (their start and end are kept), and the layout makes room for them, so that no label
runs into a plot.
"""

import math

from virnucflow.atomic import atomic_path
from virnucflow.chunking import window_starts
from virnucflow.contigs import chunk_ids

VIRUS_COLOUR = "#c0392b"
OTHER_COLOUR = "#1f3a93"
NONE_COLOUR = "#b0b0b0"
MAX_OVERLAID = 12  # more samples than this: pooled histogram plus one box per sample
LABEL_CHARS = 28  # axis and legend labels
TITLE_CHARS = 60  # titles


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shorten(name, width):
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return f"{name[:head]}\u2026{name[len(name) - (width - 1 - head):]}"


def short_labels(names, width=LABEL_CHARS):
    """Labels of at most `width` characters (a longer name keeps its start and end around an
    ellipsis), widened where needed so that different names keep different labels."""
    names = list(names)
    for w in range(width, max(map(len, names), default=0) + 1):
        labels = [_shorten(n, w) for n in names]
        if len(set(labels)) == len(set(names)):
            return labels
    return names


def _save(fig, path):
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _empty_note(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_score_distribution(samples, path):
    _save(score_distribution_figure(samples), path)


def score_distribution_figure(samples):
    """Histogram of chunk virus scores per sample (overlaid), and one box per sample."""
    plt = _pyplot()
    rows = max(len(samples), 1)
    fig, (hist, box) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.3 * rows + 1.5)),
                                    gridspec_kw={"width_ratios": [3, 2]}, layout="constrained")
    label = dict(zip((s.name for s in samples), short_labels(s.name for s in samples)))
    values = {s.name: [v for v in s.chunk_scores.values() if not math.isnan(v)] for s in samples}
    bins = [i / 40 for i in range(41)]
    if any(values.values()):
        if len(samples) <= MAX_OVERLAID:
            for name, vals in values.items():
                if vals:
                    hist.hist(vals, bins=bins, histtype="step", linewidth=1.6, label=f"{label[name]} ({len(vals)})")
            legend = {"title": "sample (scored chunks)", "title_fontsize": 8, "ncol": min(len(samples), 3)}
        else:
            pooled = [v for vals in values.values() for v in vals]
            hist.hist(pooled, bins=bins, color=OTHER_COLOUR, alpha=0.8, label=f"all samples ({len(pooled)})")
            legend = {}
        # below the plots, where it hides no bar
        fig.legend(*hist.get_legend_handles_labels(), loc="outside lower center", fontsize=8, **legend)
        hist.axvline(0.5, color="gray", linestyle="--", linewidth=1)
        hist.set_xlim(0, 1)
        hist.set_xlabel("chunk virus score (largest P(virus) over kept frames)")
        hist.set_ylabel("chunks")
        names = [n for n, v in values.items() if v]
        box.boxplot([values[n] for n in names], orientation="horizontal", tick_labels=[label[n] for n in names],
                    showfliers=False)
        box.axvline(0.5, color="gray", linestyle="--", linewidth=1)
        box.set_xlim(0, 1)
        box.set_xlabel("chunk virus score")
    else:
        _empty_note(hist, "no chunk has a kept frame")
        _empty_note(box, "")
    hist.set_title("Distribution of virus scores")
    box.set_title("Per sample")
    return fig


def plot_viral_fraction(samples, path):
    _save(viral_fraction_figure(samples), path)


def viral_fraction_figure(samples):
    """Per sample: fraction of chunks called viral (Is_Virus) and of records called virus."""
    plt = _pyplot()
    names = short_labels(s.name for s in samples)
    chunk_frac, record_frac = [], []
    for s in samples:
        chunks = sum(r["chunks"] for r in s.contigs)
        chunk_frac.append(sum(s.chunk_calls.values()) / chunks if chunks else 0.0)
        record_frac.append(sum(r["call"] == "virus" for r in s.contigs) / len(s.contigs) if s.contigs else 0.0)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(names) + 1.2)), layout="constrained")
    y = list(range(len(names)))
    ax.barh([i - 0.2 for i in y], chunk_frac, height=0.4, color=VIRUS_COLOUR, label="chunks called viral")
    ax.barh([i + 0.2 for i in y], record_frac, height=0.4, color=OTHER_COLOUR, label="records called virus")
    for i, (c, r) in enumerate(zip(chunk_frac, record_frac)):
        ax.text(c + 0.01, i - 0.2, f"{c:.1%}", va="center", fontsize=8)
        ax.text(r + 0.01, i + 0.2, f"{r:.1%}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("fraction (all chunks, scored or not; all records)")
    ax.set_title("Fraction called viral per sample")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_run_stats(samples, stats, path):
    _save(run_stats_figure(samples, stats), path)


def run_stats_figure(samples, stats):
    """Chunks, scored chunks and kept frames per sample; embedding seconds per job."""
    plt = _pyplot()
    names = short_labels(s.name for s in samples)
    label = dict(zip((s.name for s in samples), names))
    fig, (counts, times) = plt.subplots(1, 2, figsize=(12, max(3, 0.45 * len(names) + 1.5)), layout="constrained")
    y = list(range(len(names)))
    for offset, key, colour in ((-0.27, "chunks", NONE_COLOUR), (0.0, "chunks_scored", OTHER_COLOUR),
                                (0.27, "kept_frames", VIRUS_COLOUR)):
        counts.barh([i + offset for i in y], [row[key] for row in stats], height=0.27, color=colour,
                    label=key.replace("_", " "))
    counts.set_yticks(y, names)
    counts.invert_yaxis()
    counts.set_xlabel("count")
    counts.set_title("Work per sample")
    counts.legend(fontsize=8)
    timed = [s for s in samples if s.embed_seconds]
    if timed:
        times.boxplot([s.embed_seconds for s in timed], orientation="horizontal",
                      tick_labels=[label[s.name] for s in timed])
        times.invert_yaxis()
        times.set_xlabel("seconds per embedding job (benchmarks)")
    else:
        _empty_note(times, "no embedding benchmarks found")
    times.set_title("Embedding time per part")
    return fig


def top_contigs(contigs, top):
    """Up to `top` records with a scored chunk: called virus first, then most viral chunks, highest score."""
    scored = [r for r in contigs if r["chunks_scored"] > 0]
    scored.sort(key=lambda r: (r["call"] != "virus", -r["chunks_viral"], -(r["max_virus_score"] or 0.0),
                               -r["length"], r["sequence_id"]))
    return scored[:top]


def plot_score_tracks(sample, chunk_size, top, path):
    _save(score_tracks_figure(sample, chunk_size, top), path)


def score_tracks_figure(sample, chunk_size, top):
    """One panel per top record: each chunk drawn at its virus score over the bases it covers."""
    plt = _pyplot()
    chosen = top_contigs(sample.contigs, top)
    name = _shorten(sample.name, TITLE_CHARS)
    fig, axes = plt.subplots(max(len(chosen), 1), 1, figsize=(12, 1.9 * max(len(chosen), 1) + 0.9), squeeze=False,
                             layout="constrained")
    if not chosen:
        _empty_note(axes[0][0], f"{name}: no record has a scored chunk")
    for ax, row in zip((a[0] for a in axes), chosen):
        length = row["length"]
        ids = chunk_ids(row["sequence_id"], length, chunk_size)
        for chunk, start in zip(ids, window_starts(length, chunk_size)):
            end = min(start + chunk_size, length)
            score = sample.chunk_scores.get(chunk)
            if score is None or math.isnan(score):
                ax.plot([start, end], [0.02, 0.02], color=NONE_COLOUR, linewidth=3, solid_capstyle="butt")
                continue
            colour = VIRUS_COLOUR if sample.chunk_calls.get(chunk) else OTHER_COLOUR
            ax.plot([start, end], [score, score], color=colour, linewidth=2.5, solid_capstyle="butt")
        ax.axhline(0.5, color="gray", linestyle="--", linewidth=0.8)
        ax.set_xlim(0, max(length, 1))
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("P(virus)")
        ax.set_title(f"{_shorten(row['sequence_id'], TITLE_CHARS)}  ({length:,} bp, {row['chunks_viral']}/{row['chunks']} chunks viral, "
                     f"call: {row['call']})", fontsize=10, loc="left")
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1][0].set_xlabel("position (bp)")
    handles = [plt.Line2D([], [], color=c, linewidth=3) for c in (VIRUS_COLOUR, OTHER_COLOUR, NONE_COLOUR)]
    fig.legend(handles, ["chunk called viral", "chunk not viral", "no kept frame (not viral)"],
               loc="outside lower center", fontsize=8, ncol=3)
    fig.suptitle(f"{name}: score tracks of the top {len(chosen)} records", x=0.01, ha="left")
    return fig
