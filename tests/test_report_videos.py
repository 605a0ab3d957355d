"""Per-video results of frame data: keys from extract-frames (through convert-imageset) name
their video; the report puts each video's mean-prediction MAE next to the per-frame MAE, shows
the worst videos, one frame each, and flags videos whose frames agree but not with the label."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caffe_compat.report import write_report
from caffe_compat.report.predictions import default_labels, from_probabilities, read_csv
from caffe_compat.report.videos import group_videos, video_of


@pytest.mark.parametrize("key, video", [
    ("00000012_frames/v7_120.jpg", "v7"), ("frames/a_b_3.JPG", "a_b"), ("x_1.png", "x"),
    ("00000001_AF1.jpg", None), ("frames/v7.jpg", None), ("v7_12.mp4", None)])
def test_video_of(key, video):
    assert video_of(key) == video


def _frames(predictions: dict[str, tuple[int, list[float]]]):
    """A 40-class score table whose expectation is each frame's given prediction."""
    keys, labels, values = [], [], []
    for video, (label, preds) in predictions.items():
        for f, p in enumerate(preds):
            keys.append(f"{len(keys):08d}_frames/{video}_{f * 10}.jpg")
            labels.append(label - 60)
            values.append(p)
    prob = np.zeros((len(keys), 40))
    for i, v in enumerate(values):  # mass on the two classes around v: the expectation is v
        lo = int(np.floor(v)) - 60
        prob[i, lo], prob[i, min(lo + 1, 39)] = 1 - (v - np.floor(v)), v - np.floor(v)
    return from_probabilities(prob, np.array(labels), keys, np.arange(len(keys)), default_labels(40))


def test_video_mae_suspect_labels_and_gallery(tmp_path):
    pred = _frames({"good": (70, [69.0, 71.0, 70.0]), "noisy": (80, [70.0, 90.0, 80.0, 84.0]),
                    "mislabelled": (70, [80.0, 80.5, 79.5])})
    assert group_videos(pred).ids == ("good", "noisy", "mislabelled")
    page = write_report(tmp_path / "r", pred)
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    videos = data["metrics"]["videos"]
    assert videos["count"] == 3 and videos["label_suspect"] == 1
    assert videos["video_mae"] == pytest.approx((0 + 1 + 10) / 3)  # |mean prediction - label| per video
    assert videos["frame_mae"] == pytest.approx(np.mean([1, 1, 0, 10, 10, 0, 4, 10, 10.5, 9.5]))
    assert [r["video"] for r in videos["rows"]] == ["mislabelled", "noisy", "good"]
    flagged = {k for k, f in zip(pred.keys, read_csv(tmp_path / "r" / "predictions.csv").flags) if "label_suspect" in f}
    assert flagged == {k for k in pred.keys if "mislabelled" in k}
    # the gallery shows each video once, worst first, by its frame nearest the video's mean
    assert data["galleries"]["videos"] == [pred.keys[7], pred.keys[5], pred.keys[2]]
    html = page.read_text()
    assert "Worst videos" in html and "MAE of each video&#x27;s mean prediction (score points)" in html
    # re-rendered from its CSV the flags are recomputed, not doubled
    write_report(tmp_path / "again", read_csv(tmp_path / "r" / "predictions.csv"))
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["metrics"] == data["metrics"] and again["flags"] == data["flags"]


def test_still_images_have_no_video_section(tmp_path):
    pred = from_probabilities(np.eye(40)[[10, 12]], np.array([10, 12]), ["00000000_AF1.jpg", "00000001_AF2.jpg"],
                              np.arange(2), default_labels(40))
    assert group_videos(pred) is None
    write_report(tmp_path / "r", pred)
    assert "videos" not in json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]


def test_a_net_that_says_one_thing_for_everything_suspects_no_label(tmp_path):
    pred = _frames({"a": (70, [75.0] * 3), "b": (80, [75.0] * 3), "c": (65, [75.0] * 3), "d": (74, [75.0] * 3)})
    write_report(tmp_path / "r", pred)
    assert json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]["videos"]["label_suspect"] == 0
