"""Element-wise (neuron) layers: ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log,
Threshold, Clip, Swish and Dropout (the identity in TEST)."""

from __future__ import annotations

import numpy as np

from caffe_compat.onnx.converters import add_converter
from caffe_compat.onnx.emit import Emit


@add_converter("ReLU")
def relu(e: Emit) -> None:
    slope = e.layer.negative_slope
    if slope == 0.0:
        e.node("Relu", [e.bottom()], top=0)
    else:
        e.node("LeakyRelu", [e.bottom()], top=0, alpha=slope)


@add_converter("PReLU")
def prelu(e: Emit) -> None:
    """The slope (C,) broadcasts over axis 1: shape it (C, 1, ..., 1) for ONNX's trailing broadcast."""
    slope = e.blob(0).reshape(-1)
    rank = len(e.shape())
    if slope.size > 1:
        slope = slope.reshape(slope.size, *([1] * (rank - 2)))
    e.node("PRelu", [e.bottom(), e.const("slope", slope)], top=0)


@add_converter("ELU")
def elu(e: Emit) -> None:
    e.node("Elu", [e.bottom()], top=0, alpha=e.layer.alpha)


def _unary(op: str):
    def convert(e: Emit) -> None:
        e.node(op, [e.bottom()], top=0)

    convert.__doc__ = f"Caffe's element-wise layer as ONNX {op}."
    return convert


for _caffe, _onnx in (("Sigmoid", "Sigmoid"), ("TanH", "Tanh"), ("AbsVal", "Abs"), ("BNLL", "Softplus"),
                      ("Dropout", "Identity")):
    add_converter(_caffe)(_unary(_onnx))


def _affine(e: Emit, x: str, scale: float, shift: float) -> str:
    """scale * x + shift, skipping the identity parts like Caffe does."""
    if scale != 1.0:
        x = e.node("Mul", [x, e.const("scale", np.float32(scale))])
    if shift != 0.0:
        x = e.node("Add", [x, e.const("shift", np.float32(shift))])
    return x


@add_converter("Power")
def power(e: Emit) -> None:
    layer = e.layer
    if layer.constant is not None:  # power * scale == 0: Caffe ignores the input's values
        shape = e.node("Shape", [e.bottom()])
        e.node("Expand", [e.const("constant", np.float32(layer.constant)), shape], top=0)
        return
    y = _affine(e, e.bottom(), layer.scale, layer.shift)
    if layer.power != 1.0:
        e.node("Pow", [y, e.const("power", np.float32(layer.power))], top=0)
    else:
        e.node("Identity", [y], top=0)


@add_converter("Exp")
def exp(e: Emit) -> None:
    layer = e.layer
    y = e.node("Exp", [_affine(e, e.bottom(), layer.inner_scale, 0.0)])
    e.node("Mul", [y, e.const("outer_scale", np.float32(layer.outer_scale))], top=0)


@add_converter("Log")
def log(e: Emit) -> None:
    layer = e.layer
    y = e.node("Log", [_affine(e, e.bottom(), layer.scale, layer.shift)])
    e.node("Mul", [y, e.const("base_scale", np.float32(layer.base_scale))], top=0)


@add_converter("Threshold")
def threshold(e: Emit) -> None:
    above = e.node("Greater", [e.bottom(), e.const("threshold", np.float32(e.layer.threshold))])
    e.node("Cast", [above], top=0, to=e.g.onnx_dtype)


@add_converter("Clip")
def clip(e: Emit) -> None:
    bounds = [e.const("min", np.float32(e.layer.min)), e.const("max", np.float32(e.layer.max))]
    e.node("Clip", [e.bottom(), *bounds], top=0)


@add_converter("Swish")
def swish(e: Emit) -> None:
    gate = e.node("Sigmoid", [_affine(e, e.bottom(), e.layer.beta, 0.0)])
    e.node("Mul", [e.bottom(), gate], top=0)
