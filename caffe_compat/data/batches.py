"""The batch sequence of a Caffe data layer, as a map-style ``Dataset`` of whole batches.

Caffe's data layers read records in order and wrap around at the end; with ``S`` solvers, rank
``r`` keeps the records whose running offset ``o`` has ``o % S == r`` (``DataLayer::Skip``).
Batch ``b`` of rank ``r`` is therefore a pure function of ``b``: records
``(b*batch_size + i)*S + r`` modulo the record count (through the epoch's permutation when
shuffling, as ImageData does). Random crops/mirrors are drawn from an RNG seeded by
``(seed, rank, b)``, so results do not depend on how many DataLoader workers produced them.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from caffe_compat.data.transformer import CropPlan, DataTransformer
from caffe_compat.errors import CaffeCompatError, where


class CaffeBatches(Dataset):
    """``batches[b]`` = ``(data float32 NxCxHxW, label float32 N)`` of the b-th forward.

    ``source`` is any dataset of ``(CxHxW array, label)`` (LMDBDataset, ImageListDataset).
    With ``raw=True`` items are ``(uint8 NxCxHxW uncropped, label, plans int64 Nx3)`` for
    :meth:`finish` to crop/mirror/normalise on the GPU.
    """

    def __init__(self, source: Dataset, transformer: DataTransformer, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = False, start_offset: int = 0,
                 raw: bool = False) -> None:
        if batch_size <= 0:
            raise CaffeCompatError("batch_size must be > 0")
        if not 0 <= rank < world_size:
            raise CaffeCompatError(f"rank {rank} is not in [0, {world_size})")
        self.source = source
        self.count = len(source)  # type: ignore[arg-type]
        if self.count == 0:
            raise CaffeCompatError("the data source is empty")
        self.transformer = transformer
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.start_offset = start_offset
        self.raw = raw
        self._perms: dict[int, np.ndarray] = {}

    def record_indices(self, batch: int) -> list[int]:
        """Positions in ``source`` read by this rank's ``batch``-th forward, in order."""
        offsets = [self.start_offset + (batch * self.batch_size + i) * self.world_size + self.rank
                   for i in range(self.batch_size)]
        if not self.shuffle:
            return [o % self.count for o in offsets]
        return [int(self._permutation(o // self.count)[o % self.count]) for o in offsets]

    def _permutation(self, epoch: int) -> np.ndarray:
        """The record order of one epoch (ImageData reshuffles at every wrap-around)."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.count)
        return self._perms[epoch]

    def wraps(self, batch: int) -> bool:
        """Whether Caffe's cursor passes the last record during this batch (it then logs
        "Restarting data prefetching from start.")."""
        first = self.start_offset + batch * self.batch_size * self.world_size + self.rank
        last = first + (self.batch_size - 1) * self.world_size
        return (last + 1) // self.count > first // self.count

    def _load(self, batch: int) -> tuple[list[np.ndarray], list[int], list[CropPlan]]:
        rng = np.random.default_rng([self.seed, self.rank, batch]) if self.transformer.needs_rng else None
        images, labels, plans = [], [], []
        read = getattr(self.source, "borrow", self.source.__getitem__)  # zero-copy where offered
        for index in self.record_indices(batch):
            image, label = read(index)
            images.append(image)
            labels.append(label)
            plans.append(self.transformer.plan(image.shape[1], image.shape[2], rng))
        return images, labels, plans

    def _check_same_shape(self, batch: int, images: Sequence[np.ndarray]) -> tuple[int, ...]:
        shape = images[0].shape
        indices = self.record_indices(batch)
        for index, image in zip(indices[1:], images[1:]):
            if image.shape != shape and not self.transformer.crop_size:
                path = getattr(self.source, "path", None)
                raise CaffeCompatError(
                    f"{f'{where(path)}: ' if path is not None else ''}records of one batch differ in shape: "
                    f"{self._name(indices[0])} is {shape}, {self._name(index)} is {image.shape}; "
                    "set crop_size or resize them to one size"
                )
        return self.transformer.output_shape(shape)

    def _name(self, index: int) -> str:
        """A record by its key where the source has keys (an LMDB), else by its position."""
        key = getattr(self.source, "key", None)
        return f"'{key(index).decode('utf-8', 'backslashreplace')}'" if key is not None else f"record {index}"

    def __getitem__(self, batch: int):
        images, labels, plans = self._load(batch)
        out_shape = self._check_same_shape(batch, images)
        label = torch.tensor(labels, dtype=torch.float32)
        if self.raw:
            if any(image.shape != images[0].shape for image in images):
                raise CaffeCompatError("raw (GPU-transform) batches need records of one size")
            plan_t = torch.tensor([(p.h_off, p.w_off, p.mirror) for p in plans], dtype=torch.int64)
            return torch.from_numpy(np.stack(images)), label, plan_t
        if get_worker_info() is not None:  # filled in place: sending it to the main process copies nothing
            data = torch.empty((len(images), *out_shape), dtype=torch.float32).share_memory_()
        else:  # numpy asks for huge pages: a fresh 38 MB batch faults in a quarter of the time
            data = torch.from_numpy(np.empty((len(images), *out_shape), np.float32))
        slots = data.numpy()
        for i, (image, plan) in enumerate(zip(images, plans)):
            self.transformer.apply(image, plan, out=slots[i])
        return data, label

    def finish(self, images: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        """The float32 data of a ``raw=True`` batch, transformed where ``images`` lives (e.g. GPU)."""
        return self.transformer.apply_torch(images, plans)


class _Count(Sampler):
    """Batch indices ``start, start+1, ...`` (endless unless ``stop``); fresh on every iter()."""

    def __init__(self, start: int, stop: int | None) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop)) if self.stop is not None else itertools.count(self.start)

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("endless batch sampler has no length")
        return self.stop - self.start


def batch_loader(batches: CaffeBatches, num_workers: int = 0, start: int = 0, stop: int | None = None,
                 prefetch_factor: int = 4, pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding batches ``start, start+1, ...`` in order, built by worker processes."""
    extra = {"prefetch_factor": prefetch_factor, "persistent_workers": True} if num_workers else {}
    # A generator of its own: iter() on a DataLoader otherwise draws a seed from torch's global
    # RNG, which Dropout also draws from, so where loaders are (re)opened would move the masks
    # and a resumed run would no longer equal the uninterrupted one. Batches need no such seed.
    return DataLoader(batches, batch_size=None, sampler=_Count(start, stop), num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator(), **extra)
