"""The SSD layers of weiliu89/caffe (ssd@4817bf8b): Permute, Normalize, PriorBox, DetectionOutput.

DetectionOutput becomes ONNX NonMaxSuppression plus TopK / ScatterElements / GatherND so that
onnxruntime gives the fork's detections in the fork's order at any batch. NonMaxSuppression
sorts by score with unspecified ties and applies its box limit after suppression, whereas the
fork stable-sorts, cuts to ``top_k`` and then suppresses; so the graph ranks the candidates
itself (TopK: ties to the lower index, as the fork's std::stable_sort) and hands NMS the rank
as a score: distinct, in the fork's order, 0 for the boxes the threshold, ``top_k`` or the
background class leave out.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from caffe_compat.net.layers.ssd import CodeType
from caffe_compat.onnx.converters import add_converter
from caffe_compat.onnx.emit import Emit


@add_converter("Permute")
def permute(e: Emit) -> None:
    e.node("Transpose", [e.bottom()], top=0, perm=list(e.layer.order))


@add_converter("Normalize")
def normalize(e: Emit) -> None:
    """The same float32 steps as the layer: across_spatial multiplies by 1/norm, per pixel divides."""
    layer = e.layer
    ndim = len(e.shape())
    x = e.bottom()
    squares = e.node("Mul", [x, x])
    eps = e.const("eps", np.float32(layer.eps))
    if layer.across_spatial:
        norm = e.node("Sqrt", [e.node("Add", [e.reduce("ReduceSum", squares, list(range(1, ndim))), eps])])
        top = e.node("Mul", [x, e.node("Reciprocal", [norm])])
    else:
        norm = e.node("Sqrt", [e.node("Add", [e.reduce("ReduceSum", squares, [1]), eps])])
        top = e.node("Div", [x, norm])
    scale = e.blob(0)
    if not layer.channel_shared:
        scale = scale.reshape((1, -1) + (1,) * (ndim - 2))
    e.node("Mul", [top, e.const("scale", scale)], top=0)


@add_converter("PriorBox")
def prior_box(e: Emit) -> None:
    """A constant: the priors depend only on the feature map's and the image's sizes."""
    e.node("Identity", [e.const("priors", e.layer.priors(e.shape(0), e.shape(1)).numpy())], top=0)


def _decode(e: Emit, loc: str, prior: str) -> str:
    """Decoded boxes (N, L, P, 4), the layer's :func:`decode_boxes` op for op."""
    layer = e.layer
    p, num_loc = layer.num_priors, layer.num_loc_classes
    loc = e.node("Transpose", [e.node("Reshape", [loc, e.ints("loc_shape", [-1, p, num_loc, 4])])],
                 perm=[0, 2, 1, 3])
    prior = e.node("Reshape", [prior, e.ints("prior_shape", [2, p, 4])])
    boxes, variances = (e.node("Gather", [prior, e.ints(f"row{i}", [i])], axis=0) for i in range(2))
    four = e.ints("four", [1, 1, 1, 1])
    px0, py0, px1, py1 = e.node("Split", [boxes, four], outputs=4, axis=-1)
    v0, v1, v2, v3 = e.node("Split", [variances, four], outputs=4, axis=-1)
    l0, l1, l2, l3 = e.node("Split", [loc, four], outputs=4, axis=-1)
    two = e.const("two", np.float32(2), np.float32)

    def scaled(v: str, x: str) -> str:
        return x if layer.variance_in_target else e.node("Mul", [v, x])

    if layer.code_type == CodeType.CORNER:
        out = [e.node("Add", [c, scaled(v, x)]) for c, v, x in
               ((px0, v0, l0), (py0, v1, l1), (px1, v2, l2), (py1, v3, l3))]
    elif layer.code_type == CodeType.CORNER_SIZE:
        pw, ph = e.node("Sub", [px1, px0]), e.node("Sub", [py1, py0])
        out = [e.node("Add", [c, e.node("Mul", [scaled(v, x), size])]) for c, v, x, size in
               ((px0, v0, l0, pw), (py0, v1, l1, ph), (px1, v2, l2, pw), (py1, v3, l3, ph))]
    else:  # CENTER_SIZE
        pw, ph = e.node("Sub", [px1, px0]), e.node("Sub", [py1, py0])
        pcx = e.node("Div", [e.node("Add", [px0, px1]), two])
        pcy = e.node("Div", [e.node("Add", [py0, py1]), two])
        cx = e.node("Add", [e.node("Mul", [scaled(v0, l0), pw]), pcx])
        cy = e.node("Add", [e.node("Mul", [scaled(v1, l1), ph]), pcy])
        half_w = e.node("Div", [e.node("Mul", [e.node("Exp", [scaled(v2, l2)]), pw]), two])
        half_h = e.node("Div", [e.node("Mul", [e.node("Exp", [scaled(v3, l3)]), ph]), two])
        out = [e.node("Sub", [cx, half_w]), e.node("Sub", [cy, half_h]),
               e.node("Add", [cx, half_w]), e.node("Add", [cy, half_h])]
    boxes = e.node("Concat", out, axis=-1)
    if layer.clip:
        boxes = e.node("Clip", [boxes, e.const("clip_min", np.float32(0), np.float32),
                                e.const("clip_max", np.float32(1), np.float32)])
    return boxes


