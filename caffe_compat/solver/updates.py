"""Caffe's parameter update (``SGDSolver::ApplyUpdate``) and its six solver types.

Order per iteration, as in Caffe: clip the raw accumulated diffs by their global L2 norm,
divide by ``iter_size``, add weight decay (L2 or L1, times each param's ``decay_mult``), then
turn each diff into the type's update value with ``local_rate = rate * lr_mult`` and subtract
it from the weights. Params with ``lr_mult: 0`` go through all of it too (their diff is 0):
Caffe keeps their history moving (Adam's moments see the weight decay) while the weights stay.

History blobs use Caffe's layout: one set per param for SGD/Nesterov/AdaGrad/RMSProp, two for
AdaDelta (squared gradients, then squared updates) and Adam (m, then v), all of set 0 first,
so they map one-to-one onto a .solverstate's ``history``. All math is vectorised over the
param list with ``torch._foreach_*`` so a GPU step costs a handful of kernel launches.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError

Tensors = list[torch.Tensor]

def f32(x: float) -> float:
    """Round like a C++ ``float`` (Caffe's ``Dtype``)."""
    return float(np.float32(x))


class UpdateRule:
    """One Caffe solver type: how a (regularised) diff becomes the value subtracted from the weights."""

    #: Caffe's solver type name.
    name = ""
    #: History blobs per param (Caffe's ``history_`` holds ``history_sets * num_params`` blobs).
    history_sets = 1

    def __init__(self, param, source: str) -> None:
        self.momentum = f32(param.momentum)
        self.delta = f32(param.delta)
        self.check(param, source)

    def check(self, param, source: str) -> None:
        """Reject settings Caffe rejects (it aborts; we name the file and the setting)."""

    def compute(self, diffs: Tensors, history: list[Tensors], local_rates: list[float], iteration: int) -> Tensors:
        """The update values for ``diffs`` (may reuse their storage); advances ``history``."""
        raise NotImplementedError


def axpy(ys: Tensors, alphas: Sequence[float], xs: Tensors) -> None:
    """``y += alpha * x`` for each triple (Caffe's caffe_axpy), one foreach op per distinct alpha:
    one pass over memory instead of a product then a sum."""
    groups: dict[float, tuple[Tensors, Tensors]] = {}
    for y, alpha, x in zip(ys, alphas, xs):
        group = groups.setdefault(alpha, ([], []))
        group[0].append(y)
        group[1].append(x)
    for alpha, (group_ys, group_xs) in groups.items():
        torch._foreach_add_(group_ys, group_xs, alpha=alpha)


class SGD(UpdateRule):
    """history = momentum * history + local_rate * diff; update = history."""

    name = "SGD"

    def compute(self, diffs, history, local_rates, iteration):
        (h,) = history
        torch._foreach_mul_(h, self.momentum)
        axpy(h, local_rates, diffs)
        return h


class Nesterov(UpdateRule):
    """SGD's history, then update = (1 + momentum) * history - momentum * previous history."""

    name = "Nesterov"

    def compute(self, diffs, history, local_rates, iteration):
        (h,) = history
        previous = [t.clone() for t in h]
        torch._foreach_mul_(h, self.momentum)
        axpy(h, local_rates, diffs)
        update = torch._foreach_mul(h, 1.0 + self.momentum)
        torch._foreach_add_(update, previous, alpha=-self.momentum)
        return update


class _NoMomentum(UpdateRule):
    def check(self, param, source):
        if param.momentum != 0:
            raise CaffeCompatError(f"{source}: momentum cannot be used with {self.name} (got momentum {param.momentum:g})")


class AdaGrad(_NoMomentum):
    """history += diff^2; update = local_rate * diff / (sqrt(history) + delta)."""

    name = "AdaGrad"

    def compute(self, diffs, history, local_rates, iteration):
        (h,) = history
        torch._foreach_addcmul_(h, diffs, diffs)
        denom = torch._foreach_sqrt(h)
        torch._foreach_add_(denom, self.delta)
        update = torch._foreach_div(diffs, denom)
        torch._foreach_mul_(update, local_rates)
        return update


class RMSProp(_NoMomentum):
    """history = rms_decay * history + (1 - rms_decay) * diff^2; update as AdaGrad's."""

    name = "RMSProp"

    def __init__(self, param, source):
        super().__init__(param, source)
        self.rms_decay = f32(param.rms_decay)

    def check(self, param, source):
        super().check(param, source)
        if not 0 <= param.rms_decay <= 1:
            raise CaffeCompatError(f"{source}: rms_decay must be in [0, 1] (got {param.rms_decay:g})")

    def compute(self, diffs, history, local_rates, iteration):
        (h,) = history
        torch._foreach_mul_(h, self.rms_decay)
        torch._foreach_addcmul_(h, diffs, diffs, value=1.0 - self.rms_decay)
        denom = torch._foreach_sqrt(h)
        torch._foreach_add_(denom, self.delta)
        update = torch._foreach_div(diffs, denom)
        torch._foreach_mul_(update, local_rates)
        return update


class AdaDelta(UpdateRule):
    """Zeiler's AdaDelta with Caffe's ``momentum`` as the decay and ``delta`` as epsilon."""

    name = "AdaDelta"
    history_sets = 2

    def compute(self, diffs, history, local_rates, iteration):
        grad_sq, update_sq = history
        m = self.momentum
        torch._foreach_mul_(grad_sq, m)
        torch._foreach_addcmul_(grad_sq, diffs, diffs, value=1.0 - m)
        ratio = torch._foreach_add(update_sq, self.delta)
        torch._foreach_div_(ratio, torch._foreach_add(grad_sq, self.delta))
        torch._foreach_sqrt_(ratio)
        update = torch._foreach_mul(diffs, ratio)
        torch._foreach_mul_(update_sq, m)
        torch._foreach_addcmul_(update_sq, update, update, value=1.0 - m)
        torch._foreach_mul_(update, local_rates)
        return update


class Adam(UpdateRule):
    """m, v moments with Caffe's bias correction sqrt(1 - b2^t) / (1 - b1^t), t = iter + 1."""

    name = "Adam"
    history_sets = 2

    def __init__(self, param, source):
        super().__init__(param, source)
        self.beta2 = f32(param.momentum2)

    def compute(self, diffs, history, local_rates, iteration):
        m, v = history
        b1, b2 = self.momentum, self.beta2
        t = iteration + 1
        correction = f32(np.sqrt(np.float32(1) - np.float32(b2**t)) / (np.float32(1) - np.float32(b1**t)))
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, diffs, alpha=1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, diffs, diffs, value=1.0 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, self.delta)
        update = torch._foreach_div(m, denom)
        torch._foreach_mul_(update, [f32(r * correction) for r in local_rates])
        return update


