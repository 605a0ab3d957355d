"""The images of a test source by record position: keys, pictures for the flags, thumbnails.

A source is what a TEST net's data layer reads: a Datum LMDB (``Data``; records in key order)
or an image list file (``ImageData``; lines in order). The report needs each record's key
(LMDB key, or the list file's image path) and its picture as stored (before the crop and mean).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np

from caffe_compat.errors import CaffeCompatError, where

THUMBNAIL = 112  # px on the long side


class RecordImages:
    """HxWxC uint8 BGR pictures and keys of a source's records, by position."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    @classmethod
    def open(cls, source: str | os.PathLike[str], root_folder: str = "",
             resize: tuple[int, int] | None = None) -> "RecordImages":
        """An LMDB folder or an image list file (paths relative to ``root_folder``; images
        resized to ``resize`` (height, width) as they are read, like ImageData's new_height/new_width)."""
        path = Path(source)
        if path.is_dir():
            if resize is not None:
                raise CaffeCompatError(f"--resize is for list files; the records of LMDB {where(path)} are stored resized")
            from caffe_compat.data.lmdb_dataset import LMDBDataset

            return cls(LMDBDataset(path))
        if path.is_file():
            from caffe_compat.data.image_data import ImageListDataset

            height, width = resize or (0, 0)
            return cls(ImageListDataset(path, root_folder, height, width))
        raise CaffeCompatError(f"--source {where(path)}: no such LMDB folder or list file")

    def __len__(self) -> int:
        return len(self.dataset)

    def key(self, index: int) -> str:
        """The LMDB key, or the image path as written in the list file."""
        if hasattr(self.dataset, "key"):
            return self.dataset.key(index).decode("utf-8", "backslashreplace")
        return os.fsdecode(self.dataset.listing.entries[index].name)

    def record(self, index: int) -> tuple[np.ndarray, float]:
        """The CxHxW array and label at ``index``."""
        return self.dataset[index]

    def picture(self, index: int) -> np.ndarray:
        """The record as an HxWxC uint8 BGR picture (what OpenCV and a thumbnail need)."""
        chw, _ = self.dataset[index]
        return to_picture(chw)


def to_picture(chw: np.ndarray) -> np.ndarray:
    """A CxHxW datum array (uint8, or float pixel values) as HxWxC uint8."""
    hwc = np.asarray(chw).transpose(1, 2, 0)
    if hwc.dtype != np.uint8:
        hwc = np.clip(np.rint(hwc), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(hwc)


def thumbnail_uri(bgr: np.ndarray, size: int = THUMBNAIL) -> str:
    """A JPEG ``data:`` URI of the picture shrunk to ``size`` px on its long side; a smaller
    picture (a 64 px LMDB record) keeps its native size rather than being blown up."""
    import cv2

    h, w = bgr.shape[:2]
    scale = size / max(h, w)
    out = bgr if scale >= 1 else cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                                             interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise CaffeCompatError("cannot encode a thumbnail as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")
