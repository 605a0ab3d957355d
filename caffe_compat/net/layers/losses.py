"""Caffe's loss layers (SoftmaxWithLoss, InfogainLoss, EuclideanLoss, SigmoidCrossEntropyLoss,
HingeLoss, MultinomialLogisticLoss, ContrastiveLoss) and Accuracy.

Losses return the unweighted loss as a 0-axis float32 tensor; the net multiplies it by the
top's ``loss_weight`` (default 1), so autograd gives Caffe's bottom diffs of
``loss_weight / normaliser * dloss``. Label bottoms never receive a diff (Caffe's loss layers
refuse to backpropagate to labels); EuclideanLoss is the exception and differentiates both.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from caffe_compat.net.layers.shape_ops import canonical_axis
from caffe_compat.net.registry import Layer, Shape, register_layer
from caffe_compat.proto import caffe_pb2

# log(FLT_MIN): SoftmaxWithLoss clamps the true-class probability at FLT_MIN before its log.
_LOG_FLT_MIN = math.log(float(np.finfo(np.float32).tiny))
_LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD: the floor of MultinomialLogistic/InfogainLoss
# LossParameter.NormalizationMode values as plain ints (forward must not touch protobufs under torch.compile).
_Mode = caffe_pb2.LossParameter.NormalizationMode
VALID, FULL, BATCH_SIZE, NONE = (_Mode.Value(n) for n in ("VALID", "FULL", "BATCH_SIZE", "NONE"))


class LossLayer(Layer):
    """Caffe's LossLayer: bottoms 0 and 1 with the same first dimension, a scalar loss top."""

    is_loss = True
    num_bottoms: tuple[int, ...] = (2,)  # the bottom counts Caffe accepts

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        if len(self.bottom_shapes) not in self.num_bottoms:
            counts = " or ".join(map(str, self.num_bottoms))
            raise self.fail(f"needs {counts} bottoms, got {len(self.bottom_shapes)}")
        data, label = self.bottom_shapes[:2]
        if data[:1] != label[:1]:
            raise self.fail(f"the data {data} and label {label} should have the same first dimension")

    def top_shapes(self) -> list[Shape]:
        return [()]


def _normalization(param, default: int) -> int:
    """The LossParameter normalisation mode: ``normalization`` if set, else the legacy
    ``normalize`` flag (true = VALID, false = BATCH_SIZE), else the layer's default."""
    p = param.loss_param
    if p.HasField("normalization"):
        return int(p.normalization)
    if p.HasField("normalize"):
        return VALID if p.normalize else BATCH_SIZE
    return default


def _normalizer(mode: int, outer: int, inner: int, valid: torch.Tensor) -> torch.Tensor | float:
    """Caffe's get_normalizer, clamped to >= 1 so an all-ignored batch gives 0, not NaN."""
    if mode == VALID:
        return valid.sum().clamp_min(1).float()
    if mode == FULL:
        return float(max(1, outer * inner))
    if mode == BATCH_SIZE:
        return float(max(1, outer))
    return 1.0  # NONE