RULES: dict[str, type[UpdateRule]] = {r.name: r for r in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)}


def make_rule(param, source: str = "solver") -> UpdateRule:
    """The update rule for a SolverParameter, or a clear error naming the known types."""
    name = param.type
    if name not in RULES:
        raise CaffeCompatError(f"{source}: unknown solver type '{name}' (Caffe knows {', '.join(RULES)})")
    return RULES[name](param, source)


class CaffeUpdater:
    """Owns the history blobs and applies one Caffe update to a list of parameters.

    ``params`` are the net's learnable blobs in Caffe's order with their ``lr_mult`` and
    ``decay_mult``. Gradients come from ``param.grad`` (None counts as zero, as for a frozen blob).
    ``on_clip(norm, clip, scale)`` is told when clipping happens, for Caffe's log line.
    """

    def __init__(
        self,
        param,
        params: Sequence[torch.Tensor],
        lr_mults: Sequence[float],
        decay_mults: Sequence[float],
        source: str = "solver",
        on_clip: Callable[[float, float, float], None] | None = None,
    ) -> None:
        self.rule = make_rule(param, source)
        self.params = list(params)
        self.lr_mults = [f32(x) for x in lr_mults]
        self.decay_mults = [f32(x) for x in decay_mults]
        self.iter_size = param.iter_size
        self.clip_gradients = f32(param.clip_gradients)
        self.weight_decay = f32(param.weight_decay)
        self.regularization_type = param.regularization_type
        if self.regularization_type not in ("L1", "L2"):
            raise CaffeCompatError(
                f"{source}: unknown regularization_type '{self.regularization_type}' (Caffe knows L1, L2)"
            )
        if self.iter_size < 1:
            raise CaffeCompatError(f"{source}: iter_size must be >= 1 (got {self.iter_size})")
        self.on_clip = on_clip
        self.history: list[Tensors] = [
            [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
            for _ in range(self.rule.history_sets)
        ]
        self._select_active()

    def _select_active(self) -> None:
        """The params an update can change. One that never gets a gradient, has no weight decay
        and a zero history (BatchNorm's statistics) keeps a zero diff, a zero history and a zero
        update under every rule, so skipping it is exact and saves a pass over it per step."""
        decays = [f32(self.weight_decay * m) for m in self.decay_mults]
        self._active = [
            i for i, p in enumerate(self.params)
            if p.requires_grad or decays[i] != 0 or any(bool(h[i].any()) for h in self.history)
        ]
        self._decayed = [(k, decays[i]) for k, i in enumerate(self._active) if decays[i] != 0]

    @property
    def flat_history(self) -> Tensors:
        """History blobs in a .solverstate's order (set-major)."""
        return [h for group in self.history for h in group]

    def load_history(self, blobs: Sequence[np.ndarray], source: str) -> None:
        """Set the history from a .solverstate's blobs (count and shapes checked)."""
        flat = self.flat_history
        if len(blobs) != len(flat):
            raise CaffeCompatError(
                f"{source}: holds {len(blobs)} history blobs but this net and solver type "
                f"({self.rule.name}) need {len(flat)} (Caffe: 'Incorrect length of history blobs')"
            )
        for i, (dst, src) in enumerate(zip(flat, blobs)):
            if src.size != dst.numel():
                raise CaffeCompatError(
                    f"{source}: history blob {i} has {src.size} values, the param needs "
                    f"{tuple(dst.shape)} ({dst.numel()})"
                )
            with torch.no_grad():
                dst.copy_(torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)).reshape(dst.shape))
        self._select_active()

    @torch.no_grad()
    def apply(self, rate: float, iteration: int) -> None:
        """One ``ApplyUpdate``: clip, normalise, regularise, compute and subtract the update."""
        params = [self.params[i] for i in self._active]
        diffs = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        self._clip(diffs)
        if self.iter_size > 1:
            torch._foreach_mul_(diffs, 1.0 / self.iter_size)
        self._regularize(params, diffs)
        local_rates = [f32(rate * self.lr_mults[i]) for i in self._active]
        history = [[h[i] for i in self._active] for h in self.history]
        update = self.rule.compute(diffs, history, local_rates, iteration)
        torch._foreach_sub_(params, update)

    def _clip(self, diffs: Tensors) -> None:
        if self.clip_gradients < 0 or not diffs:
            return
        norm_t = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(diffs)))
        if norm_t.device.type != "cpu":
            # No host sync on accelerators: scale by min(1, clip / norm) on the device (x1.0 is
            # exact), at the price of Caffe's per-event log line.
            torch._foreach_mul_(diffs, torch.clamp(self.clip_gradients / norm_t, max=1.0))
            return
        norm = float(norm_t)
        if norm > self.clip_gradients:
            scale = f32(self.clip_gradients / norm)
            if self.on_clip is not None:
                self.on_clip(norm, self.clip_gradients, scale)
            torch._foreach_mul_(diffs, scale)

    def _regularize(self, params: Tensors, diffs: Tensors) -> None:
        if not self._decayed:
            return
        weights = [params[k] for k, _ in self._decayed]
        term = torch._foreach_sign(weights) if self.regularization_type == "L1" else weights
        axpy([diffs[k] for k, _ in self._decayed], [d for _, d in self._decayed], term)
