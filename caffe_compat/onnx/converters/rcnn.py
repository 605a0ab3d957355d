"""The detection forks' region pooling (caffe_compat.net.layers.fork_rcnn): ``ROIPooling`` as
ONNX's ``MaxRoiPool`` (onnxruntime's gives Caffe's numbers: the same rounding, bin limits and
empty bins, checked in tests/test_fork_rcnn.py) and ``PSROIPooling`` as an exact composite.
The ROI count R stays symbolic: it is the batch of every later layer."""

from __future__ import annotations

import numpy as np

from caffe_compat.onnx.converters import add_converter
from caffe_compat.onnx.emit import Emit

_FLOAT = 1  # TensorProto.FLOAT


def _float32(e: Emit, x: str) -> str:
    """``x`` as float32 (the ROI arithmetic and MaxRoiPool run in float32, as the forks')."""
    return x if e.g.onnx_dtype == _FLOAT else e.node("Cast", [x], to=_FLOAT)


def _rois(e: Emit) -> str:
    return e.node("Reshape", [_float32(e, e.bottom(1)), e.ints("roi_shape", [-1, 5])])


@add_converter("ROIPooling")
def roi_pooling(e: Emit) -> None:
    layer = e.layer
    pooled = e.node("MaxRoiPool", [_float32(e, e.bottom(0)), _rois(e)],
                    pooled_shape=[layer.pooled_h, layer.pooled_w], spatial_scale=layer.spatial_scale)
    if e.g.onnx_dtype == _FLOAT:
        e.node("Identity", [pooled], top=0)
    else:
        e.node("Cast", [pooled], top=0, to=e.g.onnx_dtype)


def _round_away(e: Emit, x: str) -> str:
    """C's round (halves away from zero); ONNX's Round rounds them to even."""
    magnitude = e.node("Abs", [x])
    whole = e.node("Floor", [magnitude])
    half = e.node("GreaterOrEqual", [e.node("Sub", [magnitude, whole]), e.const("half", np.float32(0.5), np.float32)])
    rounded = e.node("Add", [whole, e.node("Cast", [half], to=_FLOAT)])
    return e.node("Mul", [e.node("Sign", [x]), rounded])


@add_converter("PSROIPooling")
def psroi_pooling(e: Emit) -> None:
    """Bin limits from the ROIs as the layer computes them, 0/1 masks per ROI and bin over W and
    H, then two Einsums: the masked sums over W (for every image, the ROI's own image chosen by a
    one-hot factor), then over H; divided by the bin area, 0 for empty bins."""
    layer = e.layer
    n, channels, h, w = e.shape()
    e.static([1, 2, 3], why="its bin masks")
    g, dim = layer.group_size, layer.output_dim
    f32 = np.float32
    rois = _rois(e)
    index = e.node("Cast", [e.node("Gather", [rois, e.ints("batch_col", [0])], axis=1)], to=7)  # (R, 1), truncated
    first = _round_away(e, e.node("Gather", [rois, e.ints("start_cols", [1, 2])], axis=1))  # (R, 2): x, y
    last = _round_away(e, e.node("Gather", [rois, e.ints("end_cols", [3, 4])], axis=1))
    scale = e.const("scale", f32(layer.spatial_scale), f32)
    start = e.node("Mul", [first, scale])
    end = e.node("Mul", [e.node("Add", [last, e.const("one", f32(1), f32)]), scale])
    extent = e.node("Max", [e.node("Sub", [end, start]), e.const("min_size", f32(0.1), f32)])
    bin_size = e.node("Unsqueeze", [e.node("Div", [extent, e.const("groups", f32(g), f32)]), e.ints("axis2", [2])])
    start = e.node("Unsqueeze", [start, e.ints("axis2b", [2])])  # (R, 2, 1)
    p = np.arange(g, dtype=f32)
    lo = e.node("Floor", [e.node("Add", [e.node("Mul", [e.const("bins", p, f32), bin_size]), start])])
    hi = e.node("Ceil", [e.node("Add", [e.node("Mul", [e.const("bins1", p + 1, f32), bin_size]), start])])
    limit = e.const("limit", np.array([[w], [h]], f32), f32)
    zero = e.const("zero", f32(0), f32)
    lo = e.node("Min", [e.node("Max", [lo, zero]), limit])  # (R, 2, g)
    hi = e.node("Min", [e.node("Max", [hi, zero]), limit])

    def axis_masks(axis: int, size: int) -> tuple[str, str]:
        """(mask (R, g, size) in the compute type, bin lengths (R, g) in float32)."""
        pick = e.ints(f"axis_{axis}", [axis])
        a = e.node("Squeeze", [e.node("Gather", [lo, pick], axis=1), e.ints(f"sq{axis}", [1])])
        b = e.node("Squeeze", [e.node("Gather", [hi, pick], axis=1), e.ints(f"sq{axis}b", [1])])
        pixel = e.const(f"pixels{axis}", np.arange(size, dtype=f32), f32)
        a3, b3 = (e.node("Unsqueeze", [t, e.ints(f"u{axis}{i}", [2])]) for i, t in enumerate((a, b)))
        inside = e.node("And", [e.node("GreaterOrEqual", [pixel, a3]), e.node("Less", [pixel, b3])])
        return e.node("Cast", [inside], to=e.g.onnx_dtype), e.node("Sub", [b, a])

    mask_w, len_w = axis_masks(0, w)
    mask_h, len_h = axis_masks(1, h)
    # one-hot of each ROI's image over the batch: (N, R, 1, 1)
    images = e.node("Range", [e.const("start0", np.int64(0), np.int64),
                              e.node("Squeeze", [e.dims(0, [0]), e.ints("sq_n", [0])]),
                              e.const("step1", np.int64(1), np.int64)])
    onehot = e.node("Equal", [e.node("Unsqueeze", [images, e.ints("u_img", [1])]),
                              e.node("Transpose", [index], perm=[1, 0])])
    onehot = e.node("Unsqueeze", [e.node("Cast", [onehot], to=e.g.onnx_dtype), e.ints("u_hot", [2, 3])])
    mask_wn = e.node("Mul", [onehot, e.node("Unsqueeze", [mask_w, e.ints("u_mw", [0])])])  # (N, R, g, W)
    grouped = e.node("Reshape", [e.bottom(0), e.ints("grouped", [0, dim, g, g, h, w])])
    along_w = e.node("Einsum", [grouped, mask_wn], equation="ncijhw,nrjw->rcijh")
    sums = e.node("Einsum", [along_w, mask_h], equation="rcijh,rih->rcij")
    area = e.node("Mul", [e.node("Unsqueeze", [len_h, e.ints("u_lh", [2])]),
                          e.node("Unsqueeze", [len_w, e.ints("u_lw", [1])])])  # (R, g, g)
    area = e.node("Unsqueeze", [area, e.ints("u_area", [1])])
    divisor = e.node("Cast", [e.node("Max", [area, e.const("one_px", f32(1), f32)])], to=e.g.onnx_dtype)
    mean = e.node("Div", [sums, divisor])
    empty = e.node("LessOrEqual", [area, zero])
    e.node("Where", [empty, e.const("zero_out", f32(0)), mean], top=0)
