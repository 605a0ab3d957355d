"""The six update rules and ApplyUpdate's order against a plain numpy transcription of Caffe's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2
from caffe_compat.solver.updates import CaffeUpdater, make_rule

TYPES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]


def reference_step(kind, sp, weights, grads, history, lr_mults, decay_mults, rate, it):
    """Caffe's ClipGradients, Normalize, Regularize, ComputeUpdateValue and Update, one param at a time."""
    n = len(weights)
    diffs = [g.astype(np.float64).copy() for g in grads]
    if sp.clip_gradients >= 0:
        norm = math.sqrt(sum(float((d * d).sum()) for d in diffs))
        if norm > sp.clip_gradients:
            diffs = [d * (sp.clip_gradients / norm) for d in diffs]
    diffs = [d / sp.iter_size for d in diffs]
    for i in range(n):
        decay = sp.weight_decay * decay_mults[i]
        if decay:
            diffs[i] += decay * (np.sign(weights[i]) if sp.regularization_type == "L1" else weights[i])
    mom, delta = sp.momentum, sp.delta
    for i in range(n):
        lr = rate * lr_mults[i]
        g = diffs[i]
        if kind == "SGD":
            history[i] = mom * history[i] + lr * g
            upd = history[i]
        elif kind == "Nesterov":
            old = history[i].copy()
            history[i] = mom * history[i] + lr * g
            upd = (1 + mom) * history[i] - mom * old
        elif kind == "AdaGrad":
            history[i] = history[i] + g * g
            upd = lr * g / (np.sqrt(history[i]) + delta)
        elif kind == "RMSProp":
            history[i] = (1 - sp.rms_decay) * g * g + sp.rms_decay * history[i]
            upd = lr * g / (np.sqrt(history[i]) + delta)
        elif kind == "AdaDelta":
            history[i] = (1 - mom) * g * g + mom * history[i]
            step = g * np.sqrt((history[n + i] + delta) / (history[i] + delta))
            history[n + i] = (1 - mom) * step * step + mom * history[n + i]
            upd = lr * step
        else:  # Adam
            t = it + 1
            corr = math.sqrt(1 - sp.momentum2**t) / (1 - mom**t)
            history[i] = mom * history[i] + (1 - mom) * g
            history[n + i] = sp.momentum2 * history[n + i] + (1 - sp.momentum2) * g * g
            upd = lr * corr * history[i] / (np.sqrt(history[n + i]) + delta)
        weights[i] = weights[i] - upd


def solver_param(kind, **fields):
    sp = caffe_pb2.SolverParameter(type=kind, **fields)
    if kind in ("AdaGrad", "RMSProp"):
        sp.momentum = 0
    return sp


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(TYPES),
    seed=st.integers(0, 2**31 - 1),
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
    weight_decay=st.sampled_from([0.0, 0.0005, 0.01]),
    reg=st.sampled_from(["L2", "L1"]),
    iter_size=st.integers(1, 3),
    clip=st.sampled_from([-1.0, 0.5, 100.0]),
    rate=st.sampled_from([0.1, 0.01, 0.001]),
    steps=st.integers(1, 4),
)
def test_updates_match_caffe_formulas(kind, seed, momentum, weight_decay, reg, iter_size, clip, rate, steps):
    rng = np.random.default_rng(seed)
    shapes = [(3, 2, 2), (4,), (1,)]
    lr_mults, decay_mults = [1.0, 2.0, 0.0], [1.0, 0.0, 1.0]
    sp = solver_param(
        kind, momentum=momentum, weight_decay=weight_decay, regularization_type=reg,
        iter_size=iter_size, clip_gradients=clip, momentum2=0.999, delta=1e-8 if kind != "AdaDelta" else 1e-6,
    )
    if kind in ("AdaGrad", "RMSProp"):
        sp.momentum = 0
    if kind in ("AdaDelta", "Adam") and momentum == 0:
        sp.momentum = 0.9
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in weights]
    upd = CaffeUpdater(sp, params, lr_mults, decay_mults)
    ref_w = [w.astype(np.float64) for w in weights]
    ref_h = [np.zeros(s) for _ in range(upd.rule.history_sets) for s in shapes]
    for it in range(steps):
        grads = [rng.normal(size=s).astype(np.float32) for s in shapes]
        grads[2][:] = 0  # a frozen (lr_mult 0) blob gets no diff, as in Caffe
        for p, g in zip(params[:2], grads[:2]):
            p.grad = torch.from_numpy(g.copy())
        params[2].grad = None
        upd.apply(rate, it)
        reference_step(kind, sp, ref_w, grads, ref_h, lr_mults, decay_mults, rate, it)
    for p, w in zip(params, ref_w):
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=2e-5, atol=2e-6)
    for h, r in zip(upd.flat_history, ref_h):
        np.testing.assert_allclose(h.numpy(), r, rtol=2e-5, atol=2e-6)
    # lr_mult 0 never moves the weights, whatever the history does
    np.testing.assert_array_equal(params[2].detach().numpy(), weights[2])


