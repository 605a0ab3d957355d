"""Per-video results for frame data: the frames of one video share its person and its label.

``extract-frames`` names frames ``<videoid>_<frameidx>.jpg`` and ``convert-imageset`` keys them
``<8-digit index>_<list path>``, so a key names its video. When every key does and some video
has several frames, the report adds: the MAE of each video's mean prediction next to the
per-frame MAE (what a per-video score would be worth), a table of the worst videos, a gallery
with one frame per video, and the flag ``label_suspect``: a video whose frames agree with each
other but not with its label (the legacy report's "wrong label" cause).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from caffe_compat.report.predictions import Predictions

_LMDB_KEY = re.compile(r"^\d{8}_")
_FRAME = re.compile(r"^(?P<video>.+)_(?P<frame>\d+)\.(?:jpe?g|png|bmp)$", re.IGNORECASE)
SUSPECT_SPREAD = 2.0  # units: frames agree when their predictions' std is at most this
SUSPECT_OFF = 5.0  # units: ... and their mean is at least this far from the label
SUSPECT_FRAMES = 3
SUSPECT_RATIO = 3.0  # ... and at least this many times the median video's error
WORST_VIDEOS = 20


def video_of(key: str) -> str | None:
    """The video a frame's key names (``00000012_frames/v7_120.jpg`` -> ``v7``), or None."""
    name = _LMDB_KEY.sub("", key, count=1).replace("\\", "/").rsplit("/", 1)[-1]
    match = _FRAME.match(name)
    return match.group("video") if match else None


@dataclass(frozen=True)
class Videos:
    """The rows of each video, in first-seen order."""

    ids: tuple[str, ...]
    rows: tuple[tuple[int, ...], ...]


def group_videos(pred: Predictions) -> Videos | None:
    """The videos of a score or regression table whose every key names one, when any has two
    or more frames; None otherwise (still images, or a classifier)."""
    if pred.mode == "classification" or not len(pred):
        return None
    groups: dict[str, list[int]] = {}
    for row, key in enumerate(pred.keys):
        video = video_of(key)
        if video is None:
            return None
        groups.setdefault(video, []).append(row)
    if max(len(rows) for rows in groups.values()) < 2:
        return None
    return Videos(tuple(groups), tuple(tuple(rows) for rows in groups.values()))


def video_metrics(pred: Predictions, videos: Videos, unit: float) -> dict:
    """Per-video MAE (of each video's mean prediction) against the per-frame MAE, and every
    video's row (worst first): frames, label, mean prediction, its error, the frames' spread."""
    table = []
    suspects = suspect_videos(pred, videos, unit)
    for k, (video, rows) in enumerate(zip(videos.ids, videos.rows)):
        index = np.asarray(rows)
        truth, prediction = pred.truth[index], pred.prediction[index]
        mean = float(prediction.mean())
        table.append({"video": video, "frames": len(rows), "truth": float(truth.mean()), "mean_prediction": mean,
                      "error": mean - float(truth.mean()), "frame_mae": float(np.abs(prediction - truth).mean()),
                      "spread": float(prediction.std()), "suspect": k in suspects})
    table.sort(key=lambda r: (-abs(r["error"]), r["video"]))
    return {"count": len(table), "video_mae": float(np.mean([abs(r["error"]) for r in table])),
            "frame_mae": float(np.abs(pred.errors).mean()), "label_suspect": sum(r["suspect"] for r in table),
            "rows": table}


def suspect_videos(pred: Predictions, videos: Videos, unit: float) -> set[int]:
    """The videos (positions in ``videos``) whose frames agree with each other (spread at most
    :data:`SUSPECT_SPREAD` units) but whose mean is far from the label: at least
    :data:`SUSPECT_OFF` units and :data:`SUSPECT_RATIO` times the median video's error (a net
    that predicts one value for everything makes every video "agree": none stands out then)."""
    errors, spreads = [], []
    for rows in videos.rows:
        index = np.asarray(rows)
        errors.append(abs(float(pred.prediction[index].mean() - pred.truth[index].mean())))
        spreads.append(float(pred.prediction[index].std()))
    typical = float(np.median(errors))
    return {k for k, rows in enumerate(videos.rows)
            if len(rows) >= SUSPECT_FRAMES and spreads[k] <= SUSPECT_SPREAD * unit
            and errors[k] >= max(SUSPECT_OFF * unit, SUSPECT_RATIO * typical)}


def with_label_suspect(pred: Predictions, videos: Videos | None, unit: float) -> Predictions:
    """The table with ``label_suspect`` on every frame of a suspect video (recomputed, so a
    table read back from predictions.csv gets the same flags)."""
    if videos is None:
        return pred
    flags = [[f for f in row if f != "label_suspect"] for row in (pred.flags or [()] * len(pred))]
    for k in suspect_videos(pred, videos, unit):
        for row in videos.rows[k]:
            flags[row].append("label_suspect")
    if pred.flags is None and not any(flags):
        return pred
    return pred.with_flags(flags)


def video_gallery_rows(pred: Predictions, videos: Videos, metrics: dict, size: int) -> tuple[int, ...]:
    """One frame per video, worst videos first: the frame whose prediction is nearest its
    video's mean (the video's typical frame)."""
    where = dict(zip(videos.ids, videos.rows))
    out = []
    for row in metrics["rows"][:size]:
        rows = np.asarray(where[row["video"]])
        out.append(int(rows[np.argmin(np.abs(pred.prediction[rows] - row["mean_prediction"]))]))
    return tuple(out)
