"""Step 4: the score histogram, to see how unbalanced the classes are before balancing.

In the legacy set score 70 had 24,943 images and score 98 only 24; this plot and its count
table are what motivated the per-class caps and top-ups of
:mod:`caffe_compat.workflow.balance`. The input is either a CSV with a ``score`` column (the
clean sheet or the frames manifest) or a Caffe list file, whose labels are ``score - 60``.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.data.listfile import read_list
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.workflow.annotations import SCORE_MIN
from caffe_compat.workflow.tables import format_table, make_folder, read_csv


@dataclass
class Distribution:
    """Images per score."""

    counts: Counter

    def table(self) -> str:
        """Every score from the lowest to the highest seen (zeros included) and its count."""
        if not self.counts:
            return format_table(("score", "images"), [])
        lo, hi = min(self.counts), max(self.counts)
        rows = [(s, self.counts.get(s, 0)) for s in range(lo, hi + 1)]
        return format_table(("score", "images"), rows + [("total", sum(self.counts.values()))])


def read_scores(path: str | os.PathLike[str], label_offset: int = SCORE_MIN) -> Counter:
    """Count scores in a CSV (``score`` column) or a Caffe list file (label + ``label_offset``)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        counts: Counter = Counter()
        for number, row in enumerate(read_csv(path, required=("score",)), start=2):
            try:
                counts[int(row["score"])] += 1
            except ValueError:
                raise CaffeCompatError(f"{where(path, number)}: score {row['score']!r} is not an integer") from None
        return counts
    listing = read_list(path)
    if listing.warnings:
        raise CaffeCompatError(listing.warnings[0])
    return Counter(entry.label + label_offset for entry in listing.entries)


def plot_distribution(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    label_offset: int = SCORE_MIN,
    title: str | None = None,
    log_scale: bool = False,
) -> Distribution:
    """Write a bar chart of images per score to ``output`` (PNG) and return the counts.

    ``log_scale`` keeps classes of a few dozen images visible next to ones of tens of thousands.
    """
    dist = Distribution(read_scores(source, label_offset))
    if not dist.counts:
        raise CaffeCompatError(f"{source}: no rows to plot")
    scores = sorted(dist.counts)
    import matplotlib  # imported here: it costs 0.3 s, and every CLI start would pay it

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    try:
        ax.bar(scores, [dist.counts[s] for s in scores], width=0.8, color="#4878a8")
        ax.set_xlabel("score")
        ax.set_ylabel("images (log scale)" if log_scale else "images")
        if log_scale:
            ax.set_yscale("log")
        total = sum(dist.counts.values())
        ax.set_title(title or f"{Path(source).name}: {total} images, {len(scores)} scores")
        ax.grid(axis="y", alpha=0.3)
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    make_folder(Path(output).parent)
    atomic_write_bytes(output, buf.getvalue())
    return dist
