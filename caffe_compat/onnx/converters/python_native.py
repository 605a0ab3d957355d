"""The native Python layers (caffe_compat.net.layers.python_native), keyed ``Python:<module>.<layer>``.

ProposalLayer becomes ONNX ops end to end: anchors are constants for the exported feature-map
size, Compress drops the small boxes, TopK (ties to the lower index, as the layer's stable sort)
keeps the pre-NMS top N, and NonMaxSuppression gets the boxes with x2 and y2 moved by +1, so
that its IoU is py_cpu_nms's +1 IoU, and minus the TopK rank as the score, so that it visits
the boxes in exactly the layer's order. R (the number of rois) stays symbolic.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from caffe_compat.onnx.converters import add_converter
from caffe_compat.onnx.emit import Emit


@add_converter("Python:spatial_dropout.SpatialDropoutLayer")
def spatial_dropout(e: Emit) -> None:
    """TEST: a Mul by 1 / (1 - p), as the layer (and ENet's original) computes at test time."""
    if e.layer.train_mask:
        raise e.fail("its param_str sets phase 'TRAIN' (random channel masks); only 'TEST' exports")
    e.node("Mul", [e.bottom(), e.const("scale", np.float32(e.layer.scale))], top=0)


@add_converter("Python:rpn.proposal_layer.ProposalLayer")
def proposal(e: Emit) -> None:
    """rois (R, 5) and scores (R, 1), batch 1 (a larger batch fails at the first Reshape)."""
    layer = e.layer
    f32 = TensorProto.FLOAT
    _, _, height, width = e.shape(0)
    e.static([2, 3], 0, why="its anchors")
    count = height * width * layer.num_anchors
    a = layer.num_anchors
    scores, deltas, im_info = (e.node("Cast", [b], to=f32) for b in e.bottoms())
    fg = e.node("Slice", [scores, e.ints("fg_start", [a]), e.ints("fg_end", [2 * a]), e.ints("fg_axis", [1])])
    fg = e.node("Reshape", [e.node("Transpose", [fg], perm=[0, 2, 3, 1]), e.ints("batch_1_only_scores", [count])])
    d = e.node("Reshape", [e.node("Transpose", [deltas], perm=[0, 2, 3, 1]),
                           e.ints("batch_1_only_deltas", [count, 4])])
    dx, dy, dw, dh = e.node("Split", [d, e.ints("four", [1, 1, 1, 1])], outputs=4, axis=1)
    widths, heights, ctr_x, ctr_y = (e.const(name, column.reshape(count, 1).astype(np.float32), np.float32)
                                     for name, column in zip(("widths", "heights", "ctr_x", "ctr_y"),
                                                             layer.geometry(height, width)))
    pred_x = e.node("Add", [e.node("Mul", [dx, widths]), ctr_x])
    pred_y = e.node("Add", [e.node("Mul", [dy, heights]), ctr_y])
    half = e.const("half", np.float32(0.5), np.float32)
    half_w = e.node("Mul", [half, e.node("Mul", [e.node("Exp", [dw]), widths])])
    half_h = e.node("Mul", [half, e.node("Mul", [e.node("Exp", [dh]), heights])])
    info = e.node("Reshape", [im_info, e.ints("batch_1_only_im_info", [3])])
    one = e.const("one", np.float32(1.0), np.float32)
    zero = e.const("zero", np.float32(0.0), np.float32)
    x_max = e.node("Sub", [e.node("Gather", [info, e.const("col_w", np.int64(1))], axis=0), one])
    y_max = e.node("Sub", [e.node("Gather", [info, e.const("col_h", np.int64(0))], axis=0), one])

    def clip(value: str, limit: str) -> str:
        return e.node("Max", [e.node("Min", [value, limit]), zero])

    x1, x2 = clip(e.node("Sub", [pred_x, half_w]), x_max), clip(e.node("Add", [pred_x, half_w]), x_max)
    y1, y2 = clip(e.node("Sub", [pred_y, half_h]), y_max), clip(e.node("Add", [pred_y, half_h]), y_max)
    boxes = e.node("Concat", [x1, y1, x2, y2], axis=1)
    least = e.node("Mul", [e.const("min_size", np.float32(layer.min_size), np.float32),
                           e.node("Gather", [info, e.const("col_scale", np.int64(2))], axis=0)])
    wide = e.node("GreaterOrEqual", [e.node("Add", [e.node("Sub", [x2, x1]), one]), least])
    tall = e.node("GreaterOrEqual", [e.node("Add", [e.node("Sub", [y2, y1]), one]), least])
    big = e.node("Reshape", [e.node("And", [wide, tall]), e.ints("flat", [-1])])
    boxes, fg = e.node("Compress", [boxes, big], axis=0), e.node("Compress", [fg, big], axis=0)

    k = e.node("Shape", [fg])
    if layer.pre_nms > 0:
        k = e.node("Min", [k, e.ints("pre_nms", [layer.pre_nms])])
    order = e.node("TopK", [fg, k], outputs=2, axis=0, largest=1, sorted=1)[1]
    boxes, fg = e.node("Gather", [boxes, order], axis=0), e.node("Gather", [fg, order], axis=0)
    nms_boxes = e.node("Add", [boxes, e.const("plus_one", np.array([0, 0, 1, 1], np.float32), np.float32)])
    nms_boxes = e.node("Unsqueeze", [nms_boxes, e.ints("image_axis", [0])])
    ones = e.node("ConstantOfShape", [k], value=_filled(1.0))
    rank = e.node("Neg", [e.node("CumSum", [ones, e.const("axis0", np.int64(0))])])  # -1, -2, ..., -k
    rank = e.node("Reshape", [rank, e.ints("nms_scores", [1, 1, -1])])
    limit = layer.post_nms if layer.post_nms > 0 else count
    selected = e.node("NonMaxSuppression", [
        nms_boxes, rank, e.const("max_boxes", np.array([limit], np.int64)),
        e.const("iou", np.array([layer.nms_thresh], np.float32), np.float32)])
    index = e.node("Reshape", [e.node("Gather", [selected, e.ints("box_column", [2])], axis=1), e.ints("rows", [-1])])
    boxes, fg = e.node("Gather", [boxes, index], axis=0), e.node("Gather", [fg, index], axis=0)
    rows = e.node("Concat", [e.node("Shape", [index]), e.ints("one_column", [1])], axis=0)
    image = e.node("ConstantOfShape", [rows], value=_filled(0.0))
    out = TensorProto.FLOAT16 if e.g.dtype == np.float16 else f32
    e.node("Cast", [e.node("Concat", [image, boxes], axis=1)], top=0, to=out)
    if layer.num_tops > 1:
        e.node("Cast", [e.node("Unsqueeze", [fg, e.ints("score_axis", [1])])], top=1, to=out)


def _filled(value: float):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.full(1, value, dtype=np.float32))
