"""The SSD detector's layers from weiliu89/caffe (branch ``ssd``, commit 4817bf8b): Permute,
Normalize, PriorBox and DetectionOutput.

Read from the fork's ``src/caffe/layers/*_layer.cpp`` and ``src/caffe/util/bbox_util.cpp``;
the arithmetic keeps the fork's float32 / float64 steps so that boxes, scores and the order of
detections are the fork's (and OpenCV's, which reimplements them). Flatten's ``axis`` /
``end_axis`` forms used by SSD deploy nets are BVLC's own (``common.Flatten``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from caffe_compat.net.fillers import constant_filler, filled
from caffe_compat.net.registry import Layer, Shape, register_layer
from caffe_compat.proto import caffe_pb2

CodeType = caffe_pb2.PriorBoxParameter


@register_layer("Permute")
class Permute(Layer):
    """Reorder the axes (weiliu89/caffe ssd@4817bf8b, permute_layer.cpp): ``order`` lists the
    new axes first; axes it leaves out follow in their own order. Backward is the inverse
    permutation (autograd)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        ndim = len(self.bottom_shapes[0])
        order = [int(o) for o in param.permute_param.order]
        if any(o >= ndim for o in order):
            raise self.fail(f"order {order} names an axis beyond the bottom's {ndim} axes")
        if len(set(order)) != len(order):
            raise self.fail(f"order {order} repeats an axis")
        self.order = order + [i for i in range(ndim) if i not in order]

    def top_shapes(self) -> list[Shape]:
        shape = self.bottom_shapes[0]
        return [tuple(shape[i] for i in self.order)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x.permute(self.order),)


@register_layer("Normalize")
class Normalize(Layer):
    """L2 normalisation then a learned scale (weiliu89/caffe ssd@4817bf8b, normalize_layer.cpp),
    as in SSD's conv4_3_norm.

    ``across_spatial``: one norm per item, sqrt(sum x^2 + eps) over C*H*W, and the bottom is
    multiplied by its reciprocal; otherwise one norm per pixel, sqrt(eps + sum_c x^2), and the
    bottom is divided by it. The scale blob is () when ``channel_shared``, else (C,); without a
    ``scale_filler`` it starts at 1. Backward (the fork has one) is autograd's.
    """

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        shape = self.bottom_shapes[0]
        if len(shape) < 2:
            raise self.fail(f"needs a bottom with at least 2 axes (N, C, ...), got shape {shape}")
        p = param.norm_param
        self.across_spatial = bool(p.across_spatial)
        self.channel_shared = bool(p.channel_shared)
        self.eps = float(np.float32(p.eps))
        filler = p.scale_filler if p.HasField("scale_filler") else constant_filler(1.0)
        self.blobs.append(filled(() if self.channel_shared else (shape[1],), filler, self.name))

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        n, c = x.shape[0], x.shape[1]
        flat = x.reshape(n, c, -1)
        squares = flat * flat
        if self.across_spatial:
            norm = torch.sqrt(squares.sum(dim=(1, 2), keepdim=True) + self.eps)
            top = flat * (1.0 / norm.double()).to(x.dtype)
        else:
            top = flat / torch.sqrt(squares.sum(dim=1, keepdim=True) + self.eps)
        scale = self.blobs[0].to(x.dtype)
        top = top * (scale if self.channel_shared else scale.reshape(1, c, 1))
        return (top.reshape(x.shape),)


