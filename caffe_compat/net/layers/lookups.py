"""Layers whose tops are (rows of) learned blobs: Embed (a lookup table) and Parameter."""

from __future__ import annotations

import torch
from torch import nn

from caffe_compat.net.fillers import filled
from caffe_compat.net.registry import Layer, Shape, register_layer


@register_layer("Embed")
class Embed(Layer):
    """top[..., :] = weight[int(x)] (+ bias): weight is (input_dim, num_output), the transpose
    of InnerProduct's. Indices get no diff (Caffe cannot differentiate them)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.embed_param
        if p.num_output <= 0 or p.input_dim <= 0:
            raise self.fail(f"num_output ({p.num_output}) and input_dim ({p.input_dim}) must be positive")
        self.input_dim, self.num_output = int(p.input_dim), int(p.num_output)
        self.blobs.append(filled((self.input_dim, self.num_output), p.weight_filler, self.name))
        if p.bias_term:
            self.blobs.append(filled((self.num_output,), p.bias_filler, self.name))

    def top_shapes(self) -> list[Shape]:
        return [(*self.bottom_shapes[0], self.num_output)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        index = x.detach().long()
        if not torch.compiler.is_compiling() and bool(((index < 0) | (index >= self.input_dim)).any()):
            raise self.fail(f"embedding index out of range [0, {self.input_dim})")
        top = self.blobs[0][index]
        return (top + self.blobs[1] if len(self.blobs) > 1 else top,)


@register_layer("Parameter")
class Parameter(Layer):
    """A learned blob of ``parameter_param.shape`` (zero-initialised, like Caffe) as the top."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.shape: Shape = tuple(int(d) for d in param.parameter_param.shape.dim)
        self.blobs.append(nn.Parameter(torch.zeros(self.shape)))

    def top_shapes(self) -> list[Shape]:
        return [self.shape]

    def forward(self) -> tuple[torch.Tensor]:
        return (self.blobs[0],)
