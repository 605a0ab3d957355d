"""The legacy MAE report: predictions on every test sample, their numbers, charts and galleries.

``write_report`` renders a :class:`~caffe_compat.report.predictions.Predictions` table into a
folder: ``predictions.csv`` (one row per sample), ``report.json`` (every number), ``report.md``
(the tables) and ``report.html`` (one self-contained page with the charts and the galleries of
best and worst cases, pictures taken from the test source). Everything is computed in memory
first, so bad input stops before anything is written, and each file is written atomically.

Modules: ``predictions`` (decoding and the CSV), ``metrics``, ``faces`` (OpenCV quality
flags), ``images`` (the source's pictures and keys), ``videos`` (per-video results of frame
data), ``galleries``, ``plots``, ``page``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.data.scores import SCORE_CLASSES, SCORE_MIN, expected_scores
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.report.predictions import Predictions

__all__ = ["SCORE_CLASSES", "SCORE_MIN", "Predictions", "expected_scores", "write_report", "REPORT_FILES"]

REPORT_FILES = ("predictions.csv", "report.json", "report.md", "report.html")


def check_source_matches(pred: Predictions, images) -> None:
    """Every row's key is the key of its record in ``images`` (a CSV re-rendered against the
    wrong --source would otherwise show other people's faces)."""
    for row in range(len(pred)):
        index = int(pred.index[row])
        if not 0 <= index < len(images) or images.key(index) != pred.keys[row]:
            found = images.key(index) if 0 <= index < len(images) else "nothing"
            raise CaffeCompatError(f"the source does not match the predictions: record {index} is {found!r} there, "
                                   f"{pred.keys[row]!r} in the predictions")


def write_report(out_dir: str | os.PathLike[str], pred: Predictions, *, images=None,
                 info: Sequence[tuple[str, str]] = (), notes: Sequence[str] = (), extra: dict | None = None,
                 title: str = "caffe-compat test report") -> Path:
    """Write the four report files into ``out_dir``; returns the HTML page's path.

    ``images``: a :class:`~caffe_compat.report.images.RecordImages` of the source the rows
    index (for the gallery thumbnails), or None.
    """
    from caffe_compat.report.galleries import GALLERY, Gallery, select_galleries
    from caffe_compat.report.videos import group_videos, video_gallery_rows, video_metrics, with_label_suspect
    from caffe_compat.report.images import thumbnail_uri
    from caffe_compat.report.metrics import all_metrics, flag_table
    from caffe_compat.report.page import render_html, render_markdown
    from caffe_compat.report.plots import classification_plots, value_plots
    from caffe_compat.report.predictions import to_csv

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CaffeCompatError(f"{where(out)}: the report folder is a file")
    if len(pred) == 0:
        raise CaffeCompatError("report: no samples to score (the test source is empty)")
    if images is not None:
        check_source_matches(pred, images)
    metrics = all_metrics(pred)
    videos = group_videos(pred)
    if videos is not None:
        metrics["videos"] = video_metrics(pred, videos, metrics["unit"])
        pred = with_label_suspect(pred, videos, metrics["unit"])
    flags = flag_table(pred)
    charts = classification_plots(pred, metrics) if pred.mode == "classification" else value_plots(pred, metrics)
    galleries = select_galleries(pred)
    if videos is not None:
        before_flags = next((i for i, g in enumerate(galleries) if g.id.startswith("flag-")), len(galleries))
        galleries.insert(before_flags, Gallery("videos", "Worst videos (each video's typical frame: the one nearest "
                                               "its mean prediction)",
                                               video_gallery_rows(pred, videos, metrics["videos"], GALLERY)))
    thumbs: dict[int, str] = {}

    def thumbnail(row: int) -> str:
        if row not in thumbs:
            thumbs[row] = thumbnail_uri(images.picture(int(pred.index[row])))
        return thumbs[row]

    info = list(info)
    notes = list(notes)
    if pred.flags is not None and not flags:
        notes.append(f"quality flags: none of the {len(pred)} samples is flagged")
    page = render_html(title, info, metrics, charts, flags, galleries, pred, thumbnail if images is not None else None,
                       notes)
    payload = {"title": title, "info": dict(info), "notes": notes, "metrics": metrics, "flags": flags,
               "galleries": {g.id: [pred.keys[r] for r in g.rows] for g in galleries}, **(extra or {})}
    files = {
        "predictions.csv": to_csv(pred).encode("utf-8"),
        "report.json": json.dumps(payload, indent=1, allow_nan=False).encode("utf-8"),
        "report.md": render_markdown(title, info, metrics, flags, notes).encode("utf-8"),
        "report.html": page.encode("utf-8"),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaffeCompatError(f"{where(out)}: cannot create the report folder: {exc.strerror}") from None
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    return out / "report.html"
