"""Caffe's neuron layers: one bottom, one top of the same shape, applied element by element.

Each forward is written so that autograd's gradient is Caffe's Backward_cpu, including its
choices at the kinks (ReLU/PReLU take the negative slope at x == 0, AbsVal takes sign(0) = 0).
Transcendental functions run in float32 and return the input's dtype, so bf16 autocast keeps
Caffe's accuracy where it matters and the memory savings where it does not.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from caffe_compat.net.fillers import constant_filler, filled
from caffe_compat.net.registry import TRAIN, Layer, Shape, register_layer


class NeuronLayer(Layer):
    """Caffe's NeuronLayer: the top has the bottom's shape."""

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]


def _in_float32(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` computed in float32 (at least), returned in ``x``'s dtype."""
    return fn(x.float()).to(x.dtype)


@register_layer("ReLU")
class ReLU(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0); the gradient at 0 is negative_slope."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.negative_slope = float(param.relu_param.negative_slope)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if self.negative_slope == 0.0:
            return (F.relu(x),)
        return (F.leaky_relu(x, self.negative_slope),)


@register_layer("PReLU")
class PReLU(NeuronLayer):
    """ReLU with a learned negative slope per channel (axis 1), or one shared slope.

    The slope blob has shape (C,), or () when ``channel_shared``; without a filler Caffe
    initialises it to the constant 0.25.
    """

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        shape = self.bottom_shapes[0]
        if len(shape) < 2:
            raise self.fail(f"needs a bottom with at least 2 axes (N, C, ...), got shape {shape}")
        prelu = param.prelu_param
        blob_shape: Shape = () if prelu.channel_shared else (shape[1],)
        filler = prelu.filler if prelu.HasField("filler") else constant_filler(0.25)
        self.blobs.append(filled(blob_shape, filler, self.name))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (F.prelu(x, self.blobs[0].reshape(-1).to(x.dtype)),)


@register_layer("ELU")
class ELU(NeuronLayer):
    """y = x for x > 0, alpha * (exp(x) - 1) otherwise (gradient alpha at 0, like Caffe)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.alpha = float(param.elu_param.alpha)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        def elu(v: torch.Tensor) -> torch.Tensor:
            # exp of min(x, 0) so the unused branch never overflows into a NaN gradient.
            return torch.where(v > 0, v, self.alpha * (torch.exp(torch.clamp_max(v, 0.0)) - 1.0))

        return (_in_float32(elu, x),)


@register_layer("Sigmoid")
class Sigmoid(NeuronLayer):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (_in_float32(torch.sigmoid, x),)


@register_layer("TanH")
class TanH(NeuronLayer):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (_in_float32(torch.tanh, x),)


@register_layer("AbsVal")
class AbsVal(NeuronLayer):
    """y = |x|, gradient sign(x) with sign(0) = 0. Caffe refuses to run it in place."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        if list(param.top) == list(param.bottom):
            raise self.fail("AbsVal does not allow in-place computation (top == bottom)")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.abs(x),)


@register_layer("BNLL")
class BNLL(NeuronLayer):
    """y = log(1 + exp(x)), the binomial normal log likelihood; gradient sigmoid(x)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (_in_float32(F.softplus, x),)


@register_layer("Power")
class Power(NeuronLayer):
    """y = (shift + scale * x) ^ power.

    When power * scale == 0 Caffe ignores the input: y is the constant 1 (power 0) or
    shift^power, and the gradient is 0.
    """

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self.constant: float | None = None
        if self.power * self.scale == 0.0:
            with np.errstate(divide="ignore", invalid="ignore"):  # C's pow: 0^-p = inf, (-1)^0.5 = nan
                shifted = np.power(np.float32(self.shift), np.float32(self.power))
            self.constant = 1.0 if self.power == 0.0 else float(shifted)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if self.constant is not None:
            return (x * 0 + self.constant,)

        def power(v: torch.Tensor) -> torch.Tensor:
            if self.scale != 1.0:
                v = v * self.scale
            if self.shift != 0.0:
                v = v + self.shift
            if self.power != 1.0:
                v = v.pow(self.power)
            return v

        if self.power == 1.0:  # affine: exact in any dtype
            return (power(x),)
        return (_in_float32(power, x),)


def _log_base(layer: Layer, base: float) -> float:
    """ln(base), with Caffe's convention that base -1 means e; other bases must be > 0."""
    if base == -1.0:
        return 1.0
    if not base > 0.0:
        raise layer.fail(f"base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


@register_layer("Exp")
class Exp(NeuronLayer):
    """y = base ^ (shift + scale * x), computed as outer * exp(inner * x) like Caffe."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.exp_param
        self.inner_scale = _log_base(self, float(p.base)) * float(p.scale)
        if p.shift == 0.0:
            self.outer_scale = 1.0
        elif p.base == -1.0:
            self.outer_scale = math.exp(p.shift)
        else:
            self.outer_scale = float(p.base) ** float(p.shift)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        def exp(v: torch.Tensor) -> torch.Tensor:
            y = torch.exp(v if self.inner_scale == 1.0 else v * self.inner_scale)
            return y if self.outer_scale == 1.0 else y * self.outer_scale

        return (_in_float32(exp, x),)


@register_layer("Log")
class Log(NeuronLayer):
    """y = log_base(shift + scale * x), computed as ln(...) / ln(base) like Caffe."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.log_param
        self.base_scale = 1.0 / _log_base(self, float(p.base))
        self.scale, self.shift = float(p.scale), float(p.shift)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        def log(v: torch.Tensor) -> torch.Tensor:
            if self.scale != 1.0:
                v = v * self.scale
            if self.shift != 0.0:
                v = v + self.shift
            y = torch.log(v)
            return y if self.base_scale == 1.0 else y * self.base_scale

        return (_in_float32(log, x),)


@register_layer("Threshold")
class Threshold(NeuronLayer):
    """y = 1 where x > threshold (strictly), else 0. Caffe has no backward for it."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.threshold = float(param.threshold_param.threshold)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return ((x.detach() > self.threshold).to(x.dtype),)


@register_layer("Dropout")
class Dropout(NeuronLayer):
    """Inverted dropout: in TRAIN keep each value with probability 1 - ratio and scale it by
    1 / (1 - ratio); in TEST the identity. The phase is the net's, fixed when it is built."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.ratio = float(param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.fail(f"dropout_ratio must be in [0, 1), got {self.ratio}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if self.phase != TRAIN or self.ratio == 0.0:
            return (x,)
        return (F.dropout(x, self.ratio, training=True),)


@register_layer("Clip")
class Clip(NeuronLayer):
    """y = min(max(x, min), max); the gradient passes where min <= x <= max (inclusive)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.fail("clip_param needs both min and max")
        self.min, self.max = float(p.min), float(p.max)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.clamp(x, self.min, self.max),)


@register_layer("Swish")
class Swish(NeuronLayer):
    """y = x * sigmoid(beta * x)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.beta = float(param.swish_param.beta)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (_in_float32(lambda v: v * torch.sigmoid(self.beta * v), x),)
