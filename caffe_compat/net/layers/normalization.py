"""Caffe's BatchNorm (statistics only) and the Scale / Bias layers that follow it."""

from __future__ import annotations

import torch
from torch import nn

from caffe_compat.net.fillers import constant_filler, filled
from caffe_compat.net.layers.shape_ops import canonical_axis
from caffe_compat.net.registry import TEST, Layer, Shape, register_layer


@register_layer("BatchNorm")
class BatchNorm(Layer):
    """y = (x - mean) / sqrt(var + eps) per channel (axis 1); no affine part (that is Scale).

    Blobs: running mean sum, running variance sum, and the scale factor they are divided by
    (factor 0 means mean = var = 0). ``use_global_stats`` defaults to phase == TEST. In TRAIN
    without global stats the batch statistics are used and the blobs updated like Caffe:
    factor' = maf * factor + 1, mean' = maf * mean + batch_mean,
    var' = maf * var + m / (m - 1) * batch_var with m = count / channels.
    Statistics are always computed in float32 (stored variances may be scaled by ~1000).
    """

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.batch_norm_param
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else phase == TEST
        self.moving_average_fraction = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        shape = self.bottom_shapes[0]
        self.channels = 1 if len(shape) == 1 else shape[1]
        for size in (self.channels, self.channels, 1):
            self.blobs.append(nn.Parameter(torch.zeros(size), requires_grad=False))
        # Caffe masks the statistics from the solver with lr_mult 0 param specs.
        for i in range(len(self.blobs)):
            if i == len(param.param):
                param.param.add().lr_mult = 0.0
            elif param.param[i].lr_mult != 0:
                raise self.fail("cannot configure batch normalization statistics as layer "
                                "parameters (lr_mult must be 0)")

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        xf = x.float()
        view = [1] * x.dim()
        view[min(1, x.dim() - 1)] = self.channels
        if self.use_global_stats:
            factor = self.blobs[2]
            factor = torch.where(factor == 0, torch.zeros_like(factor), 1 / factor)
            mean, var = self.blobs[0] * factor, self.blobs[1] * factor
        else:
            dims = [0, *range(2, x.dim())]
            mean = xf.mean(dims)
            centred = xf - mean.view(view)
            var = (centred * centred).mean(dims)
            self._update_running_stats(mean, var, x.numel() // self.channels)
        y = (xf - mean.view(view)) / torch.sqrt(var + self.eps).view(view)
        return (y.to(x.dtype),)

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, m: int) -> None:
        maf = self.moving_average_fraction
        correction = m / (m - 1) if m > 1 else 1.0
        with torch.no_grad():
            self.blobs[2].mul_(maf).add_(1)
            self.blobs[0].mul_(maf).add_(mean.detach())
            self.blobs[1].mul_(maf).add_(correction * var.detach())


def _operand_shape(layer: Layer, axis: int, num_axes: int) -> tuple[int, Shape]:
    """(axis, shape) of a Scale/Bias operand: bottom[1]'s shape when given, else ``num_axes``
    axes of bottom[0] from ``axis`` (-1: all the rest). Checks Caffe's broadcast rule."""
    shapes = layer.bottom_shapes
    x = shapes[0]
    if len(shapes) > 1:
        operand = shapes[1]
    else:
        if num_axes < -1:
            raise layer.fail(f"num_axes must be >= -1, got {num_axes}")
        start = canonical_axis(layer, axis, len(x)) if x else 0
        end = len(x) if num_axes == -1 else start + num_axes
        if end > len(x):
            raise layer.fail(f"axis {axis} + num_axes {num_axes} exceed the bottom's {len(x)} axes")
        operand = x[start:end]
    start = 0 if not operand else canonical_axis(layer, axis, len(x))
    if x[start : start + len(operand)] != operand:
        raise layer.fail(
            f"operand shape {operand} does not match bottom shape {x} from axis {start}"
        )
    return start, operand


def _broadcast(operand: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """``operand`` shaped to multiply/add onto ``x`` starting at ``axis``."""
    return operand.reshape(*operand.shape, *([1] * (x.dim() - axis - operand.dim())))


@register_layer("Scale")
class Scale(Layer):
    """y = x * scale (+ bias): scale is bottom[1] or a learned blob (filler default 1)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.scale_param
        self.axis, shape = _operand_shape(self, p.axis, p.num_axes)
        self.learned_scale = len(self.bottom_shapes) == 1
        if self.learned_scale:
            filler = p.filler if p.HasField("filler") else constant_filler(1.0)
            self.blobs.append(filled(shape, filler, self.name))
        self.bias_term = p.bias_term
        if self.bias_term:
            self.blobs.append(filled(shape, p.bias_filler, self.name))

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor, *scale: torch.Tensor) -> tuple[torch.Tensor]:
        factor = self.blobs[0] if self.learned_scale else scale[0]
        y = x * _broadcast(factor, x, self.axis)
        if self.bias_term:
            y = y + _broadcast(self.blobs[-1], x, self.axis)
        return (y.to(x.dtype),)


@register_layer("Bias")
class Bias(Layer):
    """y = x + bias: bias is bottom[1] or a learned blob (filler default 0)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.bias_param
        self.axis, shape = _operand_shape(self, p.axis, p.num_axes)
        if len(self.bottom_shapes) == 1:
            self.blobs.append(filled(shape, p.filler, self.name))

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor, *bias: torch.Tensor) -> tuple[torch.Tensor]:
        operand = bias[0] if bias else self.blobs[0]
        return ((x + _broadcast(operand, x, self.axis)).to(x.dtype),)
