"""Helpers shared by the solver tests: a writable copy of the LeNet fixture layout."""

from __future__ import annotations

import shutil
from pathlib import Path


def lenet_workdir(fixtures: Path, tmp: Path) -> Path:
    """``net.prototxt`` (fixture LeNet), ``init.caffemodel`` and ``data/train_lmdb`` (read-only link) in ``tmp``."""
    src = fixtures / "solver"
    shutil.copy(src / "lenet_train_val.prototxt", tmp / "net.prototxt")
    shutil.copy(src / "init.caffemodel", tmp)
    (tmp / "data").mkdir(exist_ok=True)
    (tmp / "data" / "train_lmdb").symlink_to(src / "data" / "train_lmdb")
    return tmp


def no_batchnorm(work: Path, name: str, batch: int) -> str:
    """LeNet without BatchNorm/Scale (their batch statistics would differ between batch splits)."""
    text = (work / "net.prototxt").read_text()
    start, end = text.index('layer {\n  name: "bn1"'), text.index('layer {\n  name: "relu1"')
    text = text[:start] + text[end:]
    text = text.replace('bottom: "bn1"\n  top: "bn1"', 'bottom: "conv1"\n  top: "conv1"')
    text = text.replace('bottom: "bn1"', 'bottom: "conv1"').replace("batch_size: 8", f"batch_size: {batch}")
    (work / name).write_text(text)
    return name


def write_datum_lmdb(path: Path, images, labels) -> None:
    """A raw-Datum LMDB like convert_imageset's (keys ``%08d_img``; images uint8 CxHxW)."""
    from caffe_compat.data.lmdb_writer import build_lmdb
    from caffe_compat.proto import caffe_pb2

    with build_lmdb(path) as db:
        for i, (image, label) in enumerate(zip(images, labels)):
            c, h, w = image.shape
            datum = caffe_pb2.Datum(channels=c, height=h, width=w, data=image.tobytes(), label=int(label))
            db.put(f"{i:08d}_img".encode(), datum.SerializeToString())
