"""Native versions of well-known ``type: "Python"`` layers, keyed by ``python_param.module.layer``.

WHY: real deploy nets name Python 2 modules that no Python 3 can import (ENet's
``spatial_dropout``: print statements, mixed tabs) or that need a whole repository and its
compiled extensions on ``PYTHONPATH`` (py-faster-rcnn's ``rpn.proposal_layer``: ``fast_rcnn.config``,
Cython/CUDA NMS). Registered as ``Python:<module>.<layer>``, these classes take precedence over
importing the user's module (see :func:`caffe_compat.net.registry.layer_class`), always:

- read-only commands (``inspect``, ``export-onnx``, ...) use them without importing anything,
  so such nets inspect and export to ONNX;
- commands that run a net (and pycaffe's ``caffe.Net``) use them too, where Caffe would import
  the user's module: one log line per layer kind names the native implementation the first
  time it replaces the module in a process. A user who needs their own changed copy of such a
  module registers it under the same key with ``register_layer``.
"""

from __future__ import annotations

import ast
import logging
from typing import Any, Callable

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.registry import TEST, TRAIN, Layer, Shape, register_layer
from caffe_compat.net.user_code import python_layer_name, user_code_refusal

log = logging.getLogger(__name__)
_ANNOUNCED: set[str] = set()


def announce_native(layer: Layer) -> None:
    """Log, once per process and layer kind, that the native class runs instead of the user's
    module (not in read-only commands, where no module would be imported anyway)."""
    name = python_layer_name(layer.param)
    if user_code_refusal() is None and name not in _ANNOUNCED:
        _ANNOUNCED.add(name)
        log.info("Python layer %s: running caffe-compat's native %s.%s, not the module from PYTHONPATH",
                 name, type(layer).__module__, type(layer).__name__)


