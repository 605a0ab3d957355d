"""Caffe's MemoryData: a source whose batches the caller hands in (pycaffe's ``set_input_arrays``).

Caffe nets trained from Python (open_nsfw's caffemodel among them) start with one; the layer
only declares the shapes, ``(batch_size, channels, height, width)`` for ``data`` and
``(batch_size,)`` for ``label``, so the net can be built, inspected and fed from the caller.
"""

from __future__ import annotations

import torch

from caffe_compat.net.registry import Layer, Shape, register_layer


@register_layer("MemoryData")
class MemoryData(Layer):
    is_source = True

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.memory_data_param
        dims = {"batch_size": p.batch_size, "channels": p.channels, "height": p.height, "width": p.width}
        unset = [name for name, value in dims.items() if value <= 0]
        if unset:
            raise self.fail(f"memory_data_param needs {', '.join(unset)} > 0 "
                            "(batch_size, channels, height and width must all be given)")
        if len(param.top) != 2:
            raise self.fail(f"needs exactly 2 tops (data, label), got {len(param.top)}")
        self.shapes: list[Shape] = [(p.batch_size, p.channels, p.height, p.width), (p.batch_size,)]

    def top_shapes(self) -> list[Shape]:
        return list(self.shapes)

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        raise self.fail(f"its tops {list(self.param.top)} come from the caller: pass them as inputs "
                        "(pycaffe's net.set_input_arrays)")
