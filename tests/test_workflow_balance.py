"""Step 5: split by video, cap by sampling, top up by repetition, Caffe list files."""

from __future__ import annotations

import csv
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.data.listfile import read_list
from caffe_compat.errors import CaffeCompatError
from caffe_compat.workflow.balance import BalanceOptions, balance_split, parse_ratio, resample

# score -> (videos, frames per video)
LAYOUT = {60: (3, 4), 61: (12, 3), 62: (1, 5), 70: (7, 10)}


def write_manifest(folder, layout=LAYOUT, rows=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "frames_manifest.csv"
    if rows is None:
        rows = [(f"s{score}v{v}", f"s{score}v{v}_{i * 50}.jpg", score)
                for score, (videos, frames) in layout.items() for v in range(videos) for i in range(frames)]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "frame", "frame_index", "score", "sharpness"])
        writer.writerows((vid, frame, 0, score, 1.0) for vid, frame, score in rows)
    for _, frame, _ in rows:
        (folder / frame).write_bytes(b"jpg")
    return path


def test_split_by_video_with_exact_per_class_counts(tmp_path):
    manifest = write_manifest(tmp_path / "frames")
    result = balance_split(manifest, tmp_path / "lists", BalanceOptions(train_per_class=20, val_per_class=4, seed=1))
    assert not result.train_videos & result.val_videos
    assert len(result.train_videos | result.val_videos) == sum(v for v, _ in LAYOUT.values())
    by_class = {c.score: c for c in result.classes}
    assert {s: (c.train_videos, c.val_videos) for s, c in by_class.items()} == {60: (2, 1), 61: (10, 2), 62: (1, 0), 70: (6, 1)}
    assert {s: (c.train_before, c.val_before) for s, c in by_class.items()} == {60: (8, 4), 61: (30, 6), 62: (5, 0), 70: (60, 10)}
    assert {s: (c.train_after, c.val_after) for s, c in by_class.items()} == {60: (20, 4), 61: (20, 4), 62: (20, 0), 70: (20, 4)}
    assert result.messages == ["score 62: no val images to top up (1 video(s) in all)"]

    train = read_list(tmp_path / "lists" / "train.txt")
    val = read_list(tmp_path / "lists" / "val.txt")
    assert not train.warnings and not val.warnings
    assert Counter(e.label for e in train.entries) == {0: 20, 1: 20, 2: 20, 10: 20}
    assert Counter(e.label for e in val.entries) == {0: 4, 1: 4, 10: 4}
    for entry in train.entries + val.entries:
        name = entry.name.decode()
        assert (tmp_path / "frames" / name).is_file()  # relative to the manifest's folder
        assert int(name[1:3]) - 60 == entry.label
    train_vids = {e.name.decode().rsplit("_", 1)[0] for e in train.entries}
    val_vids = {e.name.decode().rsplit("_", 1)[0] for e in val.entries}
    assert not train_vids & val_vids
    # capped class: distinct images; topped-up class: every image repeated 2 or 3 times
    class70 = [e.name for e in train.entries if e.label == 10]
    assert len(set(class70)) == 20
    class60 = Counter(e.name for e in train.entries if e.label == 0)
    assert len(class60) == 8 and set(class60.values()) == {2, 3}
    assert "train after" in result.table()
    with open(tmp_path / "lists" / "counts.csv", encoding="utf-8") as handle:
        counts = {row["score"]: row for row in csv.DictReader(handle)}
    assert counts["60"]["train_before"] == "8" and counts["60"]["train_after"] == "20"


def test_seeded_and_reproducible(tmp_path):
    manifest = write_manifest(tmp_path / "frames")
    options = BalanceOptions(train_per_class=20, val_per_class=4, seed=7)
    balance_split(manifest, tmp_path / "a", options)
    balance_split(manifest, tmp_path / "b", options)
    balance_split(manifest, tmp_path / "c", BalanceOptions(train_per_class=20, val_per_class=4, seed=8))
    assert (tmp_path / "a" / "train.txt").read_bytes() == (tmp_path / "b" / "train.txt").read_bytes()
    assert (tmp_path / "a" / "train.txt").read_bytes() != (tmp_path / "c" / "train.txt").read_bytes()


def test_without_caps_every_frame_once(tmp_path):
    manifest = write_manifest(tmp_path / "frames")
    result = balance_split(manifest, tmp_path / "l", BalanceOptions(train_per_class=None, val_per_class=None, ratio=(1, 0)))
    assert len(result.train) == sum(v * f for v, f in LAYOUT.values()) and not result.val
    assert len({p for p, _ in result.train}) == len(result.train)


def test_bad_manifests(tmp_path):
    bad_score = write_manifest(tmp_path / "a", rows=[("v", "v_0.jpg", 100)])
    with pytest.raises(CaffeCompatError, match=r"frames_manifest.csv:2: score 100 is outside 60..99"):
        balance_split(bad_score, tmp_path / "l")
    mixed = write_manifest(tmp_path / "b", rows=[("v", "v_0.jpg", 70), ("v", "v_50.jpg", 71)])
    with pytest.raises(CaffeCompatError, match=r":3: video 'v' has score 71 here but 70 above"):
        balance_split(mixed, tmp_path / "l")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "m.csv").write_text("video_id,frame,frame_index,score\nv,v_0.jpg,0,\n")
    with pytest.raises(CaffeCompatError, match=r"m.csv:2: score '' is not an integer \(was the clean sheet given to extract-frames\?\)"):
        balance_split(tmp_path / "c" / "m.csv", tmp_path / "l")
    (tmp_path / "c" / "n.csv").write_text("video_id,score\n")
    with pytest.raises(CaffeCompatError, match=r"missing column\(s\) frame"):
        balance_split(tmp_path / "c" / "n.csv", tmp_path / "l")
    assert not (tmp_path / "l" / "train.txt").exists()


def test_parse_ratio():
    assert parse_ratio("5:1") == (5, 1) and parse_ratio("4:0") == (4, 0)
    for bad in ("5", "a:b", "0:1", "5:-1"):
        with pytest.raises(CaffeCompatError, match="--ratio"):
            parse_ratio(bad)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=30, unique=True), st.integers(1, 100), st.integers(0, 9))
def test_resample_is_exact_and_even(items, target, seed):
    out = resample(items, target, random.Random(seed))
    assert len(out) == target
    counts = Counter(out)
    if target <= len(items):
        assert set(counts.values()) == {1}
    else:
        assert set(counts) == set(items) and max(counts.values()) - min(counts.values()) <= 1


def test_output_folder_that_is_a_file(tmp_path):
    manifest = write_manifest(tmp_path / "frames")
    (tmp_path / "lists").write_text("")
    with pytest.raises(CaffeCompatError, match="lists: cannot create output folder"):
        balance_split(manifest, tmp_path / "lists")
