"""Convolution geometry beyond the fixtures: N-D, axis != 1, and the set-up errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.layers.vision import Convolution, Deconvolution
from caffe_compat.proto import caffe_pb2


def conv(text: str, shape, cls=Convolution):
    param = text_format.Parse(
        f'name: "c" type: "{cls.__name__}" bottom: "x" top: "y" convolution_param {{ {text} }}',
        caffe_pb2.LayerParameter(),
    )
    return cls(param, [tuple(shape)], 1)


def test_axis_two_folds_leading_axes_into_the_batch() -> None:
    layer = conv("num_output: 4 kernel_size: 3 axis: 2 weight_filler { type: 'gaussian' }", (2, 5, 3, 8, 8))
    assert layer.top_shapes() == [(2, 5, 4, 6, 6)]
    x = torch.randn(2, 5, 3, 8, 8)
    (y,) = layer(x)
    expected = F.conv2d(x.reshape(10, 3, 8, 8), layer.blobs[0], layer.blobs[1]).reshape(2, 5, 4, 6, 6)
    assert torch.allclose(y, expected, atol=1e-6)


def test_three_d_and_one_d() -> None:
    c3 = conv("num_output: 2 kernel_size: 3 kernel_size: 1 kernel_size: 2 stride: 2 pad: 1", (1, 3, 5, 6, 7))
    assert c3.top_shapes() == [(1, 2, 3, 4, 4)]
    assert tuple(c3(torch.zeros(1, 3, 5, 6, 7))[0].shape) == (1, 2, 3, 4, 4)
    c1 = conv("num_output: 2 kernel_size: 3 dilation: 2", (4, 3, 10))
    assert c1.top_shapes() == [(4, 2, 6)]


def test_deconvolution_output_size() -> None:
    layer = conv("num_output: 6 group: 3 kernel_size: 4 stride: 2 pad: 1", (2, 3, 5, 7), Deconvolution)
    assert tuple(layer.blobs[0].shape) == (3, 2, 4, 4)
    assert layer.top_shapes() == [(2, 6, 10, 14)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("num_output: 4 kernel_size: 3 group: 2", "group 2 must divide the input channels"),
        ("num_output: 4 kernel_h: 3", "both kernel_h and kernel_w"),
        ("num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3", "either kernel_size or kernel_h/kernel_w"),
        ("num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 3", "once per spatial axis"),
        ("num_output: 4", "kernel_size .* is required"),
        ("num_output: 4 kernel_size: 9", r"output size \(-2, -2\) for input \(6, 6\) with kernel \[9, 9\]"),
        ("kernel_size: 3", "num_output must be > 0"),
    ],
)
def test_bad_geometry_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(CaffeCompatError, match=f"layer 'c' \\(type Convolution\\): .*{message}"):
        conv(text, (1, 3, 6, 6))
