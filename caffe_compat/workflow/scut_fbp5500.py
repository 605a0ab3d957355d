"""SCUT-FBP5500 as Caffe data: list files, shuffled LMDBs and mean files per official protocol.

The dataset ships ``Images/`` and ``train_test_files/`` with lines ``NAME.jpg score`` (the mean
of 60 raters, 1..5). Caffe's labels are int32, so the regression lists store
``round(score * 100)`` (the recipes' ``Power`` layer scales it back by 0.01), and the 40-class
lists store the score mapped linearly onto the legacy system's 60..99 as class 0..39
(``round((score - 1) / 4 * 39)``). Each split folder is laid out as the recipes in
``prototxt/scut_fbp5500/`` read it (``data/scut_train_lmdb`` ...): link it as ``data/`` and
train. Everything goes through the library's own ``convert_imageset`` and
``compute_image_mean``, so the LMDBs are the ones Caffe's tools would build.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.data.convert_imageset import ConvertOptions, convert_imageset
from caffe_compat.data.image_mean import compute_image_mean, write_image_mean
from caffe_compat.errors import CaffeCompatError, where

SPLITS_60_40 = "split_of_60%training and 40%testing"
FOLDS = "5_folders_cross_validations_files"
NUM_CLASSES = 40
LABEL_SCALE = 100  # regression label = round(score * 100)
PROTOCOLS = ("60-40", "5-fold")


@dataclass(frozen=True)
class Split:
    """One train/test pair of an official protocol."""

    name: str  # "60-40" or "fold1" .. "fold5"
    train: Path
    test: Path


def splits(data_dir: str | os.PathLike[str], protocol: str) -> list[Split]:
    """The official split files of ``protocol`` ("60-40", "5-fold" or "all")."""
    files = Path(data_dir) / "train_test_files"
    chosen = PROTOCOLS if protocol == "all" else (protocol,)
    out: list[Split] = []
    for name in chosen:
        if name == "60-40":
            folder = files / SPLITS_60_40
            out.append(Split("60-40", folder / "train.txt", folder / "test.txt"))
        elif name == "5-fold":
            for k in range(1, 6):
                folder = files / FOLDS / f"cross_validation_{k}"
                out.append(Split(f"fold{k}", folder / f"train_{k}.txt", folder / f"test_{k}.txt"))
        else:
            raise CaffeCompatError(f"unknown protocol '{name}' (choose 60-40, 5-fold or all)")
    for split in out:
        for path in (split.train, split.test):
            if not path.is_file():
                raise CaffeCompatError(f"{path}: missing; is {data_dir} the SCUT-FBP5500 folder "
                                       "(Images/ and train_test_files/)?")
    return out


def read_scores(path: str | os.PathLike[str]) -> list[tuple[str, float]]:
    """``(image name, score)`` per line of an official split file; a bad line is an error naming it."""
    rows: list[tuple[str, float]] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            score = float(parts[1])
        except ValueError:
            raise CaffeCompatError(f"{where(path, number)}: expected 'NAME.jpg score', got {line!r}") from None
        if not (math.isfinite(score) and 1.0 <= score <= 5.0):
            raise CaffeCompatError(f"{where(path, number)}: score {parts[1]} is outside 1..5")
        rows.append((parts[0], score))
    if not rows:
        raise CaffeCompatError(f"{path}: no lines")
    return rows


def regression_label(score: float) -> int:
    """The int32 label of a 1..5 score in the regression lists (x100)."""
    return int(math.floor(score * LABEL_SCALE + 0.5))


def score_class(score: float) -> int:
    """The 40-class label (0..39 = legacy scores 60..99) of a 1..5 score."""
    return min(NUM_CLASSES - 1, max(0, int(math.floor((score - 1.0) / 4.0 * (NUM_CLASSES - 1) + 0.5))))


def class_score(expected_class: float) -> float:
    """A 40-class prediction (class index or expectation) back on the 1..5 scale."""
    return 1.0 + expected_class * 4.0 / (NUM_CLASSES - 1)


@dataclass(frozen=True)
class PrepareOptions:
    size: int = 256  # images are resized (squashed) to size x size, as convert_imageset --resize
    protocol: str = "60-40"
    classes40: bool = True  # also build the 40-class lists and LMDBs
    seed: int = 1701  # of the training LMDBs' shuffle
    jobs: int | None = None
    progress: bool | None = None


@dataclass
class SplitSummary:
    name: str
    folder: Path
    train: int
    test: int
    reused: bool


def _lists(rows: list[tuple[str, float]], labeler) -> bytes:
    return "".join(f"{name} {labeler(score)}\n" for name, score in rows).encode()


def _fingerprint(split: Split, options: PrepareOptions) -> str:
    """What a built split folder depends on: the split files' bytes and the options."""
    digest = hashlib.sha256()
    for path in (split.train, split.test):
        digest.update(path.read_bytes())
    settings = {k: v for k, v in asdict(options).items() if k not in ("jobs", "progress", "protocol")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def prepare_split(data_dir: Path, split: Split, out: Path, options: PrepareOptions) -> SplitSummary:
    """Build (or reuse, when its manifest matches) one split folder under ``out``."""
    folder = out / split.name
    manifest = folder / "manifest.json"
    fingerprint = _fingerprint(split, options)
    train_rows, test_rows = read_scores(split.train), read_scores(split.test)
    if manifest.is_file():
        try:
            done = json.loads(manifest.read_text())
        except (OSError, ValueError):
            done = {}
        if done.get("fingerprint") == fingerprint:
            return SplitSummary(split.name, folder, len(train_rows), len(test_rows), reused=True)
    folder.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)  # a half-built folder is never taken for a finished one
    images = os.fspath(data_dir / "Images") + os.sep
    forms = [("scut", regression_label)] + ([("scut40", score_class)] if options.classes40 else [])
    for prefix, labeler in forms:
        for part, rows in (("train", train_rows), ("test", test_rows)):
            listing = folder / f"{prefix}_{part}.txt"
            atomic_write_bytes(listing, _lists(rows, labeler))
            convert = ConvertOptions(shuffle=part == "train", seed=options.seed, resize_height=options.size,
                                     resize_width=options.size, jobs=options.jobs, overwrite=True,
                                     progress=options.progress)
            summary = convert_imageset(images, listing, folder / f"{prefix}_{part}_lmdb", convert)
            if summary.skipped:
                raise CaffeCompatError(f"{listing}: {summary.skipped_text()}; the data set is incomplete")
    write_image_mean(compute_image_mean(folder / "scut_train_lmdb", progress=options.progress),
                     folder / "scut_mean.binaryproto")
    record = {"fingerprint": fingerprint, "split": split.name, "train": len(train_rows), "test": len(test_rows),
              "options": {k: v for k, v in asdict(options).items() if k not in ("jobs", "progress")}}
    atomic_write_bytes(manifest, (json.dumps(record, indent=1) + "\n").encode())
    return SplitSummary(split.name, folder, len(train_rows), len(test_rows), reused=False)


def prepare(data_dir: str | os.PathLike[str], out: str | os.PathLike[str],
            options: PrepareOptions = PrepareOptions()) -> list[SplitSummary]:
    """Every split of ``options.protocol``: lists, LMDBs and mean under ``out/<split>/``."""
    data = Path(data_dir)
    if not (data / "Images").is_dir():
        raise CaffeCompatError(f"{data}: no Images/ folder; give the SCUT-FBP5500 folder")
    if options.size < 1:
        raise CaffeCompatError(f"--size must be >= 1 (got {options.size})")
    return [prepare_split(data, split, Path(out), options) for split in splits(data, options.protocol)]