def literal_dict(text: str, fail: Callable[[str], CaffeCompatError], braces_optional: bool = False) -> dict[str, Any]:
    """``param_str`` as a dict of Python literals (never eval'd). ``braces_optional``: also the
    YAML block form ``'key': value, ...`` without the braces (py-faster-rcnn's one-key strings)."""
    source = text.strip()
    if braces_optional and not source.startswith("{"):
        source = "{" + source + "}"
    try:
        value = ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise fail(f"param_str {text!r} is not a dict of literals ({type(exc).__name__})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise fail(f"param_str {text!r} is not a dict with string keys")
    return value


@register_layer("Python:spatial_dropout.SpatialDropoutLayer")
class SpatialDropout(Layer):
    """ENet's spatial dropout: whole channels dropped, read from TimoSaemann/caffe-enet @22d356c
    (python/spatial_dropout.py).

    ``param_str`` ``{'phase': 'TEST'|'TRAIN', 'p': '0.01'}`` (parsed as literals; the original
    eval's it): the phase comes from there, not from the net. TEST: top = bottom / (1 - p), the
    original scales at test time too. TRAIN: per (sample, channel) a Bernoulli(1 - p) keep mask
    (torch's generator) times 1 / (1 - p); backward is the gradient times the same mask and
    scale (the original's backward reuses the last sample's mask for every sample, a bug not
    reproduced). The batch size follows the bottom (the original fixes it at setup).
    """

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        if len(self.bottom_shapes) != 1 or len(param.top) != 1:
            raise self.fail(f"takes 1 bottom and 1 top, got {len(self.bottom_shapes)} and {len(param.top)}")
        if len(self.bottom_shapes[0]) < 2:
            raise self.fail(f"bottom {self.bottom_shapes[0]} has no channel axis")
        values = literal_dict(param.python_param.param_str, self.fail)
        if "phase" not in values or "p" not in values:
            raise self.fail(f"param_str {param.python_param.param_str!r} needs 'phase' and 'p'")
        if values["phase"] not in ("TRAIN", "TEST"):
            raise self.fail(f"param_str phase must be 'TRAIN' or 'TEST', got {values['phase']!r}")
        try:
            p = float(values["p"])
        except (TypeError, ValueError):
            raise self.fail(f"param_str p {values['p']!r} is not a number") from None
        if not 0 < p < 1:
            raise self.fail(f"param_str p must be in (0, 1), got {p}")
        self.train_mask = values["phase"] == "TRAIN"
        self.p = p
        self.scale = float(np.float32(1.0 / (1.0 - p)))  # numpy multiplies float32 data by it in float32
        announce_native(self)

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if not self.train_mask:
            return (x * self.scale,)
        keep = torch.full((x.shape[0], x.shape[1]), 1.0 - self.p, device=x.device)
        mask = torch.bernoulli(keep).to(x.dtype).reshape(*x.shape[:2], *([1] * (x.dim() - 2)))
        return (x * mask * self.scale,)


#: py-faster-rcnn's lib/fast_rcnn/config.py defaults, by phase: (RPN_PRE_NMS_TOP_N,
#: RPN_POST_NMS_TOP_N, RPN_NMS_THRESH, RPN_MIN_SIZE).
RPN_CONFIG = {TEST: (6000, 300, 0.7, 16), TRAIN: (12000, 2000, 0.7, 16)}


def generate_anchors(base_size: float, ratios: Any, scales: Any) -> np.ndarray:
    """py-faster-rcnn's generate_anchors: (A, 4) boxes, ratios outer, scales inner, around the
    (0, 0, base_size - 1, base_size - 1) window; widths rounded as numpy rounds (half to even)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    w = h = float(base_size)
    centre = 0.5 * (w - 1)
    ws = np.round(np.sqrt(w * h / ratios))
    hs = np.round(ws * ratios)
    rows = []
    for rw, rh in zip(ws, hs):
        sw, sh = rw * scales, rh * scales
        rows.append(np.stack([centre - 0.5 * (sw - 1), centre - 0.5 * (sh - 1),
                              centre + 0.5 * (sw - 1), centre + 0.5 * (sh - 1)], axis=1))
    return np.concatenate(rows, axis=0)


@register_layer("Python:rpn.proposal_layer.ProposalLayer")
class Proposal(Layer):
    """Faster R-CNN's region proposals, read from rbgirshick/py-faster-rcnn @781a917
    (lib/rpn/proposal_layer.py, generate_anchors.py, lib/fast_rcnn/bbox_transform.py,
    lib/nms/py_cpu_nms.py, lib/fast_rcnn/config.py) and soeaver/py-RFCN-priv @fec9ec1 (its
    ``ratios`` and ``base_size`` keys).

    Bottoms: fg/bg probabilities (1, 2A, H, W) (foreground the second A channels), box deltas
    (1, 4A, H, W), ``im_info`` (1, 3) = [height, width, scale]. Tops: rois (R, 5) rows
    [0, x1, y1, x2, y2] and optionally their scores (R, 1); R <= post-NMS top N, known only after
    the forward (built as Caffe's setup shapes (1, 5) and (1, 1, 1, 1)). ``param_str``:
    ``'feat_stride': 16`` or ``{'feat_stride': 16, 'scales': [...], 'ratios': [...], 'base_size': 16}``
    (the YAML flow-mapping subset these prototxts use, read as Python literals). The net's phase
    picks config.py's defaults (TEST: 6000 / 300 / 0.7 / 16; TRAIN: 12000 / 2000 / 0.7 / 16): a
    ``cfg_from_file`` override of the user's is not seen. Steps as the original: anchors at every
    (h, w) cell, rows ordered (h, w, a); deltas applied with +1 widths; clipped to the image;
    boxes narrower or lower than min_size * im_info[2] dropped; sorted by descending score, first
    pre-N kept; greedy NMS with +1 areas, a box suppressed at IoU > 0.7 (py_cpu_nms; the Cython
    cpu_nms suppresses at >=); first post-N kept. Ties in score keep the lower (h, w, a) index
    first (numpy's unstable argsort leaves them unspecified). Batch 1 only, as the original.
    No backward (nor has the original).
    """

    KNOWN = ("feat_stride", "scales", "ratios", "base_size")

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        values = literal_dict(param.python_param.param_str, self.fail, braces_optional=True)
        unknown = sorted(set(values) - set(self.KNOWN))
        if unknown:
            raise self.fail(f"param_str key(s) {', '.join(map(repr, unknown))} not known; "
                            f"known: {', '.join(self.KNOWN)}")
        if "feat_stride" not in values:
            raise self.fail(f"param_str {param.python_param.param_str!r} needs 'feat_stride'")
        try:
            self.feat_stride = float(values["feat_stride"])
            self.anchors = generate_anchors(float(values.get("base_size", 16)), values.get("ratios", (0.5, 1, 2)),
                                            values.get("scales", (8, 16, 32)))
        except (TypeError, ValueError) as exc:
            raise self.fail(f"param_str {param.python_param.param_str!r}: {exc}") from None
        if self.feat_stride <= 0 or self.anchors.ndim != 2 or not len(self.anchors):
            raise self.fail(f"param_str {param.python_param.param_str!r}: feat_stride must be positive "
                            "and scales, ratios non-empty lists of numbers")
        self.num_anchors = len(self.anchors)
        self.pre_nms, self.post_nms, self.nms_thresh, self.min_size = RPN_CONFIG[TRAIN if phase == TRAIN else TEST]
        if len(self.bottom_shapes) != 3 or len(param.top) not in (1, 2):
            raise self.fail(f"takes 3 bottoms (scores, deltas, im_info) and 1 or 2 tops, got "
                            f"{len(self.bottom_shapes)} and {len(param.top)}")
        scores, deltas, info = self.bottom_shapes
        a = self.num_anchors
        if len(scores) != 4 or scores[1] != 2 * a:
            raise self.fail(f"scores {scores} must be (1, {2 * a}, H, W) for {a} anchors")
        if tuple(deltas) != (scores[0], 4 * a, *scores[2:]):
            raise self.fail(f"deltas {deltas} must be (1, {4 * a}, {scores[2]}, {scores[3]})")
        if len(info) < 2 or int(np.prod(info[1:])) != 3:
            raise self.fail(f"im_info {info} must be (1, 3): height, width, scale")
        self.num_tops = len(param.top)
        announce_native(self)

    def top_shapes(self) -> list[Shape]:
        return [(1, 5), (1, 1, 1, 1)][: self.num_tops]

    def geometry(self, height: int, width: int) -> np.ndarray:
        """(4, H*W*A) float32 rows widths, heights, centre x, centre y of the shifted anchors in
        the original's (h, w, a) order (its bbox_transform_inv after ``astype(float32)``)."""
        shift_x, shift_y = np.meshgrid(np.arange(width) * self.feat_stride, np.arange(height) * self.feat_stride)
        shifts = np.stack([shift_x.ravel(), shift_y.ravel(), shift_x.ravel(), shift_y.ravel()], axis=1)
        boxes = (self.anchors[None, :, :] + shifts[:, None, :]).reshape(-1, 4).astype(np.float32)
        widths = boxes[:, 2] - boxes[:, 0] + np.float32(1.0)
        heights = boxes[:, 3] - boxes[:, 1] + np.float32(1.0)
        return np.stack([widths, heights, boxes[:, 0] + np.float32(0.5) * widths,
                         boxes[:, 1] + np.float32(0.5) * heights])

    def forward(self, scores: torch.Tensor, deltas: torch.Tensor, im_info: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if scores.shape[0] != 1:
            raise self.fail(f"batch 1 only, as py-faster-rcnn's layer; got {scores.shape[0]} images")
        a, (height, width) = self.num_anchors, scores.shape[2:]
        fg = scores[:, a:].float().permute(0, 2, 3, 1).reshape(-1)
        d = deltas.float().permute(0, 2, 3, 1).reshape(-1, 4)
        widths, heights, ctr_x, ctr_y = torch.from_numpy(self.geometry(height, width)).to(d.device)
        pred_x, pred_y = d[:, 0] * widths + ctr_x, d[:, 1] * heights + ctr_y
        pred_w, pred_h = torch.exp(d[:, 2]) * widths, torch.exp(d[:, 3]) * heights
        info = im_info.float().reshape(-1)[:3]
        x_max, y_max = info[1] - 1, info[0] - 1
        boxes = torch.stack([
            (pred_x - 0.5 * pred_w).minimum(x_max).clamp(min=0), (pred_y - 0.5 * pred_h).minimum(y_max).clamp(min=0),
            (pred_x + 0.5 * pred_w).minimum(x_max).clamp(min=0), (pred_y + 0.5 * pred_h).minimum(y_max).clamp(min=0)],
            dim=1)
        least = self.min_size * info[2]
        big = ((boxes[:, 2] - boxes[:, 0] + 1) >= least) & ((boxes[:, 3] - boxes[:, 1] + 1) >= least)
        boxes, fg = boxes[big], fg[big]
        order = torch.sort(fg, descending=True, stable=True).indices
        if self.pre_nms > 0:
            order = order[: self.pre_nms]
        boxes, fg = boxes[order], fg[order]
        keep = greedy_nms(boxes, self.nms_thresh, self.post_nms)
        rois = torch.cat([torch.zeros(len(keep), 1, device=boxes.device), boxes[keep]], dim=1)
        return (rois, fg[keep].unsqueeze(1))[: self.num_tops]


def greedy_nms(boxes: torch.Tensor, thresh: float, limit: int) -> torch.Tensor:
    """py_cpu_nms on boxes already in score order: +1 areas, suppress IoU > thresh; stops after
    ``limit`` kept boxes when ``limit > 0`` (the original cuts its full list there: same rows)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = torch.arange(len(boxes), device=boxes.device)
    keep = []
    while order.numel() and (limit <= 0 or len(keep) < limit):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]) + 1).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]) + 1).clamp(min=0)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thresh]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long, device=boxes.device)