def _column(e: Emit, table: str, i: int) -> str:
    """Column ``i`` of an (M, k) tensor as (M,)."""
    column = e.node("Slice", [table, e.ints(f"col{i}", [i]), e.ints(f"col{i}_end", [i + 1]), e.ints("cols", [1])])
    return e.node("Reshape", [column, e.ints("flat", [-1])])


@add_converter("DetectionOutput")
def detection_output(e: Emit) -> None:
    """Decode, rank, NonMaxSuppression per image and class, keep_top_k per image, then the rows
    [image, label, score, box] by image, class and NMS order (one [i, -1, ...] row per image
    when nothing is detected), as (1, 1, D, 7)."""
    layer = e.layer
    if layer.eta < 1 and layer.nms_threshold > 0.5:
        raise e.fail(f"adaptive NMS (eta {layer.eta} < 1) has no ONNX NonMaxSuppression form")
    f32 = TensorProto.FLOAT
    loc, conf, prior = (e.node("Cast", [b], to=f32) for b in e.bottoms())
    p, c = layer.num_priors, layer.num_classes
    boxes = _decode(e, loc, prior)  # (N, L, P, 4)
    scores = e.node("Transpose", [e.node("Reshape", [conf, e.ints("conf_shape", [-1, p, c])])], perm=[0, 2, 1])

    # The fork's candidate order as a score: P - rank for the boxes it considers, else 0.
    order = e.node("TopK", [scores, e.ints("all", [p])], outputs=2, axis=2, largest=1, sorted=1)[1]
    positions = e.node("Expand", [e.const("positions", np.arange(p, dtype=np.int64)), e.node("Shape", [scores])])
    rank = e.node("ScatterElements", [positions, order, positions], axis=2)
    wanted = e.node("Greater", [scores, e.const("threshold", np.float32(layer.threshold), np.float32)])
    not_background = np.arange(c) != layer.background
    wanted = e.node("And", [wanted, e.const("not_background", not_background.reshape(1, c, 1))])
    if layer.top_k > -1:
        wanted = e.node("And", [wanted, e.node("Less", [rank, e.const("top_k", np.int64(layer.top_k))])])
    key = e.node("Cast", [e.node("Sub", [e.const("count", np.int64(p)), rank])], to=f32)
    key = e.node("Where", [wanted, key, e.const("zero", np.float32(0), np.float32)])

    # NMS boxes: an inverted box has size 0 in the fork (it never suppresses nor is suppressed):
    # collapse it so that NonMaxSuppression gives it area 0 too.
    x0, y0, x1, y1 = e.node("Split", [boxes, e.ints("four_cols", [1, 1, 1, 1])], outputs=4, axis=-1)
    nms_boxes = e.node("Concat", [x0, y0, e.node("Max", [x1, x0]), e.node("Max", [y1, y0])], axis=-1)
    nms_boxes = e.node("Reshape", [nms_boxes, e.ints("nms_boxes_shape", [-1, p, 4])])
    if not layer.share_location:  # every (image, class) its own NMS batch
        key = e.node("Reshape", [key, e.ints("key_shape", [-1, 1, p])])
    selected = e.node("NonMaxSuppression", [
        nms_boxes, key, e.const("max_boxes", np.array([p], np.int64)),
        # NonMaxSuppression takes thresholds in [0, 1]; above 1 the fork suppresses nothing either
        e.const("iou", np.array([min(layer.nms_threshold, 1.0)], np.float32), np.float32),
        e.const("above", np.array([0], np.float32), np.float32)])
    image, label, index = (_column(e, selected, i) for i in range(3))
    if not layer.share_location:
        classes = e.const("classes", np.int64(c))
        image, label = e.node("Div", [image, classes]), e.node("Mod", [image, classes])
    unsq = e.ints("unsq", [1])
    at = e.node("Concat", [e.node("Unsqueeze", [t, unsq]) for t in (image, label, index)], axis=1)
    score = e.node("GatherND", [scores, at])
    loc_at = at if not layer.share_location else e.node("Concat", [
        e.node("Unsqueeze", [t, unsq]) for t in (image, e.node("Mul", [label, e.const("no_class", np.int64(0))]),
                                                 index)], axis=1)
    box = e.node("GatherND", [boxes, loc_at])
    rows = e.node("Concat", [e.node("Unsqueeze", [e.node("Cast", [image], to=f32), unsq]),
                             e.node("Unsqueeze", [e.node("Cast", [label], to=f32), unsq]),
                             e.node("Unsqueeze", [score, unsq]), box], axis=1)
    batch = e.node("Gather", [e.node("Shape", [loc]), e.ints("batch_axis", [0])], axis=0)  # (1,)
    zero, one = e.const("i0", np.int64(0)), e.const("i1", np.int64(1))
    images = e.node("Range", [zero, e.node("Squeeze", [batch, e.ints("sq", [0])]), one])
    found = e.node("Shape", [score])  # (M,)
    if layer.keep_top_k > -1:
        rows, found = _keep_top_k(e, rows, image, score, found, images, layer.keep_top_k)
    # No detection in the whole batch: one row [i, -1, -1, -1, -1, -1, -1] per image.
    fallback = e.node("Concat", [
        e.node("Unsqueeze", [e.node("Cast", [images], to=f32), unsq]),
        e.node("Expand", [e.const("minus_ones", np.full((1, 6), -1, np.float32), np.float32),
                          e.node("Concat", [batch, e.ints("six", [6])], axis=0)])], axis=1)
    empty = e.node("Cast", [e.node("Equal", [found, e.ints("none", [0])])], to=TensorProto.INT64)
    end = e.node("Add", [found, e.node("Mul", [empty, batch])])
    table = e.node("Slice", [e.node("Concat", [rows, fallback], axis=0), e.ints("start", [0]), end,
                             e.ints("rows_axis", [0])])
    out = e.node("Reshape", [table, e.ints("top_shape", [1, 1, -1, 7])])
    e.node("Cast", [out], top=0, to=TensorProto.FLOAT16 if e.g.dtype == np.float16 else f32)


