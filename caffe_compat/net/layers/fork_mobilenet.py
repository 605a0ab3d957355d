"""The MobileNet forks' layers: ``ReLU6`` and the depthwise convolutions.

- ``ReLU6`` with ``relu6_param`` (rog93/Caffe-MobileNetV2-ReLU6 README, the message of the
  Caffe-ReLU6 layer): min(max(x, 0), 6) + negative_slope * min(x, 0).
- ``DepthwiseConvolution`` (yonghenglh6/DepthwiseConvolution @2b9cf52,
  caffe/src/caffe/layers/depthwise_conv_layer.cpp) and ``ConvolutionDepthwise`` (the
  caffe-mobilenet forks' conv_dw_layer): a faster kernel for Convolution, same
  ``convolution_param``, blobs and output size (grouped by ``group``, which these nets set to
  the channel count); they compute exactly Convolution's result.
"""

from __future__ import annotations

import torch

from caffe_compat.net.layers.activations import NeuronLayer
from caffe_compat.net.layers.vision import Convolution
from caffe_compat.net.registry import register_layer


@register_layer("ReLU6")
class ReLU6(NeuronLayer):
    """y = min(max(x, 0), 6) + negative_slope * min(x, 0)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.negative_slope = float(param.relu6_param.negative_slope)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        y = torch.clamp(x, 0.0, 6.0)
        if self.negative_slope != 0.0:
            y = y + self.negative_slope * torch.clamp(x, max=0.0)
        return (y,)


@register_layer("DepthwiseConvolution", "ConvolutionDepthwise")
class DepthwiseConvolution(Convolution):
    """Convolution under a fork's type name (see the module docstring)."""
