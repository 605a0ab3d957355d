"""Feeding a net's source layers (Data, ImageData, ...) from prefetching loaders, timed.

The solver, not the net, pulls each batch: that is where the time spent waiting for data is
measured (the GPU idles exactly then), where batches are moved to the device with
non-blocking copies (and to channels_last), and where the number of batches consumed per
source is counted so our snapshot sidecar can put the cursor back on resume.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import torch

from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import Layer


class SourceFeed:
    """The batches of one source layer, from its prefetching loader (or ``next_batch``).

    Caffe's data layers give batch ``b`` as a pure function of ``b`` (records, crops and
    mirrors seeded by ``(seed, rank, b)``), so the position is just the count of batches used.
    On a GPU the loader ships uint8 images (4x less to copy) and crop/mirror/mean/scale run on
    the device (``raw`` batches + ``finish``).
    """

    def __init__(self, step, device: torch.device, workers: int, rank: int, world_size: int, seed: int,
                 device_transform: bool) -> None:
        self.layer = step.layer
        self.tops = step.tops
        self.device = device
        self.workers = workers
        self.rank = rank
        self.world_size = world_size
        self.consumed = 0  # batches handed to the net so far
        self.seed = seed
        self._iter: Iterator | None = None
        self.device_transform = device_transform
        self._raw = False
        self._raw_failed = False
        self._finish = None

    def _open(self) -> Iterator:
        make = getattr(self.layer, "make_loader", None)
        if make is None:
            if self.world_size > 1:
                raise self.layer.fail("cannot be sharded across ranks (it has no make_loader)")
            return iter(self.layer.next_batch, None)
        self.layer.seed = self.seed
        cuda = self.device.type == "cuda"
        self._raw = self.device_transform and not self._raw_failed
        loader = make(self.workers, self.rank, self.world_size, start=self.consumed, raw=self._raw, pin_memory=cuda)
        self._finish = loader.dataset.finish if self._raw else None
        return iter(loader)

    def next(self) -> tuple[torch.Tensor, ...]:
        if self._iter is None:
            self._iter = self._open()
        try:
            batch = next(self._iter)
        except ValueError:
            if not self._raw:
                raise
            # Raw batches stack uncropped images; records of different sizes (legal in Caffe
            # with crop_size) cannot be stacked, so transform on the host from here on.
            self._raw_failed = True
            self.close()
            self._iter = self._open()
            batch = next(self._iter)
        self.consumed += 1
        if self._raw:
            images, label, plans = batch
            data = self._finish(images.to(self.device, non_blocking=True), plans)
            batch = (data, label)
        return tuple(batch)[: len(self.tops)]

    def state(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "seed": self.seed}

    def restore(self, state: dict[str, Any]) -> None:
        self.close()
        self.consumed, self.seed = int(state["consumed"]), int(state["seed"])

    def close(self) -> None:
        self._iter = None  # DataLoader workers exit when their iterator is collected


class NetFeeder:
    """All source layers of one net; ``next()`` gives the net's input dict on ``device``."""

    def __init__(self, net: CaffeNet, device: torch.device, workers: int = 0, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False, seed: int = 0,
                 device_transform: bool | None = None) -> None:
        self.device = device
        self.channels_last = channels_last
        if device_transform is None:
            device_transform = device.type == "cuda"
        # Source layers that read data themselves (an Input layer's tops come from the caller).
        self.feeds = [SourceFeed(s, device, workers, rank, world_size, seed, device_transform) for s in net.steps
                      if s.layer.is_source and type(s.layer).next_batch is not Layer.next_batch]
        self.wait_seconds = 0.0
        self.images = 0  # samples fed (first top's batch dimension), for images/s

    def next(self) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        inputs: dict[str, torch.Tensor] = {}
        for feed in self.feeds:
            for name, value in zip(feed.tops, feed.next()):
                inputs[name] = self._to_device(value)
        self.wait_seconds += time.perf_counter() - start
        first = next(iter(inputs.values()), None)
        self.images += int(first.shape[0]) if first is not None and first.dim() else 0
        return inputs

    def _to_device(self, value: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cpu":
            value = value.to(self.device, non_blocking=True)  # async when the loader pinned it
        if value.dim() == 4:
            # Canonical strides: a 1-channel batch from a permute passes as both layouts, and
            # conv kernels then pick a different algorithm (different float rounding).
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            if value.stride() != torch.empty(value.shape, device="meta", memory_format=fmt).stride():
                value = value.clone(memory_format=fmt)
        return value

    def state(self) -> list[dict[str, Any]]:
        return [f.state() for f in self.feeds]

    def restore(self, states: list[dict[str, Any]]) -> None:
        for feed, state in zip(self.feeds, states):
            feed.restore(state)

    def close(self) -> None:
        for feed in self.feeds:
            feed.close()
