"""Caffe's ``extract_features``: run a TEST net over its data source, store blobs as Datums.

For each requested blob, every item of every batch becomes one Datum with ``channels``,
``height``, ``width`` of the blob's legacy 4-d view and the item's values as ``float_data``,
under the key ``%010d`` (the item's running index), in a new LMDB or LevelDB per blob: the
databases Caffe's tool writes, byte for byte, so its readers (and ours) take them as they are.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Sequence

import torch

from caffe_compat.data.leveldb import build_leveldb
from caffe_compat.data.lmdb_writer import build_lmdb
from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.builder import CaffeNet
from caffe_compat.proto import caffe_pb2


def feature_datum(values: torch.Tensor) -> bytes:
    """The serialized Datum of one item of a blob (``values``: the item, without the batch axis)."""
    dims = tuple(values.shape) + (1, 1, 1)
    datum = caffe_pb2.Datum(channels=dims[0], height=dims[1], width=dims[2])
    datum.float_data.extend(values.reshape(-1).tolist())
    return datum.SerializeToString()


def extract_features(net: CaffeNet, blobs: Sequence[str], databases: Sequence[str | os.PathLike[str]],
                     batches: int, backend: str = "lmdb",
                     on_progress: Callable[[str, int], None] | None = None) -> list[int]:
    """Forward ``batches`` batches and write each blob's items to its database; the counts.

    ``on_progress(blob, count)`` is called every 1000 items and once more per blob at the end,
    where Caffe logs.
    """
    if len(blobs) != len(databases):
        raise CaffeCompatError(f"{len(blobs)} blob name(s) but {len(databases)} database name(s); give one per blob")
    missing = [b for b in blobs if b not in net.blob_shapes]
    if missing:
        raise CaffeCompatError(f"net '{net.name}' has no blob(s) {', '.join(missing)}")
    if backend not in ("lmdb", "leveldb"):
        raise CaffeCompatError(f"db_type '{backend}': expected lmdb or leveldb")
    build = build_lmdb if backend == "lmdb" else build_leveldb
    counts = [0] * len(blobs)
    with contextlib.ExitStack() as stack:
        dbs = [stack.enter_context(build(path)) for path in databases]
        for _ in range(batches):
            with torch.no_grad():
                out = net.forward(blobs=list(blobs))
            for i, name in enumerate(blobs):
                values = out[name].detach().to("cpu", torch.float32)
                for item in values:
                    dbs[i].put(f"{counts[i]:010d}".encode(), feature_datum(item))
                    counts[i] += 1
                    if on_progress is not None and counts[i] % 1000 == 0:
                        on_progress(name, counts[i])
    if on_progress is not None:
        for name, count in zip(blobs, counts):
            on_progress(name, count)
    return counts
