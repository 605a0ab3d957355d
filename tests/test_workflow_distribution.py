"""Step 4: score histogram and count table from a CSV or a Caffe list file."""

from __future__ import annotations

import cv2
import pytest

from caffe_compat.errors import CaffeCompatError
from caffe_compat.workflow.distribution import plot_distribution


def test_histogram_from_csv(tmp_path):
    csv_path = tmp_path / "frames.csv"
    csv_path.write_text("video_id,frame,score\n" + "".join(f"v,f{i},{s}\n" for i, s in enumerate([70] * 5 + [98, 72])))
    dist = plot_distribution(csv_path, tmp_path / "out" / "hist.png")
    assert dist.counts == {70: 5, 72: 1, 98: 1}
    image = cv2.imread(str(tmp_path / "out" / "hist.png"))
    assert image is not None and image.shape == (400, 1000, 3)
    lines = dist.table().splitlines()
    assert lines[2].split() == ["70", "5"] and lines[3].split() == ["71", "0"]  # gaps shown as zeros
    assert lines[-1].split() == ["total", "7"] and len(lines) == 2 + 29 + 1


def test_histogram_from_list_file_adds_the_offset(tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("a_0.jpg 0\nb_0.jpg 39\nc 0.jpg 39\n")
    assert plot_distribution(listing, tmp_path / "h.png").counts == {60: 1, 99: 2}
    assert plot_distribution(listing, tmp_path / "h.png", label_offset=0, log_scale=True).counts == {0: 1, 39: 2}
    assert cv2.imread(str(tmp_path / "h.png")) is not None


def test_bad_inputs(tmp_path):
    (tmp_path / "a.csv").write_text("video_id,frame\nv,f\n")
    with pytest.raises(CaffeCompatError, match=r"a.csv:1: missing column\(s\) score"):
        plot_distribution(tmp_path / "a.csv", tmp_path / "h.png")
    (tmp_path / "b.csv").write_text("score\n70\nx\n")
    with pytest.raises(CaffeCompatError, match=r"b.csv:3: score 'x' is not an integer"):
        plot_distribution(tmp_path / "b.csv", tmp_path / "h.png")
    (tmp_path / "c.txt").write_text("a.jpg 1\nb.jpg one\n")
    with pytest.raises(CaffeCompatError, match=r"c.txt:2: label 'one' is not an integer"):
        plot_distribution(tmp_path / "c.txt", tmp_path / "h.png")
    (tmp_path / "d.csv").write_text("score\n")
    with pytest.raises(CaffeCompatError, match="no rows to plot"):
        plot_distribution(tmp_path / "d.csv", tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()
