"""Spatial layers: Convolution, Deconvolution, Pooling (Caffe's output sizes) and LRN."""

from __future__ import annotations

import numpy as np

from caffe_compat.onnx.converters import add_converter
from caffe_compat.onnx.emit import Emit
from caffe_compat.proto import caffe_pb2

MAX, AVE = caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE


def _conv_inputs(e: Emit) -> list[str]:
    layer = e.layer
    if layer.channel_axis != 1:
        raise e.fail(f"convolution over axis {layer.channel_axis} (only axis 1 maps to ONNX)")
    inputs = [e.bottom(), e.const("weight", e.blob(0))]
    if layer.bias_term:
        inputs.append(e.const("bias", e.blob(1)))
    return inputs


@add_converter("Convolution")
def convolution(e: Emit) -> None:
    layer = e.layer
    e.node("Conv", _conv_inputs(e), top=0, kernel_shape=layer.kernel, strides=layer.stride,
           pads=layer.pad * 2, dilations=layer.dilation, group=layer.group)


@add_converter("Deconvolution")
def deconvolution(e: Emit) -> None:
    """Caffe's weight (C_in, num_output / group, k...) is ConvTranspose's layout already."""
    layer = e.layer
    e.node("ConvTranspose", _conv_inputs(e), top=0, kernel_shape=layer.kernel, strides=layer.stride,
           pads=layer.pad * 2, dilations=layer.dilation, group=layer.group)


def _window_plan(size: int, kernel: int, pad: int, stride: int, out: int) -> tuple[int, np.ndarray]:
    """(end padding that makes ONNX's floor rule give Caffe's ``out``, Caffe's AVE divisors).

    The last window starts at (out - 1) * stride - pad; padding the end by what it overhangs
    the input (never negative) makes floor((size + pad + end - kernel) / stride) + 1 == out.
    Caffe divides a window by its extent clipped to [-pad, size + pad), so only windows that
    overhang past size + pad have a smaller divisor than ``kernel``.
    """
    tail = (out - 1) * stride + kernel - size - pad
    starts = np.arange(out) * stride - pad
    divisors = np.minimum(starts + kernel, size + pad) - starts
    return max(tail, 0), divisors


@add_converter("Pooling")
def pooling(e: Emit) -> None:
    layer = e.layer
    n, c, h, w = e.shape()
    if layer.method not in (MAX, AVE):
        raise e.fail("STOCHASTIC pooling has no ONNX equivalent")
    if layer.global_pooling:
        e.node("GlobalMaxPool" if layer.method == MAX else "GlobalAveragePool", [e.bottom()], top=0)
        return
    e.static([2, 3], why="its window arithmetic needs")
    kernel = list(layer.kernel)
    out = layer.top_shapes()[0][2:]  # Caffe's rounding and last-window rule
    plans = [_window_plan(size, k, p, s, o) for size, k, p, s, o in zip((h, w), kernel, layer.pad, layer.stride, out)]
    ends = [end for end, _ in plans]
    stride = list(layer.stride)
    if layer.method == MAX:
        pads = list(layer.pad) + ends
        if not layer.with_mask:
            e.node("MaxPool", [e.bottom()], top=0, kernel_shape=kernel, strides=stride, pads=pads)
            return
        # Caffe's mask is h * W + w in the unpadded plane; ONNX's index also counts n and c.
        index = e.g.unique(f"{e.name}/argmax")
        e.g.node("MaxPool", [e.bottom()], e.top(0), [e.top(0), index], kernel_shape=kernel, strides=stride,
                 pads=pads)
        plane = e.node("Mod", [index, e.const("plane", np.int64(h * w), np.int64)])
        e.node("Cast", [plane], top=1, to=e.g.onnx_dtype)
        return
    # AVE: zero-pad explicitly, sum-average by the full window, then rescale the windows
    # whose Caffe divisor is smaller (those overhanging the padded input).
    x = e.bottom()
    if any(layer.pad) or any(ends):
        pads = [0, 0, layer.pad[0], layer.pad[1], 0, 0, ends[0], ends[1]]
        x = e.node("Pad", [x, e.ints("pads", pads)])
    correction = (kernel[0] * kernel[1]) / np.outer(plans[0][1], plans[1][1])
    if np.all(correction == 1.0):
        e.node("AveragePool", [x], top=0, kernel_shape=kernel, strides=stride)
        return
    y = e.node("AveragePool", [x], kernel_shape=kernel, strides=stride)
    e.node("Mul", [y, e.const("divisor_correction", correction[None, None].astype(np.float32))], top=0)


@add_converter("LRN")
def lrn(e: Emit) -> None:
    """ACROSS_CHANNELS is ONNX LRN (same alpha / size convention, bias = k). WITHIN_CHANNEL is
    Caffe's own composition: x * (1 + alpha * avg_{size x size, zero pad}(x^2)) ^ -beta."""
    layer = e.layer
    if not layer.within_channel:
        e.node("LRN", [e.bottom()], top=0, size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.k)
        return
    pad = (layer.size - 1) // 2
    square = e.node("Mul", [e.bottom(), e.bottom()])
    padded = e.node("Pad", [square, e.ints("pads", [0, 0, pad, pad, 0, 0, pad, pad])])
    window = e.node("AveragePool", [padded], kernel_shape=[layer.size] * 2, strides=[1, 1])
    scaled = e.node("Mul", [window, e.const("alpha", np.float32(layer.alpha))])
    base = e.node("Add", [scaled, e.const("one", np.float32(1.0))])
    factor = e.node("Pow", [base, e.const("minus_beta", np.float32(-layer.beta))])
    e.node("Mul", [e.bottom(), factor], top=0)
