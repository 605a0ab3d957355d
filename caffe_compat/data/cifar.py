"""Caffe's ``convert_cifar_data``: CIFAR-10's binary batches -> two Datum databases, as Caffe writes them.

``INPUT/data_batch_1.bin`` .. ``data_batch_5.bin`` go into ``OUTPUT/cifar10_train_<db_type>``
with keys ``%05d`` counting on across batches (batch b's item i is ``(b-1)*10000 + i``), and
``INPUT/test_batch.bin`` into ``OUTPUT/cifar10_test_<db_type>`` keyed from ``00000``. Each record
of a batch is one label byte and 3x32x32 pixel bytes, stored as they are (CIFAR's planes are
R, G, B: Caffe does not reorder them) in a Datum of shape, data and label only, the label read
through a signed ``char`` as Caffe does.

Caffe reads 10,000 records from each file whatever its size; a real batch holds exactly that
many. A shorter batch (test data written in the same format) is converted as far as it goes
with the keys Caffe gives those positions; a longer one, or a size that is not a whole number
of records, is an error, as is a missing file (checked before anything is written).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from caffe_compat.data.datum import example_datum
from caffe_compat.data.db_writer import build_db, check_backend, check_db_target
from caffe_compat.data.mnist import read_binary
from caffe_compat.errors import CaffeCompatError, where

log = logging.getLogger(__name__)
SIZE = 32
IMAGE_BYTES = 3 * SIZE * SIZE
BATCH_SIZE = 10000
TRAIN_BATCHES = 5


def read_batch(path: str | os.PathLike[str]) -> np.ndarray:
    """A batch file's records as a (count, 1 + 3072) uint8 array, checked."""
    data = read_binary(path, "CIFAR-10 batch")
    record = 1 + IMAGE_BYTES
    if len(data) % record:
        hint = " (CIFAR-100's format, with two label bytes; convert_cifar_data reads CIFAR-10's)" \
            if len(data) % (record + 1) == 0 else ""
        raise CaffeCompatError(f"{where(path)}: {len(data)} bytes is not a whole number of {record}-byte "
                               f"CIFAR-10 records (a label byte and 3x32x32 pixels){hint}")
    if len(data) // record > BATCH_SIZE:
        raise CaffeCompatError(f"{where(path)}: {len(data) // record} records; a CIFAR-10 batch holds at most "
                               f"{BATCH_SIZE} and Caffe reads no more")
    return np.frombuffer(data, np.uint8).reshape(-1, record)


def _write(db_path: Path, backend: str, batches: list[np.ndarray], overwrite: bool, training: bool) -> int:
    count = 0
    with build_db(db_path, backend, overwrite) as db:
        for number, records in enumerate(batches):
            if training:
                log.info(f"Training Batch {number + 1}")
            for item, row in enumerate(records):
                label = int(row[:1].view(np.int8)[0])
                db.put(b"%05d" % (number * BATCH_SIZE + item), example_datum(row[1:].tobytes(), label, 3, SIZE, SIZE))
                count += 1
    return count


def convert_cifar_data(input_folder: str | os.PathLike[str], output_folder: str | os.PathLike[str],
                       db_type: str, overwrite: bool = False) -> tuple[int, int]:
    """Write the training and test databases from CIFAR-10's binary batches; their record counts."""
    db_type = check_backend(db_type)
    inputs, outputs = Path(input_folder), Path(output_folder)
    train_db, test_db = (outputs / f"cifar10_{part}_{db_type}" for part in ("train", "test"))
    for target in (train_db, test_db):
        check_db_target(target, db_type, overwrite)
    train = [read_batch(inputs / f"data_batch_{n}.bin") for n in range(1, TRAIN_BATCHES + 1)]
    test = read_batch(inputs / "test_batch.bin")
    log.info("Writing Training data")
    trained = _write(train_db, db_type, train, overwrite, training=True)
    log.info("Writing Testing data")
    return trained, _write(test_db, db_type, [test], overwrite, training=False)
