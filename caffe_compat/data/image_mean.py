"""``compute_image_mean``: the per-pixel mean of a Datum LMDB, as Caffe computes and writes it.

Caffe accumulates into the BlobProto's float32 ``data`` one datum at a time and divides by the
count in float32; we do the same float32 operations in the same order (whole arrays at a time),
so the result is identical, while streaming over the DB in bounded memory. Encoded datums are
decoded natively (``IMREAD_UNCHANGED``), as Caffe's ``DecodeDatumNative`` does.

While the sum is exact in integers (see :class:`_PixelSum`) and every datum is a raw one laid
out like the first, the key range is split over forked worker processes (one per core): integer
partial sums add up to the same numbers in any order, so the file stays byte-identical to
Caffe's. Anything else (encoded or float datums, a size mismatch) goes the sequential way, which
also gives Caffe's errors.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
import signal
from dataclasses import dataclass
from typing import Callable

import numpy as np

from caffe_compat.data.datum import IMREAD_UNCHANGED, RawLayout, datum_array, parse_datum, raw_datum_view
from caffe_compat.data.lmdb_dataset import count_records, iter_records, open_readonly
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.io.atomic import atomic_write_bytes
from caffe_compat.io.blob import array_to_blob
from caffe_compat.progress import progress_bar

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


class _ByteSum:
    """Exact per-pixel sums of uint8 images into ``out`` (flat uint32), two pixels per operation.

    Read as little-endian uint16 words, an image holds pixel pairs ``lo + 256 * hi``. Summing the
    words wraps mod 2**16, but with the ``hi`` bytes summed on their own (``word >> 8``), both
    sums come back exactly: ``lo_sum = word_sum - 256 * hi_sum (mod 2**16)``, each being below
    2**16 for up to 257 images; then they go into ``out``. Three uint16 passes over half as many
    elements beat a uint8->uint16 cast plus add (about 15% in compute-image-mean).
    """

    LIMIT = 257  # 257 * 255 = 65535: the most uint8 images a uint16 sum can hold
    _WORD = np.dtype("<u2")
    _EIGHT = np.uint16(8)

    def __init__(self, out: np.ndarray) -> None:
        self.out = out
        self.even = out.size & ~1
        self.words = np.zeros(self.even // 2, np.uint16)
        self.high = np.zeros_like(self.words)
        self.tmp = np.empty_like(self.words)
        self.odd_pixel = 0  # the last pixel when the size is odd
        self.count = 0

    def add(self, flat: np.ndarray) -> None:
        """Add one contiguous flat uint8 image. Called once per datum: kept lean."""
        if self.even == flat.size:
            words = flat.view(self._WORD)
        else:
            words = flat[: self.even].view(self._WORD)
            self.odd_pixel += int(flat[-1])
        np.add(self.words, words, self.words)
        np.right_shift(words, self._EIGHT, self.tmp)
        np.add(self.high, self.tmp, self.high)
        self.count += 1
        if self.count == self.LIMIT:
            self.flush()

    def flush(self) -> None:
        """Add the sums so far into ``out`` and start again from zero."""
        out, even = self.out, self.even
        np.left_shift(self.high, 8, out=self.tmp)
        np.subtract(self.words, self.tmp, out=self.tmp)  # the lo sums, exact mod 2**16
        np.add(out[0:even:2], self.tmp, out=out[0:even:2])
        np.add(out[1:even:2], self.high, out=out[1:even:2])
        if even != out.size:
            out[-1] += self.odd_pixel
        self.words.fill(0)
        self.high.fill(0)
        self.odd_pixel = self.count = 0


class _PixelSum:
    """Caffe's float32 running sum, computed faster while it is provably the same numbers.

    Caffe adds uint8 pixels into float32 one datum at a time. While every partial sum stays below
    2**24 (fewer than 65,794 datums), float32 holds each one exactly, so integer arithmetic gives
    the identical result (:class:`_ByteSum` into uint32). Past that limit, or for float_data
    datums, we add in float32 in Caffe's order.
    """

    def __init__(self, shape: tuple[int, ...], total: int) -> None:
        self.exact = total * 255 < 2**24
        self.floats = np.zeros(shape, np.float32)
        self.ints = np.zeros(self.floats.size, np.uint32) if self.exact else None
        self.bytes = _ByteSum(self.ints) if self.exact else None

    def add(self, pixels: np.ndarray) -> None:
        if self.exact and pixels.dtype == np.uint8:
            self.bytes.add(np.ascontiguousarray(pixels).reshape(-1))
            return
        self._flush_ints()
        np.add(self.floats, pixels, out=self.floats)

    def _flush_ints(self) -> None:
        """Move the exact integer sums into the float32 sum (exact: all below 2**24)."""
        if self.ints is not None:
            self.bytes.flush()
            np.add(self.floats, self.ints.reshape(self.floats.shape).astype(np.float32), out=self.floats)
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
        return datum_array(datum, IMREAD_UNCHANGED), datum.encoded
    except ValueError as exc:
        raise CaffeCompatError(f"{where(db)}: datum '{_show(bytes(key))}': {exc}") from None


def compute_image_mean(db: str | os.PathLike[str], progress: bool | None = None) -> ImageMean:
    """Mean over every datum of ``db``; each must have the first datum's size (Caffe's check)."""
    total = count_records(db)
    if total == 0:
        raise CaffeCompatError(f"{where(db)}: the database is empty")
    layout = _first_layout(db)
    workers = min(_cores(), total // _MIN_PER_WORKER)
    if layout is not None and workers > 1 and total * 255 < 2**24:
        sums = _parallel_sums(db, layout, total, workers, progress)
        if sums is not None:
            return ImageMean(sums.astype(np.float32) / np.float32(total), total, False)
    return _sequential_mean(db, total, layout, progress)


_MIN_PER_WORKER = 64  # below this a fork costs more than it saves


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _first_layout(db: str | os.PathLike[str]) -> RawLayout | None:
    for _, value in iter_records(db, buffers=True):
        return RawLayout.of(value)
    return None


def _bar(total: int, progress: bool | None):
    return progress_bar(total=total, unit="datum", shown=progress, desc="compute-image-mean")


def _sequential_mean(db, total: int, layout: RawLayout | None, progress: bool | None) -> ImageMean:
    """Caffe's loop: one datum at a time in key order, any kind of datum."""
    acc: _PixelSum | None = None
    shape: tuple[int, ...] = ()
    count = 0
    encoded = False
    with _bar(total, progress) as bar:
        for key, value in iter_records(db, buffers=True):
            pixels = layout.pixels(value) if layout is not None else None
            is_encoded = False
            if pixels is None:
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
            if count & 63 == 0:
                bar.update(count - bar.n)
        bar.update(count - bar.n)
    return ImageMean(acc.mean(count), count, encoded)


