"""Caffe's source layers that read data themselves: ``Data`` (a Datum LMDB) and ``ImageData``
(an image list file).

Like Caffe they read records in order, wrap around at the end ("Restarting data prefetching
from start.") and apply ``transform_param`` for the layer's phase; the batch size and shape
come from the first record. ``next_batch`` serves the net in-process; :meth:`make_loader`
gives the trainer the same batch sequence from DataLoader worker processes, sharded by rank as
Caffe's multi-solver ``DataLayer::Skip`` does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from caffe_compat.data.batches import CaffeBatches, batch_loader
from caffe_compat.data.image_data import ImageListDataset
from caffe_compat.data.leveldb import LevelDBDataset, is_leveldb
from caffe_compat.data.lmdb_dataset import LMDBDataset
from caffe_compat.data.transformer import DataTransformer
from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.registry import Layer, Shape, register_layer

log = logging.getLogger("caffe_compat.data")


class SourceDataLayer(Layer):
    """Shared machinery of Data and ImageData: a record source, a transformer, a batch cursor."""

    is_source = True

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        if len(param.top) not in (1, 2):
            raise self.fail(f"needs 1 or 2 tops (data[, label]), got {len(param.top)}")
        self.output_labels = len(param.top) == 2
        #: Seed of the random crops/mirrors (and ImageData shuffling); the trainer may set it.
        self.seed = 0
        try:
            self.transformer = DataTransformer(param.transform_param, phase)
            self.source = self.make_source()
        except CaffeCompatError as exc:
            raise self.fail(str(exc)) from None
        self.batch_size = self.configured_batch_size()
        self._cursor = 0
        self._batches: dict[tuple, CaffeBatches] = {}
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    # -- what subclasses define --
    def make_source(self) -> Dataset:
        """The records (raise CaffeCompatError for bad parameters; the layer name is added)."""
        raise NotImplementedError

    def configured_batch_size(self) -> int:
        raise NotImplementedError

    def batch_options(self) -> dict:
        """Extra CaffeBatches arguments (shuffle, start offset)."""
        return {}

    # -- the Caffe layer --
    def batches(self, rank: int = 0, world_size: int = 1, raw: bool = False) -> CaffeBatches:
        """This layer's batch sequence for one rank (cached; rebuilt when ``seed`` changes)."""
        key = (rank, world_size, raw, self.seed)
        if key not in self._batches:
            try:
                self._batches[key] = CaffeBatches(
                    self.source, self.transformer, self.batch_size, rank=rank, world_size=world_size,
                    seed=self.seed, raw=raw, **self.batch_options())
            except CaffeCompatError as exc:
                raise self.fail(str(exc)) from None
        return self._batches[key]

    def top_shapes(self) -> list[Shape]:
        batches = self.batches()
        try:
            image, _ = self.source[batches.record_indices(0)[0]]
            shape = self.transformer.output_shape(image.shape)
        except CaffeCompatError as exc:
            raise self.fail(str(exc)) from None
        tops: list[Shape] = [(self.batch_size, *shape)]
        return tops + [(self.batch_size,)] if self.output_labels else tops

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """The next batch in Caffe's order: (data float32 NCHW[, label float32 N])."""
        batches = self.batches()
        try:
            data, label = batches[self._cursor]
        except CaffeCompatError as exc:
            raise self.fail(str(exc)) from None
        if batches.wraps(self._cursor):
            log.info("Restarting data prefetching from start.")
        self._cursor += 1
        device = self._device_anchor.device
        tops = (data.to(device), label.to(device))
        return tops if self.output_labels else tops[:1]

    def forward(self) -> tuple[torch.Tensor, ...]:
        return self.next_batch()

    def rewind(self) -> None:
        """Back to the first record (what Caffe does on resume: the cursor is not snapshotted)."""
        self._cursor = 0

    def make_loader(self, num_workers: int = 0, rank: int = 0, world_size: int = 1, *, start: int = 0,
                    stop: int | None = None, raw: bool = False, pin_memory: bool = False,
                    prefetch_factor: int = 4) -> DataLoader:
        """A DataLoader over this layer's batches ``start, start+1, ...`` for ``rank`` of ``world_size``.

        Items are ``(data, label)`` float32 tensors, or with ``raw=True`` ``(uint8 images, label,
        plans)`` to finish on the GPU with ``loader.dataset.finish(images.cuda(), plans)``.
        Caffe shards only in TRAIN (every TEST net reads all records): pass ``world_size=1`` there.
        """
        return batch_loader(self.batches(rank, world_size, raw), num_workers, start, stop,
                            prefetch_factor, pin_memory)


@register_layer("Data")
class Data(SourceDataLayer):
    """Datums from an LMDB or LevelDB (``data_param.source``), ``data_param.batch_size`` per forward."""

    def make_source(self) -> Dataset:
        p = self.param.data_param
        if not p.source:
            raise CaffeCompatError("data_param.source is not set")
        source = Path(p.source)
        if is_leveldb(source):
            dataset = LevelDBDataset(source, self.transformer.decode_flag)
        else:
            dataset = LMDBDataset(source, self.transformer.decode_flag)
        forced = self.param.transform_param.force_color or self.param.transform_param.force_gray
        if forced and len(dataset) and not dataset.datum(0).encoded:
            log.warning(f"layer '{self.name}': force_color and force_gray only apply to encoded datums "
                        "(ignored, as in Caffe)")
        return dataset

    def configured_batch_size(self) -> int:
        if self.param.data_param.batch_size <= 0:
            raise self.fail("data_param.batch_size must be > 0")
        return int(self.param.data_param.batch_size)


@register_layer("ImageData")
class ImageData(SourceDataLayer):
    """Images named in a list file (``image_data_param``), decoded and resized at every read."""

    def make_source(self) -> Dataset:
        p = self.param.image_data_param
        if not p.source:
            raise CaffeCompatError("image_data_param.source is not set")
        return ImageListDataset(p.source, p.root_folder, int(p.new_height), int(p.new_width), p.is_color)

    def configured_batch_size(self) -> int:
        if self.param.image_data_param.batch_size <= 0:
            raise self.fail("image_data_param.batch_size must be > 0")
        return int(self.param.image_data_param.batch_size)

    def batch_options(self) -> dict:
        p = self.param.image_data_param
        skip = int(torch.randint(p.rand_skip, (1,), generator=torch.Generator().manual_seed(self.seed))) \
            if p.rand_skip else 0
        return {"shuffle": p.shuffle, "start_offset": skip}