def _int_labels(
    layer: Layer, label: torch.Tensor, classes: int, ignore: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The mask of non-ignored labels, the labels as indices (truncated to int like Caffe's
    static_cast<int>; ignored ones replaced by 0), and whether one is outside [0, classes).

    Caffe only DCHECKs the range and reads out of bounds. On the CPU a bad label is an error
    naming it. On a GPU that check would stall the device every iteration, so the third value
    is a device flag instead and the loss becomes NaN (the solver's NaN check then stops the
    run); it is None where the check was made on the host."""
    labels = label.detach().long()
    valid = labels != ignore if ignore is not None else torch.ones_like(labels, dtype=torch.bool)
    out_of_range = valid & ((labels < 0) | (labels >= classes))
    safe = torch.where(valid & ~out_of_range, labels, torch.zeros_like(labels))
    if labels.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(out_of_range.any()):
            value = int(labels[out_of_range][0])
            raise layer.fail(f"label {value} out of range [0, {classes})")
        return valid, safe, None
    return valid, safe, out_of_range.any()


def _nan_if(bad: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """``value``, or NaN where ``bad`` (a device flag from :func:`_int_labels`) is set."""
    return value if bad is None else torch.where(bad, torch.full_like(value, math.nan), value)


class _ClassScores:
    """A score blob seen as (outer, classes, inner) around the class ``axis``; the label blob
    must hold one label per (outer, inner) position."""

    def __init__(self, layer: Layer, axis: int) -> None:
        scores, label = layer.bottom_shapes[:2]
        self.axis = canonical_axis(layer, axis, len(scores))
        self.classes = scores[self.axis]
        positions = math.prod(scores[: self.axis]) * math.prod(scores[self.axis + 1 :])
        if positions != math.prod(label):
            raise layer.fail(
                f"number of labels ({math.prod(label)}, shape {label}) must match number of predictions "
                f"({positions} for scores {scores} split at axis {self.axis})"
            )

    def view(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.reshape(scores.shape[: self.axis].numel(), scores.shape[self.axis], -1)


class _SoftmaxLoss(LossLayer):
    """Shared by SoftmaxWithLoss and InfogainLoss: a softmax over the class axis, labels with an
    optional ``ignore_label``, Caffe's normaliser, and an optional second top with the softmax.

    Caffe floors the probabilities it takes the log of; ``log_floor`` is that floor's log. The
    floor applies to the value only: the gradient stays log_softmax's (prob - target), as in
    Caffe's hand-written backward.
    """

    log_floor: float

    def __init__(self, param, bottom_shapes, phase, axis: int, mode: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.split = _ClassScores(self, axis)
        self.mode = mode
        lp = param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self.with_prob = len(param.top) > 1

    def top_shapes(self) -> list[Shape]:
        return [(), self.bottom_shapes[0]] if self.with_prob else [()]

    def _loss(self, scores: torch.Tensor, label: torch.Tensor, per_position) -> tuple[torch.Tensor, ...]:
        """``per_position(floored log-probs (outer, classes, inner), labels (outer, inner))``
        gives each position's loss; ignored positions are dropped and the sum normalised."""
        log_prob = F.log_softmax(scores.float(), dim=self.split.axis)
        per_class = self.split.view(log_prob)
        valid, safe, bad = _int_labels(self, label.reshape(per_class.shape[0], -1), per_class.shape[1], self.ignore)
        floored = per_class + (per_class.clamp_min(self.log_floor) - per_class).detach()
        losses = per_position(floored, safe)
        loss = torch.where(valid, losses, torch.zeros_like(losses)).sum()
        loss = _nan_if(bad, loss / _normalizer(self.mode, per_class.shape[0], per_class.shape[2], valid))
        return (loss, log_prob.exp()) if self.with_prob else (loss,)


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLoss(_SoftmaxLoss):
    """Mean (per the normalisation, default VALID) of -log(max(softmax(x)[label], FLT_MIN)) over
    the labels that are not ``ignore_label``; softmax over ``softmax_param.axis``."""

    log_floor = _LOG_FLT_MIN

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase, param.softmax_param.axis, _normalization(param, VALID))

    def forward(self, scores: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._loss(scores, label, lambda log_p, labels: -log_p.gather(1, labels.unsqueeze(1)).squeeze(1))


@register_layer("InfogainLoss")
class InfogainLoss(_SoftmaxLoss):
    """-sum_l H[label, l] * log(max(softmax(x)_l, 1e-20)) over the non-ignored labels, divided
    per the normalisation (default VALID). H (classes x classes) is bottom 2 or the
    .binaryproto named by ``infogain_loss_param.source``; softmax over
    ``infogain_loss_param.axis``. The gradient is Caffe's prob * rowsum(H[label]) - H[label]."""

    num_bottoms = (2, 3)
    log_floor = math.log(_LOG_THRESHOLD)

    def __init__(self, param, bottom_shapes, phase) -> None:
        lp, ip = param.loss_param, param.infogain_loss_param
        super().__init__(param, bottom_shapes, phase, ip.axis, int(lp.normalization))
        if lp.HasField("normalize"):
            raise self.fail('loss_param.normalize is deprecated for InfogainLoss; use "normalization"')
        classes = self.split.classes
        if len(self.bottom_shapes) == 3:
            h_count = math.prod(self.bottom_shapes[2])
            infogain = torch.empty(0)
        else:
            if not ip.source:
                raise self.fail("needs the infogain matrix: infogain_loss_param.source or a third bottom")
            from caffe_compat.io.blob import read_binaryproto

            infogain = torch.from_numpy(read_binaryproto(ip.source).astype("float32"))
            h_count = infogain.numel()
        if h_count != classes * classes:
            raise self.fail(f"the infogain matrix must be {classes}x{classes}, got {h_count} values")
        self.register_buffer("infogain", infogain.reshape(-1), persistent=False)

    def forward(self, scores: torch.Tensor, label: torch.Tensor, *matrix: torch.Tensor) -> tuple[torch.Tensor, ...]:
        classes = self.split.classes
        h = (matrix[0].detach().float() if matrix else self.infogain).reshape(classes, classes)
        # H[label] per position, laid out like the scores: (outer, classes, inner).
        return self._loss(scores, label, lambda log_p, labels: -(h[labels].permute(0, 2, 1) * log_p).sum(1))


@register_layer("EuclideanLoss")
class EuclideanLoss(LossLayer):
    """sum((a - b)^2) / (2 N), N = the first dimension; both bottoms get a diff."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        a, b = self.bottom_shapes
        if math.prod(a[1:]) != math.prod(b[1:]):
            raise self.fail(f"inputs must have the same dimension, got {a} and {b}")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor]:
        diff = a.float().reshape(a.shape[0], -1) - b.float().reshape(b.shape[0], -1)
        return ((diff * diff).sum() / max(1, a.shape[0]) / 2.0,)


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(LossLayer):
    """Cross-entropy of sigmoid(x) against targets in [0, 1], summed over the non-ignored
    entries and divided per the normalisation (default BATCH_SIZE, unlike SoftmaxWithLoss)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        x, t = self.bottom_shapes
        if math.prod(x) != math.prod(t):
            raise self.fail(f"inputs must have the same count, got {x} and {t}")
        self.mode = _normalization(param, BATCH_SIZE)
        lp = param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor]:
        outer = x.shape[0]  # Caffe: outer = shape(0), inner = count(1)
        x = x.float().reshape(outer, -1)
        target = target.detach().float().reshape(outer, -1)
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore is None else target.long() != self.ignore
        per_entry = F.binary_cross_entropy_with_logits(x, target, reduction="none")
        loss = torch.where(valid, per_entry, torch.zeros_like(per_entry)).sum()
        return (loss / _normalizer(self.mode, outer, x.shape[1], valid),)