def _parallel_sums(db, layout: RawLayout, total: int, workers: int, progress: bool | None) -> np.ndarray | None:
    """Exact uint32 pixel sums over ``db``, its key range split over ``workers`` processes.

    This process sums the first part and forks one child per other part; each child opens the
    LMDB itself and leaves its sums and progress in shared memory. None if any datum does not
    have ``layout`` (or a child failed): the caller then takes the sequential path.
    """
    starts = _split_keys(db, total, workers)
    counts = [b - a for a, b in itertools.pairwise([*(total * i // workers for i in range(workers)), total])]
    shared = mmap.mmap(-1, workers * (layout.size * 4 + 8))  # anonymous, shared with children
    sums = np.frombuffer(shared, np.uint32, workers * layout.size).reshape(workers, *layout.shape)
    done = np.frombuffer(shared, np.int64, workers, workers * layout.size * 4)
    children = []
    for part in range(1, workers):
        pid = os.fork()
        if pid == 0:  # child: only sums (all its code is imported already); never returns to the caller
            status = 1
            try:
                status = 0 if _sum_part(db, layout, total, starts[part], counts[part], sums[part],
                                        lambda n, part=part: done.__setitem__(part, n)) else 1
            finally:
                os._exit(status)
        children.append(pid)
    ok = False
    try:
        with _bar(total, progress) as bar:
            def tick(n: int) -> None:
                done[0] = n
                bar.update(int(done.sum()) - bar.n)

            ok = _sum_part(db, layout, total, starts[0], counts[0], sums[0], tick)
    finally:
        for pid in children:  # reap them whatever happened here; stop them if their sums are moot
            if not ok:
                os.kill(pid, signal.SIGTERM)
            ok = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 and ok
    return sums.sum(axis=0, dtype=np.uint32) if ok else None


def _split_keys(db, total: int, workers: int) -> list[bytes]:
    """The first key of each of ``workers`` near-equal parts, in key order (keys only: cheap)."""
    firsts = [total * i // workers for i in range(workers)]
    shared = open_readonly(db)
    with shared.env.begin() as txn:
        keys = txn.cursor().iternext(keys=True, values=False)
        return [key for index, key in zip(range(firsts[-1] + 1), keys) if index in firsts]


def _sum_part(db, layout: RawLayout, total: int, start: bytes, count: int, out: np.ndarray,
              tick: Callable[[int], None]) -> bool:
    """Add ``count`` datums from key ``start`` into ``out`` (zeroed uint32); False on any datum
    that does not have ``layout`` or if the DB ends early."""
    sums = _ByteSum(out.reshape(-1))  # exact: the caller checked total * 255 < 2**24
    n = 0
    shared = open_readonly(db)
    with shared.env.begin(buffers=True) as txn:
        cursor = txn.cursor()
        if not cursor.set_key(start):
            return False
        for value in itertools.islice(cursor.iternext(keys=False, values=True), count):
            pixels = layout.flat_pixels(value)
            if pixels is None:
                return False
            sums.add(pixels)
            n += 1
            if n & 63 == 0:
                tick(n)
    sums.flush()
    tick(n)
    return n == count


def write_image_mean(result: ImageMean, out: str | os.PathLike[str]) -> None:
    """Write the mean as Caffe does (legacy dims), atomically."""
    atomic_write_bytes(out, result.to_blobproto())


def _show(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")
