"""Caffe's LRN (local response normalisation), both regions.

ACROSS_CHANNELS: y = x * (k + alpha/n * sum over n neighbouring channels of x^2) ^ -beta.
WITHIN_CHANNEL:  y = x * (1 + alpha/n^2 * sum over an n x n window of x^2) ^ -beta. Caffe builds
this one from Power/Pooling/Eltwise sub-layers with a hard-coded shift of 1, so ``k`` is
ignored; the zero-padded AVE window always divides by n^2.
Windows are centred and zero-padded. Computed in float32; autograd's gradient is Caffe's
analytic backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caffe_compat.net.layers.activations import NeuronLayer
from caffe_compat.net.registry import register_layer


@register_layer("LRN")
class LRN(NeuronLayer):
    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 == 0:
            raise self.fail(f"LRN only supports odd values for local_size, got {self.size}")
        if len(self.bottom_shapes[0]) != 4:
            raise self.fail(
                f"input must have 4 axes (num, channels, height, width), got shape {self.bottom_shapes[0]}"
            )
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.within_channel = p.norm_region == p.WITHIN_CHANNEL

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        xf = x.float()
        square = xf * xf
        pad = (self.size - 1) // 2
        # Explicit zero padding: Caffe allows windows wider than the blob (e.g. 5 channels of 3).
        if self.within_channel:
            window = F.avg_pool2d(F.pad(square, (pad, pad, pad, pad)), self.size, stride=1)
            scale = 1.0 + self.alpha * window
        else:
            padded = F.pad(square.unsqueeze(1), (0, 0, 0, 0, pad, pad))
            window = F.avg_pool3d(padded, (self.size, 1, 1), stride=1).squeeze(1)
            scale = self.k + self.alpha * window
        return ((xf * scale.pow(-self.beta)).to(x.dtype),)
