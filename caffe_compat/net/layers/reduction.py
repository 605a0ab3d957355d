"""Caffe's Reduction: SUM / ASUM / SUMSQ / MEAN over every axis from ``axis`` on, times ``coeff``.

The top keeps the axes before ``axis`` (a 0-axis scalar for axis 0). Autograd's gradients are
Caffe's: coeff for SUM, coeff / dim for MEAN, coeff * sign(x) with sign(0) = 0 for ASUM,
2 * coeff * x for SUMSQ.
"""

from __future__ import annotations

import torch

from caffe_compat.net.layers.shape_ops import canonical_axis
from caffe_compat.net.registry import Layer, Shape, register_layer
from caffe_compat.proto import caffe_pb2

_Op = caffe_pb2.ReductionParameter.ReductionOp
SUM, ASUM, SUMSQ, MEAN = (_Op.Value(n) for n in ("SUM", "ASUM", "SUMSQ", "MEAN"))


@register_layer("Reduction")
class Reduction(Layer):
    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.reduction_param
        self.axis = canonical_axis(self, p.axis, len(self.bottom_shapes[0]))
        self.op, self.coeff = int(p.operation), float(p.coeff)

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0][: self.axis]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        rows = x.float().reshape(*x.shape[: self.axis], -1)
        if self.op == ASUM:
            rows = rows.abs()
        elif self.op == SUMSQ:
            rows = rows * rows
        total = rows.sum(-1)
        coeff = self.coeff / rows.shape[-1] if self.op == MEAN else self.coeff
        return ((total if coeff == 1.0 else total * coeff).to(x.dtype),)
