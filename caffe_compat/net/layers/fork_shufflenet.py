"""ShuffleNet's ``ShuffleChannel``: interleave the channels of ``group`` groups.

Read from farmingyard/ShuffleNet @b962444 (shuffle_channel_layer.cpp): channel
i * (C / group) + j of the bottom becomes channel j * group + i of the top; the backward is
the inverse permutation (autograd's, of the reshape-transpose below).
"""

from __future__ import annotations

import torch

from caffe_compat.net.registry import Layer, Shape, register_layer


@register_layer("ShuffleChannel")
class ShuffleChannel(Layer):
    """(N, g, C/g, ...) -> (N, C/g, g, ...) -> (N, C, ...)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.group = int(param.shuffle_channel_param.group)
        shape = self.bottom_shapes[0]
        if self.group <= 0:
            raise self.fail("shuffle_channel_param.group must be > 0")
        if len(shape) < 2 or shape[1] % self.group:
            raise self.fail(f"group {self.group} must divide the channels of {shape}")

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        n, c = x.shape[0], x.shape[1]
        rest = x.shape[2:]
        y = x.reshape(n, self.group, c // self.group, *rest).transpose(1, 2)
        return (y.reshape(n, c, *rest),)
