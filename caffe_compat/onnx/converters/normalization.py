"""BatchNorm (statistics divided by Caffe's scale-factor blob, in float32), Scale, Bias and MVN."""

from __future__ import annotations

import numpy as np

from caffe_compat.onnx.converters import add_converter
from caffe_compat.onnx.emit import Emit


@add_converter("BatchNorm")
def batch_norm(e: Emit) -> None:
    """TEST-phase BatchNorm as BatchNormalization with unit scale and zero bias.

    Caffe stores running *sums* (the variance of a trained net is often ~1000x the real one) and
    their scale factor; they are divided in float32 here, before any cast to float16.
    """
    layer = e.layer
    if not layer.use_global_stats:
        raise e.fail("use_global_stats: false normalises by the batch's own statistics; "
                     "deploy nets use the stored ones")
    if len(e.shape()) < 2:
        raise e.fail(f"a {len(e.shape())}-axis bottom (ONNX BatchNormalization needs N x C x ...)")
    factor = float(e.blob(2)[0])
    inverse = np.float32(0.0 if factor == 0 else 1.0 / factor)
    mean, var = e.blob(0) * inverse, e.blob(1) * inverse
    ones = np.ones_like(mean)
    e.node("BatchNormalization", [e.bottom(), e.const("scale", ones), e.const("bias", np.zeros_like(mean)),
                                  e.const("mean", mean), e.const("var", var)], top=0, epsilon=layer.eps)


def _aligned(e: Emit, operand: np.ndarray | str, operand_rank: int) -> str:
    """An operand for axes [axis, axis + rank) of bottom 0, padded with trailing 1s so ONNX's
    right-aligned broadcasting puts it where Caffe does."""
    trailing = len(e.shape()) - e.layer.axis - operand_rank
    if isinstance(operand, np.ndarray):
        return e.const("operand", operand.reshape(*operand.shape, *([1] * trailing)))
    if trailing == 0:
        return operand
    return e.node("Unsqueeze", [operand, e.ints("axes", range(operand_rank, operand_rank + trailing))])


@add_converter("Scale")
def scale(e: Emit) -> None:
    layer = e.layer
    if layer.learned_scale:
        factor = _aligned(e, e.blob(0), e.blob(0).ndim)
    else:
        factor = _aligned(e, e.bottom(1), len(e.shape(1)))
    if not layer.bias_term:
        e.node("Mul", [e.bottom(), factor], top=0)
        return
    y = e.node("Mul", [e.bottom(), factor])
    bias_blob = e.blob(len(layer.blobs) - 1)
    e.node("Add", [y, _aligned(e, bias_blob, bias_blob.ndim)], top=0)


@add_converter("Bias")
def bias(e: Emit) -> None:
    if len(e.step.bottoms) > 1:
        operand = _aligned(e, e.bottom(1), len(e.shape(1)))
    else:
        operand = _aligned(e, e.blob(0), e.blob(0).ndim)
    e.node("Add", [e.bottom(), operand], top=0)


@add_converter("MVN")
def mvn(e: Emit) -> None:
    """(x - mean) / (std + eps) over each channel (each instance with ``across_channels``), the
    variance taken of the centred values as the net's MVN layer does."""
    layer = e.layer
    axes = list(range(layer.instance_axes, len(e.shape())))
    if not axes:  # one value per group: centred, it is 0
        e.node("Sub", [e.bottom(), e.bottom()], top=0)
        return
    centred = e.node("Sub", [e.bottom(), e.reduce("ReduceMean", e.bottom(), axes)])
    if not layer.normalize_variance:
        e.node("Identity", [centred], top=0)
        return
    variance = e.reduce("ReduceMean", e.node("Mul", [centred, centred]), axes)
    std = e.node("Add", [e.node("Sqrt", [variance]), e.const("eps", np.float32(layer.eps))])
    e.node("Div", [centred, std], top=0)
