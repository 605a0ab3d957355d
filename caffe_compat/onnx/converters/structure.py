"""Layers that join, cut, reshape or combine blobs: Split, Concat, Slice, Flatten, Reshape, Crop,
Tile, Eltwise, Softmax, Reduction, BatchReindex, Embed, Parameter, InnerProduct and ArgMax.

Sizes that follow the batch in a dynamic export (``Emit.dynamic_axes``) are read from the
tensors at run time, so a Slice or Crop on axis 0 keeps Caffe's reshape semantics at any batch;
elsewhere ONNX Reshape's 0 copies the input's dim at the same position, which is exactly
Caffe's ``dim: 0`` rule.
"""

from __future__ import annotations

import numpy as np
import onnx

from caffe_compat.onnx.converters import add_converter
from caffe_compat.onnx.emit import Emit
from caffe_compat.proto import caffe_pb2


@add_converter("Split")
def split(e: Emit) -> None:
    """Caffe's copies of one blob are plain edges (ONNX tensors fan out by themselves); a copy
    that is itself a graph output gets an Identity carrying its name."""
    for i, blob in enumerate(e.step.tops):
        if blob in e.g.outputs:
            e.node("Identity", [e.bottom()], top=i)
        else:
            e.alias(i, e.bottom())


@add_converter("Concat")
def concat(e: Emit) -> None:
    e.node("Concat", e.bottoms(), top=0, axis=e.layer.axis)


@add_converter("Slice")
def slice_(e: Emit) -> None:
    """Fixed sizes become a Split; on an axis that follows the batch, Caffe's rule is kept at
    run time: the slice points stay where they are and the last top takes the rest, or the axis
    is cut into equal parts when no slice point is given."""
    axis = e.layer.axis
    if axis not in e.dynamic_axes():
        sizes = [shape[axis] for shape in e.layer.top_shapes()]
        e.node("Split", [e.bottom(), e.ints("split", sizes)], top=None, outputs=e.top_names(), axis=axis)
        return
    count = len(e.step.tops)
    points = list(e.layer.points)
    if points:
        starts = [e.ints(f"start{i}", [p]) for i, p in enumerate([0] + points)]
        ends = [e.ints(f"end{i}", [p]) for i, p in enumerate(points)] + [e.ints("end_all", [2 ** 62])]
    else:
        part = e.node("Div", [e.dims(0, [axis]), e.ints("parts", [count])])
        bounds = [e.node("Mul", [part, e.ints(f"k{i}", [i])]) for i in range(count + 1)]
        starts, ends = bounds[:-1], bounds[1:]
    for i in range(count):
        e.node("Slice", [e.bottom(), starts[i], ends[i], e.ints(f"axis{i}", [axis])], top=i)


def _target_shape(e: Emit, head: int, middle: list[int], tail_from: int) -> str:
    """A Reshape target: the bottom's axes before ``head`` (0 = copy), ``middle``, then the bottom's
    axes from ``tail_from`` on, read from the tensor when one of them follows the batch."""
    shape = e.shape()
    tail = list(shape[tail_from:])
    moving = e.dynamic_axes() & set(range(tail_from, len(shape)))
    if not moving:
        return e.ints("shape", [0] * head + middle + tail)
    parts = [e.ints("head", [0] * head + middle), e.dims(0, list(range(tail_from, len(shape))))]
    return e.node("Concat", parts, axis=0)


@add_converter("Flatten")
def flatten(e: Emit) -> None:
    e.node("Reshape", [e.bottom(), _target_shape(e, e.layer.start, [-1], e.layer.end + 1)], top=0)


@add_converter("Reshape")
def reshape(e: Emit) -> None:
    """Caffe's dims (0 = copy the dim at that position, -1 = infer) are ONNX Reshape's, offset
    by ``axis``; the axes before it are copied (0), the ones after ``num_axes`` kept."""
    layer = e.layer
    bottom = e.shape()
    start = layer.axis if layer.axis >= 0 else len(bottom) + layer.axis + 1
    end = len(bottom) if layer.num_axes == -1 else start + layer.num_axes
    e.node("Reshape", [e.bottom(), _target_shape(e, start, list(layer.dims), end)], top=0)


@add_converter("Crop")
def crop(e: Emit) -> None:
    """Every axis from ``axis`` on is cut to the reference's size at its offset; a reference size
    that follows the batch is read from the reference tensor at run time."""
    data, ref = e.shape(0), e.shape(1)
    axes = list(range(e.layer.start, len(data)))
    starts = list(e.layer.offsets)
    if e.dynamic_axes(1) & set(axes):
        ends = e.node("Add", [e.dims(1, axes), e.ints("offsets", starts)])
    else:
        ends = e.ints("ends", [offset + ref[axis] for offset, axis in zip(starts, axes)])
    e.node("Slice", [e.bottom(0), e.ints("starts", starts), ends, e.ints("axes", axes)], top=0)


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


@add_converter("Reduction")
def reduction(e: Emit) -> None:
    """SUM / ASUM / SUMSQ / MEAN over every axis from ``axis`` on (flattened into one), times coeff."""
    layer = e.layer
    rows = e.node("Reshape", [e.bottom(), e.ints("rows", [0] * layer.axis + [-1])])
    op = caffe_pb2.ReductionParameter
    if layer.op == op.ASUM:
        rows = e.node("Abs", [rows])
    elif layer.op == op.SUMSQ:
        rows = e.node("Mul", [rows, rows])
    kind = "ReduceMean" if layer.op == op.MEAN else "ReduceSum"
    if layer.coeff == 1.0:
        e.reduce(kind, rows, [layer.axis], keepdims=0, top=0)
        return
    total = e.reduce(kind, rows, [layer.axis], keepdims=0)
    e.node("Mul", [total, e.const("coeff", np.float32(layer.coeff))], top=0)


@add_converter("BatchReindex")
def batch_reindex(e: Emit) -> None:
    """top[i] = bottom[index[i]]: a Gather on axis 0 (Caffe truncates the float indices)."""
    index = e.node("Cast", [e.bottom(1)], to=onnx.TensorProto.INT64)
    e.node("Gather", [e.bottom(0), index], top=0, axis=0)


@add_converter("Embed")
def embed(e: Emit) -> None:
    """top[..., :] = weight[int(x)] (+ bias): a Gather of the (input_dim, num_output) table."""
    index = e.node("Cast", [e.bottom()], to=onnx.TensorProto.INT64)
    table = e.const("weight", e.blob(0))
    if len(e.layer.blobs) == 1:
        e.node("Gather", [table, index], top=0, axis=0)
        return
    rows = e.node("Gather", [table, index], axis=0)
    e.node("Add", [rows, e.const("bias", e.blob(1))], top=0)


@add_converter("Parameter")
def parameter(e: Emit) -> None:
    """The learned blob itself is the top."""
    e.node("Identity", [e.const("value", e.blob(0))], top=0)


@add_converter("InnerProduct")
def inner_product(e: Emit) -> None:
    """axis 1: Flatten + Gemm; other axes: Reshape to (..., K) + MatMul (+ Add)."""
    layer = e.layer
    e.static(range(layer.axis, len(e.shape())), why="its weights need")
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
    e.static(range(1, len(e.shape())) if axis is None else [axis], why="its index arithmetic needs")
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
