"""SENet's ``Axpy``: top = a * x + y, the squeeze-excitation scale and the residual add in one.

Read from hujie-frank/SENet @0262d43 (src/caffe/layers/axpy_layer.cpp): bottoms a (N, C, 1, 1)
or (N, C), x and y (N, C, H, W); backward gives da = sum over H, W of x * dtop, dx = a * dtop,
dy = dtop (autograd's gradient of the forward below).
"""

from __future__ import annotations

import torch

from caffe_compat.net.registry import Layer, Shape, register_layer


@register_layer("Axpy")
class Axpy(Layer):
    """F = a * X + Y with a per-(sample, channel) scale ``a``."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        if len(self.bottom_shapes) != 3:
            raise self.fail(f"takes 3 bottoms (a, x, y), got {len(self.bottom_shapes)}")
        a, x, y = self.bottom_shapes
        if x != y:
            raise self.fail(f"x {x} and y {y} must have the same shape")
        if len(x) < 2 or a[:2] != x[:2] or any(d != 1 for d in a[2:]):
            raise self.fail(f"a {a} must be (N, C) or (N, C, 1, 1) of x {x}")

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[1]]

    def forward(self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
        scale = a.reshape(*a.shape[:2], *([1] * (x.dim() - 2)))
        return (torch.addcmul(y, scale, x),)