def test_sgd_is_caffe_form_not_torch_optim():
    """Caffe folds the learning rate into the history: a rate change does not rescale old momentum."""
    sp = solver_param("SGD", momentum=0.9)
    p = torch.nn.Parameter(torch.zeros(1))
    upd = CaffeUpdater(sp, [p], [1.0], [1.0])
    p.grad = torch.ones(1)
    upd.apply(1.0, 0)  # history = 1
    p.grad = torch.ones(1)
    upd.apply(0.1, 1)  # history = 0.9 * 1 + 0.1 = 1.0 (torch.optim.SGD would give 0.1 * 1.9 = 0.19)
    assert p.item() == pytest.approx(-2.0)


def test_clip_happens_before_iter_size_and_decay():
    seen = []
    sp = solver_param("SGD", clip_gradients=1.0, iter_size=2, weight_decay=1.0)
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    upd = CaffeUpdater(sp, [p], [1.0], [1.0], on_clip=lambda n, c, s: seen.append((n, c, s)))
    p.grad = torch.tensor([6.0, 8.0])  # norm 10 -> scaled to [0.6, 0.8], /2 -> [0.3, 0.4], + w
    upd.apply(1.0, 0)
    assert seen and seen[0][0] == pytest.approx(10.0) and seen[0][2] == pytest.approx(0.1)
    np.testing.assert_allclose(p.detach().numpy(), [3 - 3.3, 4 - 4.4], rtol=1e-6)


@pytest.mark.parametrize("kind", TYPES)
def test_history_layout_matches_caffe(kind):
    params = [torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(5))]
    upd = CaffeUpdater(solver_param(kind), params, [1, 1], [1, 1])
    sets = 2 if kind in ("AdaDelta", "Adam") else 1
    assert [tuple(h.shape) for h in upd.flat_history] == [(2, 3), (5,)] * sets


def test_bad_solver_settings_are_clear():
    with pytest.raises(CaffeCompatError, match="unknown solver type 'Foo'"):
        make_rule(caffe_pb2.SolverParameter(type="Foo"), "s.prototxt")
    with pytest.raises(CaffeCompatError, match="momentum cannot be used with AdaGrad"):
        make_rule(caffe_pb2.SolverParameter(type="AdaGrad", momentum=0.9), "s.prototxt")
    with pytest.raises(CaffeCompatError, match="regularization_type 'L3'"):
        CaffeUpdater(caffe_pb2.SolverParameter(regularization_type="L3"), [], [], [])
    with pytest.raises(CaffeCompatError, match="Incorrect length of history"):
        CaffeUpdater(caffe_pb2.SolverParameter(), [torch.zeros(2)], [1], [1]).load_history([], "x.solverstate")
