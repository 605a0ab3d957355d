"""Layers that join, cut, reshape or combine blobs: Split, Concat, Slice, Flatten, Reshape, Crop,
Tile, Eltwise, Softmax and InnerProduct.

Shapes are written so that axis 0 may be dynamic: ONNX Reshape's 0 copies the input's dim at
the same position, which is exactly Caffe's ``dim: 0`` rule and keeps the batch symbolic.
"""

from __future__ import annotations

import numpy as np

from caffe_compat.onnx.converters import add_converter
from caffe_compat.onnx.emit import Emit
from caffe_compat.proto import caffe_pb2


@add_converter("Split")
def split(e: Emit) -> None:
    """Caffe's copies of one blob: identities (ONNX tensors fan out by themselves)."""
    for i in range(len(e.step.tops)):
        e.node("Identity", [e.bottom()], top=i)


@add_converter("Concat")
def concat(e: Emit) -> None:
    e.node("Concat", e.bottoms(), top=0, axis=e.layer.axis)


@add_converter("Slice")
def slice_(e: Emit) -> None:
    sizes = [shape[e.layer.axis] for shape in e.layer.top_shapes()]
    e.node("Split", [e.bottom(), e.ints("split", sizes)], top=None, outputs=e.top_names(), axis=e.layer.axis)


@add_converter("Flatten")
def flatten(e: Emit) -> None:
    start, end = e.layer.start, e.layer.end
    shape = e.shape()
    target = [0] * start + [-1] + list(shape[end + 1:])
    e.node("Reshape", [e.bottom(), e.ints("shape", target)], top=0)


@add_converter("Reshape")
def reshape(e: Emit) -> None:
    """Caffe's dims (0 = copy the dim at that position, -1 = infer) are ONNX Reshape's, offset
    by ``axis``; the axes before it are copied (0), the ones after ``num_axes`` are fixed."""
    layer = e.layer
    bottom = e.shape()
    start = layer.axis if layer.axis >= 0 else len(bottom) + layer.axis + 1
    end = len(bottom) if layer.num_axes == -1 else start + layer.num_axes
    tail = list(bottom[end:])
    if start == 0 and tail and -1 not in layer.dims and e.g.batch:
        tail[0] = -1  # the batch axis moved into the tail: let ONNX infer it
    target = [0] * start + list(layer.dims) + tail
    e.node("Reshape", [e.bottom(), e.ints("shape", target)], top=0)


@add_converter("Crop")
def crop(e: Emit) -> None:
    data, ref = e.shape(0), e.shape(1)
    axes = list(range(e.layer.start, len(data)))
    starts = list(e.layer.offsets)
    ends = [offset + ref[axis] for offset, axis in zip(starts, axes)]
    e.node("Slice", [e.bottom(0), e.ints("starts", starts), e.ints("ends", ends), e.ints("axes", axes)], top=0)


@add_converter("Tile")
def tile(e: Emit) -> None:
    """Caffe repeats the block from ``axis`` on; ONNX Tile on that axis alone does the same."""
    repeats = [1] * len(e.shape())
    repeats[e.layer.axis] = e.layer.tiles
    e.node("Tile", [e.bottom(), e.ints("repeats", repeats)], top=0)


@add_converter("Eltwise")
def eltwise(e: Emit) -> None:
    """SUM with coefficients keeps Caffe's left-to-right order of additions."""
    layer, xs = e.layer, e.bottoms()
    if layer.op == caffe_pb2.EltwiseParameter.MAX:
        e.node("Max", xs, top=0)
        return
    if layer.op == caffe_pb2.EltwiseParameter.PROD:
        op = "Mul"
    else:
        op = "Add"
        xs = [x if c == 1.0 else e.node("Mul", [x, e.const(f"coeff{i}", np.float32(c))])
              for i, (c, x) in enumerate(zip(layer.coeff, xs))]
    y = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        y = e.node(op, [y, x], top=0 if i == len(xs) - 1 else None)


@add_converter("Softmax")
def softmax(e: Emit) -> None:
    e.node("Softmax", [e.bottom()], top=0, axis=e.layer.axis)


@add_converter("InnerProduct")
def inner_product(e: Emit) -> None:
    """axis 1: Flatten + Gemm; other axes: Reshape to (..., K) + MatMul (+ Add)."""
    layer = e.layer
    weight = e.blob(0)
    if layer.axis == 1:
        rows = e.node("Flatten", [e.bottom()], axis=1)
        inputs = [rows, e.const("weight", weight)]
        if layer.bias_term:
            inputs.append(e.const("bias", e.blob(1)))
        e.node("Gemm", inputs, top=0, transB=0 if layer.transpose else 1)
        return
    rows = e.node("Reshape", [e.bottom(), e.ints("shape", [0] * layer.axis + [layer.k])])
    product = e.const("weight", weight if layer.transpose else weight.T)
    if not layer.bias_term:
        e.node("MatMul", [rows, product], top=0)
        return
    y = e.node("MatMul", [rows, product])
    e.node("Add", [y, e.const("bias", e.blob(1))], top=0)


@add_converter("ArgMax")
def argmax(e: Emit) -> None:
    """Caffe ranks (value, index) pairs descending, so among equal values the LARGER index wins;
    ONNX TopK puts the lower index first. TopK over the reversed axis gives Caffe's order."""
    layer = e.layer
    x, axis = e.bottom(), layer.axis
    if axis is None:  # per instance: over everything but axis 0
        x, axis = e.node("Flatten", [x], axis=1), 1
    length = e.shape()[axis] if layer.axis is not None else int(np.prod(e.shape()[1:]))
    reversed_ = e.node("Slice", [x, e.ints("rev_starts", [-1]), e.ints("rev_ends", [-(2 ** 63)]),
                                 e.ints("rev_axes", [axis]), e.ints("rev_steps", [-1])])
    values, rev_index = e.node("TopK", [reversed_, e.ints("k", [layer.top_k])], outputs=2, axis=axis,
                               largest=1, sorted=1)
    index = e.node("Sub", [e.const("last", np.int64(length - 1), np.int64), rev_index])
    if layer.axis is not None:
        if layer.out_max_val:
            e.node("Identity", [values], top=0)
        else:
            e.node("Cast", [index], top=0, to=e.g.onnx_dtype)
        return
    index = e.node("Cast", [index], to=e.g.onnx_dtype)
    parts = [index, values] if layer.out_max_val else [index]
    rows = [e.node("Unsqueeze", [part, e.ints(f"axis{i}", [1])]) for i, part in enumerate(parts)]
    joined = e.node("Concat", rows, axis=1) if len(rows) > 1 else rows[0]
    top = layer.top_shapes()[0]
    e.node("Reshape", [joined, e.ints("shape", [0, *top[1:]])], top=0)
