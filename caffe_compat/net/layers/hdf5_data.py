"""Caffe's ``HDF5Data``: rows of HDF5 files listed in ``hdf5_data_param.source``, one dataset per top.

As in Caffe: the list file names one HDF5 file per whitespace-separated token (opened relative
to the current folder); every top is the dataset of the same name, read as float32, with
``batch_size`` rows per forward (the top keeps the dataset's other axes); rows run through the
files in order and wrap around; ``shuffle`` permutes the files and each file's rows every epoch;
``transform_param`` is refused ("HDF5Data does not transform data").

Batch ``b`` is a pure function of ``b`` (and the seed, rank and world size), as with the Data
layer, so the trainer's prefetching loaders and our resume sidecar work the same way.
"""

from __future__ import annotations

import bisect
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from caffe_compat.data.batches import batch_loader
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.inputs import check_regular, read_capped
from caffe_compat.io.hdf5 import dataset_shapes, read_rows
from caffe_compat.net.registry import Layer, Shape, register_layer


MAX_LIST_BYTES = 64 << 20  # the list of HDF5 files (a million paths is about 50 MB)


class HDF5Batches:
    """``batches[b]``: the tops of the b-th forward, as float32 tensors (a map-style dataset)."""

    def __init__(self, files: list[str], rows: list[int], tops: list[str], batch_size: int, *,
                 shuffle: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1, raw: bool = False) -> None:
        self.files, self.rows, self.tops = files, rows, tops
        self.total = sum(rows)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.raw = rank, world_size, raw

    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's file order and the cumulative row counts along it."""
        order = np.arange(len(self.files))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.files))
        return order, np.cumsum([self.rows[f] for f in order])

    def locate(self, offset: int) -> tuple[int, int]:
        """(file index, row) of the ``offset``-th row read since the start."""
        epoch, at = divmod(offset, self.total)
        order, ends = self._order(epoch)
        k = bisect.bisect_right(ends.tolist(), at)
        file, row = int(order[k]), at - (int(ends[k - 1]) if k else 0)
        if self.shuffle:
            row = int(np.random.default_rng([self.seed, epoch, file]).permutation(self.rows[file])[row])
        return file, row

    def __getitem__(self, batch: int) -> tuple[torch.Tensor, ...]:
        if self.raw:
            # The trainer asks for uint8 image batches to finish on the GPU; HDF5 rows are
            # already float tensors, so it falls back to these finished batches.
            raise ValueError("HDF5Data batches are finished float tensors, not raw images")
        places = [self.locate((batch * self.batch_size + i) * self.world_size + self.rank)
                  for i in range(self.batch_size)]
        out: dict[str, np.ndarray] = {}
        for file in dict.fromkeys(f for f, _ in places):  # each file of the batch opened once
            slots = [i for i, (f, _) in enumerate(places) if f == file]
            for top, values in read_rows(self.files[file], self.tops, [places[i][1] for i in slots]).items():
                if top not in out:  # every file's rows have one shape (checked when the layer is built)
                    out[top] = np.empty((self.batch_size, *values.shape[1:]), np.float32)
                out[top][slots] = values
        return tuple(torch.from_numpy(out[top]) for top in self.tops)


@register_layer("HDF5Data")
class HDF5Data(Layer):
    is_source = True

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.hdf5_data_param
        if param.HasField("transform_param"):
            raise self.fail("HDF5Data does not transform data (remove transform_param, as Caffe requires)")
        if not param.top:
            raise self.fail("needs at least one top (each names a dataset of the HDF5 files)")
        if p.batch_size <= 0:
            raise self.fail("hdf5_data_param.batch_size must be > 0")
        if not p.source:
            raise self.fail("hdf5_data_param.source is not set")
        self.tops = list(param.top)
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        self.files = self._list(p.source)
        self.rows, self.row_shapes = self._scan()
        #: Seed of the shuffles; the trainer sets it.
        self.seed = 0
        self._cursor = 0
        self._batches: dict[tuple, HDF5Batches] = {}
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    def _list(self, source: str) -> list[str]:
        try:
            names = read_capped(source, "the list of HDF5 files", MAX_LIST_BYTES).decode("utf-8", "replace").split()
        except CaffeCompatError as exc:
            raise self.fail(str(exc)) from None
        if not names:
            raise self.fail(f"'{source}' lists no HDF5 file")
        for name in names:
            if not os.path.lexists(name):
                raise self.fail(f"'{source}' lists '{name}', which does not exist (paths are relative to the "
                                f"current folder {os.getcwd()}, as in Caffe)")
            try:
                check_regular(name, "an HDF5 data file")
            except CaffeCompatError as exc:
                raise self.fail(f"'{source}' lists {exc}") from None
        return names

    def _scan(self) -> tuple[list[int], list[Shape]]:
        """Row counts per file and each top's row shape (from shapes only; no values are read)."""
        counts: list[int] = []
        shapes: list[Shape] = []
        for name in self.files:
            try:
                file_shapes = dataset_shapes(name, self.tops)
            except CaffeCompatError as exc:
                raise self.fail(str(exc)) from None
            if any(len(s) < 1 for s in file_shapes) or len({s[0] for s in file_shapes}) != 1:
                raise self.fail(f"{name}: datasets {dict(zip(self.tops, file_shapes))} need the same number of rows")
            row_shapes = [s[1:] for s in file_shapes]
            if shapes and row_shapes != shapes:
                raise self.fail(f"{name}: rows of shapes {row_shapes} differ from {shapes} in {self.files[0]}")
            if file_shapes[0][0] == 0:
                raise self.fail(f"{name}: has no rows")
            shapes = row_shapes
            counts.append(file_shapes[0][0])
        return counts, shapes

    def top_shapes(self) -> list[Shape]:
        return [(self.batch_size, *shape) for shape in self.row_shapes]

    def batches(self, rank: int = 0, world_size: int = 1, raw: bool = False) -> HDF5Batches:
        key = (rank, world_size, raw, self.seed)
        if key not in self._batches:
            self._batches[key] = HDF5Batches(self.files, self.rows, self.tops, self.batch_size, shuffle=self.shuffle,
                                             seed=self.seed, rank=rank, world_size=world_size, raw=raw)
        return self._batches[key]

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        try:
            tops = self.batches()[self._cursor]
        except CaffeCompatError as exc:
            raise self.fail(str(exc)) from None
        self._cursor += 1
        return tuple(t.to(self._device_anchor.device) for t in tops)

    def forward(self) -> tuple[torch.Tensor, ...]:
        return self.next_batch()

    def make_loader(self, num_workers: int = 0, rank: int = 0, world_size: int = 1, *, start: int = 0,
                    stop: int | None = None, raw: bool = False, pin_memory: bool = False,
                    prefetch_factor: int = 4) -> DataLoader:
        """A DataLoader over batches ``start, start+1, ...`` of ``rank`` (see the Data layer's)."""
        return batch_loader(self.batches(rank, world_size, raw), num_workers, start, stop, prefetch_factor, pin_memory)
