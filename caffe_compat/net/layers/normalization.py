"""Caffe's BatchNorm (statistics only) and the Scale / Bias layers that follow it, and the
BatchNorm + Scale (+ ReLU) fusion every Caffe ResNet runs as one kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from caffe_compat.net.fillers import constant_filler, filled
from caffe_compat.net.layers.activations import ReLU
from caffe_compat.net.layers.shape_ops import canonical_axis
from caffe_compat.net.registry import (TEST, FusedLayers, Layer, RunningUpdate, Shape, apply_running_updates,
                                       register_fusion, register_layer)


@register_layer("BatchNorm")
class BatchNorm(Layer):
    """y = (x - mean) / sqrt(var + eps) per channel (axis 1); no affine part (that is Scale).

    Blobs: running mean sum, running variance sum, and the scale factor they are divided by
    (factor 0 means mean = var = 0). ``use_global_stats`` defaults to phase == TEST. In TRAIN
    without global stats the batch statistics are used and the blobs updated like Caffe:
    factor' = maf * factor + 1, mean' = maf * mean + batch_mean,
    var' = maf * var + m / (m - 1) * batch_var with m = count / channels.

    Runs on PyTorch's fused kernel (cuDNN on GPUs): one pass in the input's dtype with float32
    statistics. In TRAIN the kernel's running buffers, at momentum 1, receive the batch mean and
    the m / (m - 1)-corrected variance, which :meth:`running_updates` folds into the blobs.
    Stored sums are divided by the factor in float32 before use (Caffe's variance blobs may be
    scaled by ~1000, past bf16's range of exact values).
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
        # What the TRAIN forward adds to the three blobs: batch mean, corrected variance, 1.
        self.register_buffer("batch_mean", torch.zeros(self.channels), persistent=False)
        self.register_buffer("batch_var", torch.zeros(self.channels), persistent=False)
        self.register_buffer("one", torch.ones(1), persistent=False)
        self._stats_key: tuple | None = None
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.normalize(x),)

    def normalize(self, x: torch.Tensor, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
        """This layer's top, times ``weight`` plus ``bias`` per channel when given (a Scale
        layer's blobs, fused into the same kernel)."""
        flat = x.dim() == 1
        if flat:
            x = x.unsqueeze(1)
        if self.use_global_stats:
            mean, var = self.global_stats()
            y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        elif x.numel() == x.shape[1]:
            # One value per channel: Caffe's variance correction is 1 there (torch's would be 1/0).
            y = torch.batch_norm(x, weight, bias, None, None, True, 0.0, self.eps, torch.backends.cudnn.enabled)
            with torch.no_grad():
                self.batch_mean.copy_(x.detach().reshape(-1))
                self.batch_var.zero_()
        else:
            y = F.batch_norm(x, self.batch_mean, self.batch_var, weight, bias, True, 1.0, self.eps)
        if not self.use_global_stats and not self.defer_running_updates:
            apply_running_updates(self.running_updates())
        return y.squeeze(1) if flat else y

    def running_updates(self) -> list[RunningUpdate]:
        if self.use_global_stats:
            return []
        maf = self.moving_average_fraction
        return [(self.blobs[0], maf, self.batch_mean), (self.blobs[1], maf, self.batch_var),
                (self.blobs[2], maf, self.one)]

    def global_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) from the stored sums, as Caffe: each times 1 / factor (0 if factor is 0).

        Kept between calls while the blobs are unchanged (same storage, same version), so a
        frozen BatchNorm costs one kernel per forward, like ``nn.BatchNorm2d`` in eval mode."""
        blobs = self.blobs[0], self.blobs[1], self.blobs[2]
        compiling = torch.compiler.is_compiling()
        if not compiling:
            key = (*((b.data_ptr(), b._version) for b in blobs), torch.is_inference_mode_enabled())
            if key == self._stats_key and self._stats is not None:
                return self._stats
        with torch.no_grad():
            factor = blobs[2]
            scale = torch.where(factor == 0, torch.zeros_like(factor), 1 / factor)
            stats = blobs[0] * scale, blobs[1] * scale
        if not compiling:
            self._stats_key, self._stats = key, stats
        return stats


class NormalizeScale(FusedLayers):
    """BatchNorm, then a per-channel Scale in place on its top, then optionally an in-place ReLU:
    one normalisation kernel with the Scale's blobs as its weight and bias, and a ReLU in place
    on its fresh output. The pattern of every Caffe ResNet; gradients reach both layers' blobs."""

    def __init__(self, bn: BatchNorm, scale: "Scale", relu: bool) -> None:
        super().__init__([bn, scale])
        self.bn, self.scale, self.relu = bn, scale, relu

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        blobs = self.scale.blobs
        y = self.bn.normalize(x, blobs[0], blobs[1] if self.scale.bias_term else None)
        return (torch.relu_(y) if self.relu else y,)


def _plain_in_place(step, blob: str) -> bool:
    """A step that reads and writes only ``blob``, with no loss weight and full backprop."""
    return (step.bottoms == (blob,) and step.tops == (blob,) and not any(step.loss_weights)
            and not step.stop_gradient)


@register_fusion
def _fuse_normalize_scale(steps, i: int):
    bn = steps[i].layer
    if not isinstance(bn, BatchNorm) or i + 1 >= len(steps) or any(steps[i].loss_weights):
        return None
    blob = steps[i].tops[0]
    scale = steps[i + 1].layer
    if not (isinstance(scale, Scale) and scale.learned_scale and _plain_in_place(steps[i + 1], blob)
            and len(bn.bottom_shapes[0]) > 1 and scale.axis == 1
            and tuple(scale.blobs[0].shape) == (bn.channels,)):
        return None
    relu = i + 2 < len(steps) and _plain_in_place(steps[i + 2], blob) and _is_plain_relu(steps[i + 2].layer)
    return (3 if relu else 2), NormalizeScale(bn, scale, relu)


def _is_plain_relu(layer: Layer) -> bool:
    return isinstance(layer, ReLU) and layer.negative_slope == 0.0


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
        # Operands in x's dtype: under bf16 autocast one bf16 pass, not float32 passes and a cast.
        factor = _broadcast(self.blobs[0] if self.learned_scale else scale[0], x, self.axis).to(x.dtype)
        if self.bias_term:
            return (torch.addcmul(_broadcast(self.blobs[-1], x, self.axis).to(x.dtype), x, factor),)
        return (x * factor,)


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
        return (x + _broadcast(operand, x, self.axis).to(x.dtype),)
