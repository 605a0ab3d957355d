"""Caffe's DummyData: tops of fixed shapes filled by fillers, for tests and net surgery.

Like Caffe, tops whose filler is "constant" (the default, value 0) are filled once; every
other top is refilled at each forward.
"""

from __future__ import annotations

import torch

from caffe_compat.net.fillers import constant_filler, fill
from caffe_compat.net.registry import Layer, Shape, register_layer


@register_layer("DummyData")
class DummyData(Layer):
    is_source = True

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.dummy_data_param
        num_top = len(param.top)
        if len(p.data_filler) not in (0, 1, num_top):
            raise self.fail(
                f"number of data fillers must be 0, 1 or one per top ({num_top}); got {len(p.data_filler)}"
            )
        self.shapes = self._shapes(p, num_top)
        fillers = list(p.data_filler) or [constant_filler(0.0)]
        self.fillers = [fillers[i if len(fillers) > 1 else 0] for i in range(num_top)]
        # Constant tops are filled once and kept as (non-persistent) buffers so they follow .to(device).
        for i, (shape, filler) in enumerate(zip(self.shapes, self.fillers)):
            blob = fill(torch.empty(shape), filler, self.name) if filler.type == "constant" else torch.empty(0)
            self.register_buffer(f"top{i}", blob, persistent=False)

    def _shapes(self, p, num_top: int) -> list[Shape]:
        legacy = {name: list(getattr(p, name)) for name in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            if len(p.shape):
                raise self.fail("both shape and legacy num/channels/height/width were specified")
            for name, values in legacy.items():
                if len(values) not in (1, num_top):
                    raise self.fail(f"specify '{name}' once or once per top ({num_top}); got {len(values)}")
            return [
                tuple(values[i if len(values) > 1 else 0] for values in legacy.values()) for i in range(num_top)
            ]
        if len(p.shape) not in (1, num_top):
            raise self.fail(f"specify 'shape' once or once per top ({num_top}); got {len(p.shape)}")
        return [tuple(p.shape[i if len(p.shape) > 1 else 0].dim) for i in range(num_top)]

    def top_shapes(self) -> list[Shape]:
        return list(self.shapes)

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        tops = []
        for i, (shape, filler) in enumerate(zip(self.shapes, self.fillers)):
            kept = getattr(self, f"top{i}")
            if filler.type != "constant":
                kept = fill(torch.empty(shape, device=kept.device), filler, self.name)
            tops.append(kept)
        return tuple(tops)

    def forward(self) -> tuple[torch.Tensor, ...]:
        return self.next_batch()
