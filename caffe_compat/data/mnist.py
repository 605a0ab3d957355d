"""Caffe's ``convert_mnist_data`` (and the siamese example's ``convert_mnist_siamese_data``):
MNIST's IDX files -> a Datum LMDB or LevelDB, as Caffe writes it.

Same checks (image magic 2051, label magic 2049, as many labels as images), same keys
(``%08d``, the item's position), same Datums: channels 1, height ROWS, width COLS, the raw
bytes and the label, nothing else set (no ``encoded: false``, which convert_imageset writes),
the label read through a signed ``char`` as Caffe does. Caffe reads past the end of a short
file without noticing; here a file shorter than its header says is an error naming both sizes.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffe_compat.data.datum import example_datum
from caffe_compat.data.db_writer import build_db, check_db_target
from caffe_compat.errors import CaffeCompatError, where

log = logging.getLogger(__name__)
IMAGE_MAGIC = 2051  # IDX: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # IDX: unsigned bytes, 1 dimension
GZIP_MAGIC = b"\x1f\x8b"


def read_binary(path: str | os.PathLike[str], what: str) -> bytes:
    """A whole input file, or one clear error naming it (and gzip, MNIST's download format)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CaffeCompatError(f"{where(path)}: cannot open the {what}: {exc.strerror}") from None
    if data.startswith(GZIP_MAGIC):
        raise CaffeCompatError(f"{where(path)}: a gzip file; gunzip the {what} first (Caffe reads it uncompressed)")
    return data


def _header(data: bytes, path: str | os.PathLike[str], magic: int, fields: int, what: str) -> list[int]:
    """The big-endian uint32 header (magic first), checked as Caffe does."""
    found = int(np.frombuffer(data[:4].rjust(4, b"\0"), ">u4")[0])
    if found != magic:
        raise CaffeCompatError(f"{where(path)}: incorrect {what} magic {found} (expected {magic}); "
                               "not an MNIST IDX file, or the image and label files are swapped")
    if len(data) < 4 * fields:
        raise CaffeCompatError(f"{where(path)}: {len(data)} bytes, too short for an IDX {what} header")
    return [int(v) for v in np.frombuffer(data, ">u4", fields - 1, 4)]


@dataclass(frozen=True)
class MNIST:
    """An IDX image file and its label file, read and checked."""

    images: np.ndarray  # uint8, (count, rows, cols)
    labels: np.ndarray  # int8: Caffe's ``char label``

    @classmethod
    def read(cls, image_file: str | os.PathLike[str], label_file: str | os.PathLike[str]) -> "MNIST":
        images = read_binary(image_file, "image file")
        labels = read_binary(label_file, "label file")
        count, rows, cols = _header(images, image_file, IMAGE_MAGIC, 4, "image file")
        (n_labels,) = _header(labels, label_file, LABEL_MAGIC, 2, "label file")
        if count != n_labels:
            raise CaffeCompatError(f"{where(image_file)}: holds {count} images but {where(label_file)} holds "
                                   f"{n_labels} labels (Caffe's check num_items == num_labels)")
        for path, data, start, size in ((image_file, images, 16, count * rows * cols), (label_file, labels, 8, count)):
            if len(data) < start + size:
                raise CaffeCompatError(f"{where(path)}: {len(data)} bytes, its header announces {count} items "
                                       f"({start + size} bytes); the file is truncated")
        return cls(np.frombuffer(images, np.uint8, count * rows * cols, 16).reshape(count, rows, cols),
                   np.frombuffer(labels, np.int8, count, 8))


def convert_mnist_data(image_file: str | os.PathLike[str], label_file: str | os.PathLike[str],
                       db_path: str | os.PathLike[str], backend: str = "lmdb", overwrite: bool = False) -> int:
    """Write ``db_path`` from MNIST's two IDX files as Caffe's tool does; the number of records."""
    check_db_target(db_path, backend, overwrite)
    mnist = MNIST.read(image_file, label_file)
    count, rows, cols = mnist.images.shape
    with build_db(db_path, backend, overwrite) as db:
        log.info(f"A total of {count} items.")
        log.info(f"Rows: {rows} Cols: {cols}")
        for item, (pixels, label) in enumerate(zip(mnist.images, mnist.labels)):
            db.put(b"%08d" % item, example_datum(pixels.tobytes(), int(label), 1, rows, cols))
    log.info(f"Processed {count} files.")
    return count


def caffe_rng(seed: int) -> np.random.MT19937:
    """Caffe's ``caffe_rng_rand()`` stream: boost::mt19937 seeded with ``seed`` (init_genrand),
    which is what numpy's legacy ``RandomState(seed)`` seeding does; read with ``random_raw``."""
    key, pos = np.random.RandomState(seed).get_state()[1:3]
    bits = np.random.MT19937()
    bits.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": pos}}
    return bits


def convert_mnist_siamese_data(image_file: str | os.PathLike[str], label_file: str | os.PathLike[str],
                               db_path: str | os.PathLike[str], seed: int | None = None,
                               overwrite: bool = False) -> int:
    """Caffe's ``convert_mnist_siamese_data``: as many records as images, record ``%08d`` a
    2xROWSxCOLS Datum of two images drawn at random (``rand() % count`` twice) with label 1 when
    their digits are the same, else 0; LevelDB only, as Caffe's. Caffe seeds its generator from
    the clock; ``seed`` (logged) makes the pairs repeatable, and equal to a Caffe seeded with it."""
    check_db_target(db_path, "leveldb", overwrite)
    mnist = MNIST.read(image_file, label_file)
    count, rows, cols = mnist.images.shape
    seed = secrets.randbits(32) if seed is None else seed
    draws = caffe_rng(seed).random_raw(2 * count).reshape(count, 2) % max(count, 1)
    with build_db(db_path, "leveldb", overwrite) as db:
        log.info(f"A total of {count} items.")
        log.info(f"Rows: {rows} Cols: {cols}")
        log.info(f"Random pairs from seed {seed} (--seed {seed} draws them again)")
        for item, (i, j) in enumerate(draws):
            pair = mnist.images[i].tobytes() + mnist.images[j].tobytes()
            db.put(b"%08d" % item, example_datum(pair, int(mnist.labels[i] == mnist.labels[j]), 2, rows, cols))
    return count