def _keep_top_k(e: Emit, rows: str, image: str, score: str, found: str, images: str, keep: int) \
        -> tuple[str, str]:
    """Per image, the ``keep`` best rows by descending score (ties: the earlier row), kept in
    their own order. Two stable TopK sorts give the rows by (image, score); a row's rank in its
    image is its position minus the number of rows of the images before it."""
    by_score = e.node("TopK", [score, found], outputs=2, axis=0, largest=1, sorted=1)[1]
    image_f = e.node("Cast", [e.node("Gather", [image, by_score], axis=0)], to=TensorProto.FLOAT)
    by_image = e.node("TopK", [image_f, found], outputs=2, axis=0, largest=0, sorted=1)[1]
    order = e.node("Gather", [by_score, by_image], axis=0)
    sorted_image = e.node("Gather", [image, order], axis=0)
    member = e.node("Equal", [e.node("Unsqueeze", [sorted_image, e.ints("u1", [1])]),
                              e.node("Unsqueeze", [images, e.ints("u0", [0])])])
    counts = e.node("ReduceSum", [e.node("Cast", [member], to=TensorProto.INT64), e.ints("rows0", [0])], keepdims=0)
    starts = e.node("CumSum", [counts, e.const("axis0", np.int64(0))], exclusive=1)
    positions = e.node("Range", [e.const("p0", np.int64(0)), e.node("Squeeze", [found, e.ints("sq1", [0])]),
                                 e.const("p1", np.int64(1))])
    rank = e.node("Sub", [positions, e.node("Gather", [starts, sorted_image], axis=0)])
    kept_sorted = e.node("Cast", [e.node("Less", [rank, e.const("keep", np.int64(keep))])], to=TensorProto.INT64)
    kept = e.node("ScatterElements", [e.node("Mul", [positions, e.const("k00", np.int64(0))]), order, kept_sorted],
                  axis=0)
    kept = e.node("Cast", [kept], to=TensorProto.BOOL)
    rows = e.node("Compress", [rows, kept], axis=0)
    return rows, e.node("Gather", [e.node("Shape", [rows]), e.ints("m0", [0])], axis=0)
