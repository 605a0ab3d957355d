"""Caffe's MVN: per-instance (or per-channel) mean/variance normalisation.

y = (x - mean) / (std + eps) over each channel (or, with ``across_channels``, each instance).
Caffe's backward drops the d(std)/dx term's (std + eps)/std factor and so differs from the
exact derivative by a relative eps/std; a custom autograd function reproduces it, so tiny
variances give Caffe's finite diffs instead of autograd's NaNs.
"""

from __future__ import annotations

import math

import torch

from caffe_compat.net.layers.activations import NeuronLayer
from caffe_compat.net.registry import register_layer


class _MVNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: torch.Tensor, normalize_variance: bool, eps: float) -> torch.Tensor:
        centred = rows - rows.mean(1, keepdim=True)
        if not normalize_variance:
            ctx.save_for_backward()
            ctx.normalize_variance = False
            return centred
        std = torch.sqrt((centred * centred).mean(1, keepdim=True)) + eps
        y = centred / std
        ctx.save_for_backward(y, std)
        ctx.normalize_variance = True
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        if not ctx.normalize_variance:
            return dy - dy.mean(1, keepdim=True), None, None
        y, std = ctx.saved_tensors
        dim = y.shape[1]
        dx = (dy - (y * (y * dy).sum(1, keepdim=True) + dy.sum(1, keepdim=True)) / dim) / std
        return dx, None, None


@register_layer("MVN")
class MVN(NeuronLayer):
    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.mvn_param
        self.normalize_variance, self.eps = bool(p.normalize_variance), float(p.eps)
        self.instance_axes = 1 if p.across_channels else 2  # axes that index one normalised group

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        groups = math.prod(x.shape[: self.instance_axes])
        rows = x.float().reshape(groups, -1)
        y = _MVNFunction.apply(rows, self.normalize_variance, self.eps)
        return (y.reshape(x.shape).to(x.dtype),)
