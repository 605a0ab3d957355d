"""Weight averaging (``caffe-compat train --ema DECAY``): what Caffe's files cannot express.

An exponential moving average of every blob of the train net (learned weights and BatchNorm
statistics), updated after each iteration's update with one foreach op. Its decay warms up as
``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the first iterations (still close to
the starting caffemodel) do not dominate a short finetune. Test phases and snapshot caffemodels
use the average; the raw weights keep training, and our resume sidecar keeps both, so a resume
continues exactly. A plain Caffe resume from such a snapshot starts from the averaged weights.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.builder import CaffeNet


class WeightAverage:
    """The average of ``net``'s blobs (each shared blob once)."""

    def __init__(self, net: CaffeNet, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise CaffeCompatError(f"--ema must be in (0, 1), e.g. 0.999 (got {decay})")
        self.decay = decay
        seen: set[int] = set()
        self.blobs: list[torch.Tensor] = []
        for step in net.steps:
            for blob in step.layer.blobs:
                if id(blob) not in seen and blob.is_floating_point():
                    seen.add(id(blob))
                    self.blobs.append(blob)
        self.average = [b.detach().clone() for b in self.blobs]
        self.updates = 0

    @torch.no_grad()
    def reset(self) -> None:
        """Start over from the net's current blobs (after loading weights or a snapshot)."""
        torch._foreach_copy_(self.average, [b.detach() for b in self.blobs])
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        n = self.updates
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(self.average, [b.detach() for b in self.blobs], 1.0 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The net's blobs hold the average inside the block, their own values again after it."""
        with torch.no_grad():
            own = [b.detach().clone() for b in self.blobs]
            torch._foreach_copy_([b.detach() for b in self.blobs], self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([b.detach() for b in self.blobs], own)

    def state(self) -> dict[str, Any]:
        """For the resume sidecar: the average, the update count and the raw weights (the
        snapshot caffemodel holds the average)."""
        return {"decay": self.decay, "updates": self.updates, "average": [a.cpu() for a in self.average],
                "weights": [b.detach().cpu() for b in self.blobs]}

    @torch.no_grad()
    def restore(self, state: dict[str, Any]) -> None:
        if len(state["average"]) != len(self.average):
            raise CaffeCompatError(f"the resume sidecar holds {len(state['average'])} averaged blobs, "
                                   f"this net has {len(self.average)}")
        for dst, src in zip(self.average, state["average"]):
            dst.copy_(src)
        for dst, src in zip(self.blobs, state["weights"]):
            dst.detach().copy_(src)
        self.updates = int(state["updates"])
