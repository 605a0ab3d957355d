"""``compute_image_mean``: the per-pixel mean of a Datum LMDB, as Caffe computes and writes it.

Caffe accumulates into the BlobProto's float32 ``data`` one datum at a time and divides by the
count in float32; we do the same float32 operations in the same order (whole arrays at a time),
so the result is identical, while streaming over the DB in bounded memory. Encoded datums are
decoded natively (``IMREAD_UNCHANGED``), as Caffe's ``DecodeDatumNative`` does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from caffe_compat.data.datum import datum_array, parse_datum
from caffe_compat.data.lmdb_dataset import count_records, iter_records
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.io.atomic import atomic_write_bytes
from caffe_compat.io.blob import array_to_blob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageMean:
    """The mean image (float32 CxHxW), how many datums it averages, and Caffe's channel means."""

    mean: np.ndarray
    count: int
    encoded: bool

    @property
    def channel_means(self) -> list[float]:
        """Caffe's logged ``mean_value channel [c]``: float32 running sum over the plane / H*W."""
        c, h, w = self.mean.shape
        sums = np.add.accumulate(self.mean.reshape(c, h * w), axis=1, dtype=np.float32)[:, -1]
        return [float(np.float32(s) / np.float32(h * w)) for s in sums]

    def to_blobproto(self) -> bytes:
        """BlobProto with Caffe's legacy dims num=1/channels/height/width (no ``shape``)."""
        return array_to_blob(self.mean[None], legacy_dims=True).SerializeToString()


def compute_image_mean(db: str | os.PathLike[str], progress: bool | None = None) -> ImageMean:
    """Mean over every datum of ``db``; each must have the first datum's size (Caffe's check)."""
    total = count_records(db)
    if total == 0:
        raise CaffeCompatError(f"{where(db)}: the database is empty")
    acc: np.ndarray | None = None
    count = 0
    encoded = False
    for key, value in tqdm(iter_records(db), total=total, unit="datum", disable=None if progress is None
                           else not progress, desc="compute-image-mean"):
        datum = parse_datum(value)
        try:
            pixels = datum_array(datum, cv2.IMREAD_UNCHANGED)
        except ValueError as exc:
            raise CaffeCompatError(f"{where(db)}: datum '{_show(key)}': {exc}") from None
        if acc is None:
            acc = np.zeros(pixels.shape, np.float32)
            encoded = datum.encoded
            if encoded:
                log.info("Decoding Datum")
        elif pixels.size != acc.size:
            raise CaffeCompatError(
                f"{where(db)}: datum '{_show(key)}' has {pixels.size} values "
                f"(shape {pixels.shape}), the first has {acc.size} (shape {acc.shape})"
            )
        np.add(acc, pixels.reshape(acc.shape), out=acc)
        count += 1
    acc /= np.float32(count)
    return ImageMean(acc, count, encoded)


def write_image_mean(result: ImageMean, out: str | os.PathLike[str]) -> None:
    """Write the mean as Caffe does (legacy dims), atomically."""
    atomic_write_bytes(out, result.to_blobproto())


def _show(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")
