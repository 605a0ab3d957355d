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

from caffe_compat.data.datum import datum_array, parse_datum, raw_datum_view
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


class _PixelSum:
    """Caffe's float32 running sum, computed faster while it is provably the same numbers.

    Caffe adds uint8 pixels into float32 one datum at a time. While every partial sum stays below
    2**24 (fewer than 65,794 datums), float32 holds each one exactly, so integer arithmetic gives
    the identical result: we add into uint16 (cache-friendly, up to 257 datums) and flush into
    uint32. Past that limit, or for float_data datums, we add in float32 in Caffe's order.
    """

    _CHUNK = 257  # 257 * 255 = 65535: the most uint8 images a uint16 cell can hold

    def __init__(self, shape: tuple[int, ...], total: int) -> None:
        self.exact = total * 255 < 2**24
        self.floats = np.zeros(shape, np.float32)
        self.ints = np.zeros(shape, np.uint32) if self.exact else None
        self.chunk = np.zeros(shape, np.uint16) if self.exact else None
        self.in_chunk = 0

    def add(self, pixels: np.ndarray) -> None:
        if self.exact and pixels.dtype == np.uint8:
            np.add(self.chunk, pixels, out=self.chunk)
            self.in_chunk += 1
            if self.in_chunk == self._CHUNK:
                self._flush_chunk()
            return
        self._flush_ints()
        np.add(self.floats, pixels, out=self.floats)

    def _flush_chunk(self) -> None:
        np.add(self.ints, self.chunk, out=self.ints)
        self.chunk.fill(0)
        self.in_chunk = 0

    def _flush_ints(self) -> None:
        """Move the exact integer sums into the float32 sum (exact: all below 2**24)."""
        if self.ints is not None:
            self._flush_chunk()
            np.add(self.floats, self.ints.astype(np.float32), out=self.floats)
            self.ints.fill(0)

    def mean(self, count: int) -> np.ndarray:
        self._flush_ints()
        return self.floats / np.float32(count)


def _pixels(db, key: memoryview, value: memoryview) -> tuple[np.ndarray, bool]:
    """A datum's pixels (zero-copy for plain raw datums) and whether it was encoded."""
    view = raw_datum_view(value)
    if view is not None:
        return view[0], False
    datum = parse_datum(bytes(value))
    try:
        return datum_array(datum, cv2.IMREAD_UNCHANGED), datum.encoded
    except ValueError as exc:
        raise CaffeCompatError(f"{where(db)}: datum '{_show(bytes(key))}': {exc}") from None


def compute_image_mean(db: str | os.PathLike[str], progress: bool | None = None) -> ImageMean:
    """Mean over every datum of ``db``; each must have the first datum's size (Caffe's check)."""
    total = count_records(db)
    if total == 0:
        raise CaffeCompatError(f"{where(db)}: the database is empty")
    acc: _PixelSum | None = None
    shape: tuple[int, ...] = ()
    count = 0
    encoded = False
    for key, value in tqdm(iter_records(db, buffers=True), total=total, unit="datum", disable=None if progress is None
                           else not progress, desc="compute-image-mean"):
        pixels, is_encoded = _pixels(db, key, value)
        if acc is None:
            shape = pixels.shape
            acc = _PixelSum(shape, total)
            encoded = is_encoded
            if encoded:
                log.info("Decoding Datum")
        elif pixels.size != acc.floats.size:
            raise CaffeCompatError(
                f"{where(db)}: datum '{_show(bytes(key))}' has {pixels.size} values "
                f"(shape {pixels.shape}), the first has {acc.floats.size} (shape {shape})"
            )
        acc.add(pixels.reshape(shape))
        count += 1
    return ImageMean(acc.mean(count), count, encoded)


def write_image_mean(result: ImageMean, out: str | os.PathLike[str]) -> None:
    """Write the mean as Caffe does (legacy dims), atomically."""
    atomic_write_bytes(out, result.to_blobproto())


def _show(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")
