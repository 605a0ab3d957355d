"""Step 5: split frames into train/val by video and balance the score classes.

Frames of one video are near-duplicates, so the split is made per video (a video is wholly in
train or wholly in val), per score class so every class with two or more videos gets at least
one validation video (rare scores would otherwise vanish from val). Classes are
then balanced as the legacy workflow did: a class with more images than its cap is randomly
sampled down to it, a class with fewer is topped up by repeating its images ("copy & paste")
to exactly the cap. Labels are ``score - 60``, giving 40 classes for scores 60..99. The
outputs are Caffe list files (``relative/path label``) for ``convert-imageset``, whose lines
are shuffled because Caffe's Data layer reads an LMDB in key order.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.workflow.annotations import SCORE_MIN
from caffe_compat.workflow.tables import format_table, make_folder, read_csv, write_csv

NUM_CLASSES = 40
#: Lines a list file may get: past any LMDB a disk holds (20M 256x256 images are about 4 TB), and
#: the lists are built in memory (about 100 bytes a line) before they are shuffled.
MAX_LIST_LINES = 20_000_000
COUNT_FIELDS = ("label", "score", "videos", "train_videos", "val_videos",
                "train_before", "val_before", "train_after", "val_after")


def parse_ratio(text: str) -> tuple[int, int]:
    """``"5:1"`` -> (5, 1): train and val parts."""
    try:
        train, val = (int(p) for p in text.split(":"))
    except ValueError:
        raise CaffeCompatError(f"--ratio {text!r}: expected TRAIN:VAL such as 5:1") from None
    if train < 1 or val < 0:
        raise CaffeCompatError(f"--ratio {text!r}: the train part must be >= 1 and the val part >= 0")
    return train, val


@dataclass(frozen=True)
class BalanceOptions:
    """Split ratio, per-class targets (None: keep every image, no top-up) and the random seed."""

    ratio: tuple[int, int] = (5, 1)
    train_per_class: int | None = 1000
    val_per_class: int | None = 200
    seed: int = 0
    score_min: int = SCORE_MIN
    num_classes: int = NUM_CLASSES


@dataclass
class ClassCounts:
    """Videos and images of one label before and after balancing."""

    label: int
    score: int
    videos: int = 0
    train_videos: int = 0
    val_videos: int = 0
    train_before: int = 0
    val_before: int = 0
    train_after: int = 0
    val_after: int = 0


@dataclass
class BalanceResult:
    """The list entries written per split, per-class counts and notices."""

    train: list[tuple[str, int]] = field(default_factory=list)
    val: list[tuple[str, int]] = field(default_factory=list)
    classes: list[ClassCounts] = field(default_factory=list)
    train_videos: set[str] = field(default_factory=set)
    val_videos: set[str] = field(default_factory=set)
    messages: list[str] = field(default_factory=list)
    root: Path | None = None

    def table(self) -> str:
        """Before/after image counts per class, then totals."""
        rows = [(c.label, c.score, c.videos, c.train_before, c.val_before, c.train_after, c.val_after) for c in self.classes]
        totals = [sum(r[i] for r in rows) for i in range(2, 7)]
        return format_table(
            ("label", "score", "videos", "train before", "val before", "train after", "val after"),
            rows + [("total", "", *totals)],
        )


def _read_frames(manifest: Path, options: BalanceOptions) -> dict[str, tuple[int, list[str]]]:
    """video id -> (label, frame paths), checking scores and path characters per row."""
    videos: dict[str, tuple[int, list[str]]] = {}
    top = options.score_min + options.num_classes - 1
    for number, row in enumerate(read_csv(manifest, required=("video_id", "frame", "score")), start=2):
        loc = where(manifest, number)
        try:
            score = int(row["score"])
        except ValueError:
            raise CaffeCompatError(f"{loc}: score {row['score']!r} is not an integer (was the clean sheet given to extract-frames?)") from None
        if not options.score_min <= score <= top:
            raise CaffeCompatError(f"{loc}: score {score} is outside {options.score_min}..{top}")
        frame = row["frame"]
        if not frame or any(ch in frame for ch in "\r\n"):
            raise CaffeCompatError(f"{loc}: frame path {frame!r} cannot be written to a Caffe list file")
        label = score - options.score_min
        entry = videos.setdefault(row["video_id"], (label, []))
        if entry[0] != label:
            raise CaffeCompatError(f"{loc}: video {row['video_id']!r} has score {score} here but {entry[0] + options.score_min} above")
        entry[1].append(frame)
    if not videos:
        raise CaffeCompatError(f"{manifest}: no frames listed")
    return videos


def resample(items: list[str], target: int, rng: random.Random) -> list[str]:
    """Exactly ``target`` items: a random sample if there are more, else every item repeated
    as evenly as possible (whole copies, then a random sample for the remainder)."""
    if not items:
        return []
    if len(items) >= target:
        return rng.sample(items, target)
    copies, remainder = divmod(target, len(items))
    return items * copies + rng.sample(items, remainder)


def _check_list_sizes(classes: int, options: BalanceOptions) -> None:
    """Refuse caps whose lists could not be held in memory, before building them (without
    caps the lists are the manifest's frames, already in memory)."""
    for flag, cap in (("--train-per-class", options.train_per_class), ("--val-per-class", options.val_per_class)):
        lines = (cap or 0) * classes
        if lines > MAX_LIST_LINES:
            raise CaffeCompatError(
                f"{flag} {cap}: {classes} classes x {cap:,} = {lines:,} list lines, more than the "
                f"{MAX_LIST_LINES:,} a list may have")


def balance_split(
    manifest: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: BalanceOptions = BalanceOptions(),
) -> BalanceResult:
    """Write ``train.txt``, ``val.txt`` and ``counts.csv`` into ``out_dir`` from a frames manifest.

    List paths are the manifest's ``frame`` column, relative to the manifest's folder (the
    ROOTFOLDER to give ``convert-imageset``).
    """
    manifest = Path(manifest)
    for flag, cap in (("--train-per-class", options.train_per_class), ("--val-per-class", options.val_per_class)):
        if cap is not None and cap < 0:
            raise CaffeCompatError(f"{flag} {cap}: must be 0 (no balancing) or more")
    videos = _read_frames(manifest, options)
    rng = random.Random(options.seed)
    by_label: dict[int, list[str]] = defaultdict(list)
    for vid in sorted(videos):
        by_label[videos[vid][0]].append(vid)
    _check_list_sizes(len(by_label), options)
    train_part, val_part = options.ratio
    result = BalanceResult(root=manifest.parent)
    for label in range(options.num_classes):
        ids = by_label.get(label, [])
        rng.shuffle(ids)
        n_val = round(len(ids) * val_part / (train_part + val_part))
        if val_part and len(ids) >= 2:
            n_val = min(max(n_val, 1), len(ids) - 1)  # both splits get a video when there are two
        val_ids, train_ids = ids[:n_val], ids[n_val:]
        result.train_videos.update(train_ids)
        result.val_videos.update(val_ids)
        counts = ClassCounts(label, label + options.score_min, videos=len(ids),
                             train_videos=len(train_ids), val_videos=len(val_ids))
        for split, split_ids, target, entries in (
            ("train", train_ids, options.train_per_class, result.train),
            ("val", val_ids, options.val_per_class, result.val),
        ):
            frames = [f for vid in split_ids for f in videos[vid][1]]
            chosen = frames if target is None else resample(frames, target, rng)
            setattr(counts, f"{split}_before", len(frames))
            setattr(counts, f"{split}_after", len(chosen))
            entries.extend((f, label) for f in chosen)
            if target and not frames and ids:
                result.messages.append(f"score {counts.score}: no {split} images to top up ({len(ids)} video(s) in all)")
        if ids:
            result.classes.append(counts)
    out = make_folder(out_dir)
    for name, entries in (("train.txt", result.train), ("val.txt", result.val)):
        rng.shuffle(entries)
        atomic_write_bytes(out / name, "".join(f"{path} {label}\n" for path, label in entries).encode("utf-8"))
    write_csv(out / "counts.csv", COUNT_FIELDS, [vars(c) for c in result.classes])
    return result