def prior_boxes(param, layer_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """PriorBox's top (1, 2, H*W*num_priors*4) for a feature map and image size, computed with the
    fork's float32 / float64 steps (min sizes are truncated to int as the fork does)."""
    p = param
    f32 = np.float32
    ratios: list[float] = [1.0]
    for ar in p.aspect_ratio:
        if all(abs(ar - r) >= 1e-6 for r in ratios):
            ratios.append(float(f32(ar)))
            if p.flip:
                ratios.append(float(f32(1.0 / float(f32(ar)))))
    img_h, img_w = (p.img_h, p.img_w) if (p.HasField("img_h") or p.HasField("img_w")) else (
        (p.img_size, p.img_size) if p.HasField("img_size") else image_hw)
    layer_h, layer_w = layer_hw
    if p.HasField("step_h") or p.HasField("step_w"):
        step_h, step_w = f32(p.step_h), f32(p.step_w)
    elif p.HasField("step"):
        step_h = step_w = f32(p.step)
    else:
        step_h, step_w = f32(f32(img_h) / f32(layer_h)), f32(f32(img_w) / f32(layer_w))
    sizes: list[tuple[float, float]] = []  # (box width, box height) per prior of one cell
    for s, min_size in enumerate(p.min_size):
        m = int(min_size)
        sizes.append((float(m), float(m)))
        if len(p.max_size):
            side = float(f32(math.sqrt(m * int(p.max_size[s]))))
            sizes.append((side, side))
        for ar in ratios:
            if abs(ar - 1.0) < 1e-6:
                continue
            root = f32(np.sqrt(f32(ar)))
            sizes.append((float(f32(f32(m) * root)), float(f32(f32(m) / root))))
    widths = np.array([w for w, _ in sizes], np.float64)
    heights = np.array([h for _, h in sizes], np.float64)
    cx = (np.arange(layer_w, dtype=np.float32) + f32(p.offset)) * step_w  # float32 as the fork
    cy = (np.arange(layer_h, dtype=np.float32) + f32(p.offset)) * step_h
    cx = np.broadcast_to(cx.astype(np.float64)[None, :, None], (layer_h, layer_w, len(sizes)))
    cy = np.broadcast_to(cy.astype(np.float64)[:, None, None], (layer_h, layer_w, len(sizes)))
    boxes = np.stack([(cx - widths / 2.0) / img_w, (cy - heights / 2.0) / img_h,
                      (cx + widths / 2.0) / img_w, (cy + heights / 2.0) / img_h], axis=-1).astype(np.float32)
    if p.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    variance = list(p.variance) or [0.1]
    variances = np.broadcast_to(np.array(variance * (4 // len(variance)), np.float32), boxes.shape)
    return np.stack([boxes.reshape(-1), variances.reshape(-1)])[None]


@register_layer("PriorBox")
class PriorBox(Layer):
    """SSD's default boxes for one feature map (weiliu89/caffe ssd@4817bf8b, prior_box_layer.cpp).

    Bottom 0 is the feature map, bottom 1 the image (read for its size unless ``img_size`` /
    ``img_h``+``img_w`` are given). Per cell, per ``min_size``: the square min box, the square
    sqrt(min * max) box when ``max_size`` is given, then one box per aspect ratio other than 1
    (``flip`` adds 1/r; repeats within 1e-6 are dropped). Boxes are corners normalised by the
    image size (clipped to [0, 1] with ``clip``); channel 1 holds the ``variance`` (one value, or
    four; default 0.1). The top depends only on shapes; the fork has no backward.
    """

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.prior_box_param
        if len(self.bottom_shapes) != 2 or any(len(s) != 4 for s in self.bottom_shapes):
            raise self.fail(f"needs 2 bottoms of 4 axes (feature map, image), got {self.bottom_shapes}")
        if not p.min_size or any(m <= 0 for m in p.min_size):
            raise self.fail(f"needs positive min_size values, got {list(p.min_size)}")
        if p.max_size and (len(p.max_size) != len(p.min_size)
                           or any(hi <= lo for lo, hi in zip(p.min_size, p.max_size))):
            raise self.fail("max_size needs one value per min_size, each larger than it")
        if len(p.variance) not in (0, 1, 4) or any(v <= 0 for v in p.variance):
            raise self.fail(f"variance must be 1 or 4 positive values, got {list(p.variance)}")
        if p.HasField("img_size") and (p.HasField("img_h") or p.HasField("img_w")):
            raise self.fail("give either img_size or img_h/img_w, not both")
        if p.HasField("step") and (p.HasField("step_h") or p.HasField("step_w")):
            raise self.fail("give either step or step_h/step_w, not both")
        self.prior_param = caffe_pb2.PriorBoxParameter()
        self.prior_param.CopyFrom(p)
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.top_shapes()

    def priors(self, feature: Shape, image: Shape) -> torch.Tensor:
        """The top for bottoms of these shapes (cached per feature map and image size)."""
        key = (*feature[2:], *image[2:])
        if key not in self._cache:
            self._cache[key] = torch.from_numpy(prior_boxes(self.prior_param, feature[2:], image[2:]))
        return self._cache[key]

    def top_shapes(self) -> list[Shape]:
        return [tuple(self.priors(*self.bottom_shapes).shape)]

    def forward(self, feature: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor]:
        priors = self.priors(tuple(feature.shape), tuple(image.shape))
        return (priors.to(device=feature.device, dtype=feature.dtype),)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances: torch.Tensor, code_type: int,
                 variance_in_target: bool) -> torch.Tensor:
    """bbox_util.cpp's DecodeBBox, float32, for ``loc`` (..., P, 4) against priors (P, 4)."""
    if variance_in_target:
        variances = torch.ones_like(variances)
    px0, py0, px1, py1 = priors.unbind(-1)
    v0, v1, v2, v3 = variances.unbind(-1)
    l0, l1, l2, l3 = loc.unbind(-1)
    if code_type == CodeType.CORNER:
        out = (px0 + v0 * l0, py0 + v1 * l1, px1 + v2 * l2, py1 + v3 * l3)
    elif code_type == CodeType.CORNER_SIZE:
        pw, ph = px1 - px0, py1 - py0
        out = (px0 + v0 * l0 * pw, py0 + v1 * l1 * ph, px1 + v2 * l2 * pw, py1 + v3 * l3 * ph)
    else:  # CENTER_SIZE
        pw, ph = px1 - px0, py1 - py0
        pcx, pcy = (px0 + px1) / 2, (py0 + py1) / 2
        cx, cy = v0 * l0 * pw + pcx, v1 * l1 * ph + pcy
        w, h = torch.exp(v2 * l2) * pw, torch.exp(v3 * l3) * ph
        out = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return torch.stack(out, dim=-1)


def jaccard(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """bbox_util.cpp's JaccardOverlap of one box with each of ``others``, in float32: 0 for
    boxes that do not overlap with a positive width and height; inverted boxes have size 0."""
    ix0, iy0 = np.maximum(box[0], others[:, 0]), np.maximum(box[1], others[:, 1])
    ix1, iy1 = np.minimum(box[2], others[:, 2]), np.minimum(box[3], others[:, 3])
    iw, ih = ix1 - ix0, iy1 - iy0
    overlap = (iw > 0) & (ih > 0)
    inter = iw * ih

    def size(b: np.ndarray) -> np.ndarray:
        w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
        return np.where((w < 0) | (h < 0), np.float32(0), w * h)

    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (size(box) + size(others) - inter)
    return np.where(overlap, iou, np.float32(0)).astype(np.float32)


def nms_fast(boxes: np.ndarray, scores: np.ndarray, threshold: float, nms_threshold: float, eta: float,
             top_k: int) -> list[int]:
    """bbox_util.cpp's ApplyNMSFast: scores > threshold, stable sort by descending score (ties:
    lower index first), the first ``top_k``, then greedy NMS keeping a box whose overlap with
    every kept one is <= the (adaptive, ``eta``) threshold. Kept indices in that order."""
    candidates = np.flatnonzero(scores > np.float32(threshold))
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if top_k > -1:
        order = order[:top_k]
    kept: list[int] = []
    adaptive = np.float32(nms_threshold)
    for idx in order:
        if not kept or bool(np.all(jaccard(boxes[idx], boxes[kept]) <= adaptive)):
            kept.append(int(idx))
            if eta < 1 and adaptive > 0.5:
                adaptive = np.float32(adaptive * np.float32(eta))
    return kept


@register_layer("DetectionOutput")
class DetectionOutput(Layer):
    """SSD's decoding + per-class NMS (weiliu89/caffe ssd@4817bf8b, detection_output_layer.cpp and
    bbox_util.cpp). Bottoms: loc (N, P*L*4), conf (N, P*C) (after softmax), priors (1, 2, P*4).

    Per image and per class except ``background_label_id``: :func:`nms_fast` on the decoded boxes
    (``code_type``; shared by all classes with ``share_location``). With ``keep_top_k`` > -1 and
    more detections than that, the image keeps the ``keep_top_k`` best by descending score; the
    fork's std::sort leaves ties unspecified, here (and in the ONNX export) ties keep class then
    NMS order. The top is (1, 1, D, 7) rows [image, label, score, xmin, ymin, xmax, ymax], per
    image by class then NMS order; with no detection at all, one row [i, -1, ...] per image.
    Saving results to files and visualising are not done. The fork has no backward. ``clip``
    (OpenCV's field, set by its res10 face detector) clips the decoded boxes to [0, 1] before NMS.
    """

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.detection_output_param
        if not p.HasField("num_classes"):
            raise self.fail("detection_output_param needs num_classes")
        if len(self.bottom_shapes) != 3:
            raise self.fail(f"needs 3 bottoms (loc, conf, priors), got {len(self.bottom_shapes)}")
        nms = p.nms_param
        self.num_classes = int(p.num_classes)
        self.share_location = bool(p.share_location)
        self.num_loc_classes = 1 if self.share_location else self.num_classes
        self.background = int(p.background_label_id)
        self.code_type = int(p.code_type)
        self.variance_in_target = bool(p.variance_encoded_in_target)
        self.clip = bool(p.clip)
        self.keep_top_k = int(p.keep_top_k)
        self.threshold = float(np.float32(p.confidence_threshold)) if p.HasField("confidence_threshold") \
            else float(-np.finfo(np.float32).max)
        self.nms_threshold = float(np.float32(nms.nms_threshold))
        self.eta = float(np.float32(nms.eta))
        self.top_k = int(nms.top_k) if nms.HasField("top_k") else -1
        if self.nms_threshold < 0:
            raise self.fail(f"nms_threshold must be non-negative, got {self.nms_threshold}")
        if not 0 < self.eta <= 1:
            raise self.fail(f"eta must be in (0, 1], got {self.eta}")
        loc, conf, prior = self.bottom_shapes
        if len(prior) != 3 or prior[1] != 2 or prior[2] % 4:
            raise self.fail(f"bottom 2 must be PriorBox's (1, 2, P*4), got {prior}")
        self.num_priors = prior[2] // 4
        if math.prod(loc[1:]) != self.num_priors * self.num_loc_classes * 4:
            raise self.fail(f"loc {loc} does not hold {self.num_priors} priors x {self.num_loc_classes} x 4")
        if math.prod(conf[1:]) != self.num_priors * self.num_classes:
            raise self.fail(f"conf {conf} does not hold {self.num_priors} priors x {self.num_classes} classes")
        if loc[0] != conf[0]:
            raise self.fail(f"loc and conf have different batches ({loc[0]} vs {conf[0]})")

    def top_shapes(self) -> list[Shape]:
        return [(1, 1, 1, 7)]  # the number of detections is known only after the forward

    def decoded(self, loc: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Decoded boxes (N, L, P, 4)."""
        p = self.num_priors
        loc = loc.reshape(loc.shape[0], p, self.num_loc_classes, 4).transpose(1, 2).float()
        prior = prior.reshape(2, p, 4).float()
        boxes = decode_boxes(loc, prior[0], prior[1], self.code_type, self.variance_in_target)
        return boxes.clamp(0.0, 1.0) if self.clip else boxes

    @torch.no_grad()
    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor]:
        num = loc.shape[0]
        boxes = self.decoded(loc, prior).cpu().numpy()
        scores = conf.reshape(num, self.num_priors, self.num_classes).float().cpu().numpy()
        rows: list[list[float]] = []
        for i in range(num):
            picked: list[tuple[int, int]] = []  # (label, prior), by class then NMS order
            for c in range(self.num_classes):
                if c == self.background:
                    continue
                b = boxes[i, 0 if self.share_location else c]
                picked += [(c, k) for k in nms_fast(b, scores[i, :, c], self.threshold, self.nms_threshold,
                                                     self.eta, self.top_k)]
            if -1 < self.keep_top_k < len(picked):
                ranked = sorted(range(len(picked)), key=lambda j: -scores[i, picked[j][1], picked[j][0]])
                keep = set(ranked[: self.keep_top_k])
                picked = [pc for j, pc in enumerate(picked) if j in keep]
            for c, k in picked:
                rows.append([i, c, scores[i, k, c], *boxes[i, 0 if self.share_location else c, k]])
        if not rows:
            rows = [[i] + [-1] * 6 for i in range(num)]
        top = torch.tensor(np.array(rows, np.float32)).reshape(1, 1, len(rows), 7)
        return (top.to(device=loc.device, dtype=loc.dtype),)
