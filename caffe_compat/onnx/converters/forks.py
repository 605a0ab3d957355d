"""The forks' layers (caffe_compat.net.layers.fork_*): BN, Upsample, Axpy, ShuffleChannel,
Interp, ReLU6, the depthwise convolutions and caffe-priv's SeLu and SeLuDropout. Batch sizes
come from the tensors (dynamic batch)."""

from __future__ import annotations

import numpy as np

from caffe_compat.onnx.converters import add_converter
from caffe_compat.onnx.converters.vision import convolution
from caffe_compat.onnx.emit import Emit

add_converter("DepthwiseConvolution", "ConvolutionDepthwise")(convolution)


@add_converter("BN")
def bn(e: Emit) -> None:
    """INFERENCE: scale * x + shift. LEARN: the batch's own statistics, as the layer computes them.
    PSPNet's BN (TEST or frozen): (x - mean) * (var + eps)^-1/2 * slope + bias, as its layer."""
    layer = e.layer
    if layer.pspnet:
        _pspnet_bn(e)
        return
    scale, shift = e.const("scale", e.blob(0)), e.const("shift", e.blob(1))
    if layer.inference:
        e.node("Add", [e.node("Mul", [e.bottom(), scale]), shift], top=0)
        return
    x = e.bottom()
    mean = e.reduce("ReduceMean", x, [0, 2, 3], top=1 if layer.num_tops > 1 else None)
    square = e.reduce("ReduceMean", e.node("Mul", [x, x]), [0, 2, 3])
    variance = e.node("Sub", [square, e.node("Mul", [mean, mean])], top=2 if layer.num_tops > 2 else None)
    eps = e.const("variance_eps", np.float32(1e-9))
    std = e.node("Sqrt", [e.node("Add", [variance, eps])])
    normalised = e.node("Div", [e.node("Sub", [x, mean]), std])
    e.node("Add", [e.node("Mul", [normalised, scale]), shift], top=0)


def _pspnet_bn(e: Emit) -> None:
    layer = e.layer
    if not layer.global_stats:
        raise e.fail("PSPNet's BN exports with its moving statistics only (TEST phase or frozen: true)")
    var = e.blob(3).astype(np.float32)
    inv_std = (1.0 / np.sqrt(var + np.float32(layer.eps))).astype(np.float32)
    centred = e.node("Sub", [e.bottom(), e.const("mean", e.blob(2))])
    normalised = e.node("Mul", [centred, e.const("inv_std", inv_std)])
    e.node("Add", [e.node("Mul", [normalised, e.const("slope", e.blob(0))]), e.const("bias", e.blob(1))], top=0)


@add_converter("Upsample")
def upsample(e: Emit) -> None:
    """Mask: ScatterElements of the values into a zero (N, C, H*W) plane. Scale: nearest Resize."""
    layer = e.layer
    n, c, h, w = e.shape()
    if not layer.with_mask:
        scales = e.const("scales", np.array([1, 1, *layer.scale], np.float32), np.float32)
        e.node("Resize", [e.bottom(), "", scales], top=0, mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return
    e.static([2, 3], why="its output size")
    oh, ow = layer.out_size(h, w)
    flat = e.ints("flat", [0, 0, -1])
    values = e.node("Reshape", [e.bottom(0), flat])
    index = e.node("Cast", [e.node("Reshape", [e.bottom(1), flat])], to=7)  # int64
    plane = e.node("Concat", [e.dims(0, [0, 1]), e.ints("plane", [oh * ow])], axis=0)
    zeros = e.node("ConstantOfShape", [plane], value=_zero(e))
    scattered = e.node("ScatterElements", [zeros, index, values], axis=2)
    e.node("Reshape", [scattered, e.ints("top_shape", [0, 0, oh, ow])], top=0)


def _zero(e: Emit):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, dtype=np.float16 if e.g.onnx_dtype == 10 else np.float32))


@add_converter("Axpy")
def axpy(e: Emit) -> None:
    rank = len(e.shape(1))
    a = e.node("Reshape", [e.bottom(0), e.ints("a_shape", [0, 0] + [1] * (rank - 2))])
    e.node("Add", [e.node("Mul", [a, e.bottom(1)]), e.bottom(2)], top=0)


@add_converter("ShuffleChannel")
def shuffle_channel(e: Emit) -> None:
    group, channels = e.layer.group, e.shape()[1]
    split = e.node("Reshape", [e.bottom(), e.ints("groups", [0, group, channels // group, -1])])
    swapped = e.node("Transpose", [split], perm=[0, 2, 1, 3])
    e.node("Reshape", [swapped, e.node("Shape", [e.bottom()])], top=0)


@add_converter("Interp")
def interp(e: Emit) -> None:
    """Slice away the crop, then Resize (linear, align_corners) to Caffe's output size, or with
    caffe-priv's use_blob_size to the second bottom's height and width read at run time."""
    layer = e.layer
    n, c, h, w = e.shape()
    e.static([2, 3], why="its output size")
    x = e.bottom()
    if layer.pad_beg or layer.pad_end:
        x = e.node("Slice", [x, e.ints("starts", [-layer.pad_beg] * 2),
                             e.ints("ends", [h + layer.pad_end, w + layer.pad_end]), e.ints("axes", [2, 3])])
    if layer.use_blob_size:
        sizes = e.node("Concat", [e.dims(0, [0, 1]), e.dims(1, [2, 3])], axis=0)
        e.node("Resize", [x, "", "", sizes], top=0, mode="linear", coordinate_transformation_mode="align_corners")
        return
    out = layer.out_size(h, w)
    if out == (h + layer.pad_beg + layer.pad_end, w + layer.pad_beg + layer.pad_end):
        e.node("Identity", [x], top=0)
        return
    sizes = e.node("Concat", [e.dims(0, [0, 1]), e.ints("size", list(out))], axis=0)
    e.node("Resize", [x, "", "", sizes], top=0, mode="linear", coordinate_transformation_mode="align_corners")


@add_converter("SeLu")
def selu(e: Emit) -> None:
    """ONNX Selu is gamma * x for x > 0, gamma * alpha * (exp(x) - 1) otherwise: caffe-priv's
    lambda and alpha."""
    e.node("Selu", [e.bottom()], top=0, alpha=e.layer.alpha, gamma=e.layer.lam)


@add_converter("SeLuDropout")
def selu_dropout(e: Emit) -> None:
    """The identity: export is the TEST phase."""
    e.node("Identity", [e.bottom()], top=0)


@add_converter("ReLU6")
def relu6(e: Emit) -> None:
    slope = e.layer.negative_slope
    bounds = [e.const("min", np.float32(0.0)), e.const("max", np.float32(6.0))]
    if slope == 0.0:
        e.node("Clip", [e.bottom(), *bounds], top=0)
        return
    clipped = e.node("Clip", [e.bottom(), *bounds])
    negative = e.node("Min", [e.bottom(), e.const("zero", np.float32(0.0))])
    e.node("Add", [clipped, e.node("Mul", [negative, e.const("slope", np.float32(slope))])], top=0)