def _per_sample_labels(layer: Layer, label: torch.Tensor, num: int,
                       classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One integer label per sample (Caffe reads ``label[i]`` for sample i), and the
    out-of-range flag of :func:`_int_labels`."""
    if label.numel() != num:
        raise layer.fail(f"expects one label per sample ({num}), got a label blob of shape {tuple(label.shape)}")
    _, safe, bad = _int_labels(layer, label.reshape(num), classes, None)
    return safe, bad


@register_layer("HingeLoss")
class HingeLoss(LossLayer):
    """One-vs-all hinge: sum over classes of max(0, 1 - x_label) and max(0, 1 + x_other),
    (L1) or of their squares (L2), divided by the batch size."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.squared = param.hinge_loss_param.norm == param.hinge_loss_param.L2

    def forward(self, scores: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor]:
        num = scores.shape[0]
        x = scores.float().reshape(num, -1)
        labels, bad = _per_sample_labels(self, label.detach(), num, x.shape[1])
        sign = 1.0 - 2.0 * F.one_hot(labels, x.shape[1]).float()
        margin = F.relu(1.0 + sign * x)
        return (_nan_if(bad, (margin * margin if self.squared else margin).sum() / num),)


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLoss(LossLayer):
    """-log(max(p_label, 1e-20)) averaged over the batch, for bottoms that already hold
    probabilities; the gradient is -1 / max(p_label, 1e-20) like Caffe's, clamp included."""

    def forward(self, prob: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor]:
        num = prob.shape[0]
        p = prob.float().reshape(num, -1)
        labels, bad = _per_sample_labels(self, label.detach(), num, p.shape[1])
        picked = p.gather(1, labels.unsqueeze(1)).squeeze(1)
        floored = picked + (picked.clamp_min(_LOG_THRESHOLD) - picked).detach()
        return (_nan_if(bad, -torch.log(floored).sum() / num),)


@register_layer("ContrastiveLoss")
class ContrastiveLoss(LossLayer):
    """Siamese loss over bottoms (a, b, similar): d^2 for similar pairs, max(margin - d, 0)^2
    for dissimilar ones (``legacy_version``: max(margin - d^2, 0)), summed and divided by 2N.
    Both a and b get diffs; Caffe's backward divides by d + 1e-4, and so does ours."""

    num_bottoms = (3,)

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        a, b, similar = self.bottom_shapes
        if math.prod(a[1:]) != math.prod(b[1:]) or math.prod(similar) != a[0]:
            raise self.fail(f"needs a, b of equal size per sample and one similarity per pair; got {a}, {b}, {similar}")
        p = param.contrastive_loss_param
        self.margin, self.legacy = float(p.margin), bool(p.legacy_version)

    def forward(self, a: torch.Tensor, b: torch.Tensor, similar: torch.Tensor) -> tuple[torch.Tensor]:
        num = a.shape[0]
        diff = a.float().reshape(num, -1) - b.float().reshape(num, -1)
        dist_sq = (diff * diff).sum(1)
        if self.legacy:
            apart = F.relu(self.margin - dist_sq)
        else:
            dist = torch.sqrt(dist_sq.detach())
            gap = F.relu(self.margin - dist)
            # Value: gap^2. Gradient: Caffe's -gap / (d + 1e-4) * (a - b) per pair, via d^2.
            surrogate = -(gap / (dist + 1e-4)) * dist_sq
            apart = gap * gap + (surrogate - surrogate.detach())
        is_similar = similar.detach().reshape(num).long() != 0
        return (torch.where(is_similar, dist_sq, apart).sum() / num / 2.0,)


@register_layer("Accuracy")
class Accuracy(Layer):
    """Fraction of non-ignored labels whose score is among the ``top_k`` best. Caffe counts
    every class scoring >= the true class (the true class included), so ties count against the
    sample. An optional second top is the accuracy per class (0 for classes that do not occur).
    No backward."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        if len(self.bottom_shapes) != 2:
            raise self.fail(f"needs 2 bottoms (scores, labels), got {len(self.bottom_shapes)}")
        p = param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore = int(p.ignore_label) if p.HasField("ignore_label") else None
        self.split = _ClassScores(self, p.axis)
        if self.top_k > self.split.classes:
            raise self.fail(f"top_k ({self.top_k}) must be <= the number of classes ({self.split.classes})")
        self.per_class = len(param.top) > 1

    def top_shapes(self) -> list[Shape]:
        return [(), (self.split.classes,)] if self.per_class else [()]

    def forward(self, scores: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.split.view(scores.detach().float())
        valid, safe, bad = _int_labels(self, label.reshape(x.shape[0], -1), x.shape[1], self.ignore)
        true_score = x.gather(1, safe.unsqueeze(1))
        better = (x >= true_score).sum(1) - 1  # the true class counts itself once
        correct = (better < self.top_k) & valid
        count = valid.sum()
        accuracy = torch.where(count > 0, correct.sum() / count.clamp_min(1), torch.zeros((), device=x.device))
        accuracy = _nan_if(bad, accuracy)
        if not self.per_class:
            return (accuracy.float(),)
        classes = torch.zeros(x.shape[1], device=x.device)
        seen = classes.scatter_add(0, safe.reshape(-1), valid.reshape(-1).float())
        hits = classes.scatter_add(0, safe.reshape(-1), correct.reshape(-1).float())
        per_class = torch.where(seen > 0, hits / seen.clamp_min(1), torch.zeros_like(seen))
        return accuracy.float(), per_class
