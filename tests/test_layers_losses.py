"""Loss layers and Accuracy: Caffe's normalisers, ignore_label, clamps, tie rule and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layers_util import make_layer, run

from caffe_compat.errors import CaffeCompatError

IGNORE = 255


def _softmax_loss_reference(scores: np.ndarray, label: np.ndarray, mode: str) -> tuple[float, np.ndarray]:
    """Caffe's SoftmaxWithLoss over axis 1 of (N, C, H, W): loss and bottom diff (loss_weight 1)."""
    s = scores.astype(np.float64)
    prob = np.exp(s - s.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    n, c = s.shape[:2]
    lab = label.reshape(n, -1).astype(int)
    p = prob.reshape(n, c, -1)
    valid = lab != IGNORE
    picked = np.take_along_axis(p, np.where(valid, lab, 0)[:, None], 1)[:, 0]
    loss = -(np.log(np.maximum(picked, np.finfo(np.float32).tiny)) * valid).sum()
    inner = p.shape[2]
    normalizer = {"VALID": valid.sum(), "FULL": n * inner, "BATCH_SIZE": n, "NONE": 1}[mode]
    normalizer = max(1, normalizer)
    diff = p.copy()
    for i in range(n):
        for j in range(inner):
            if valid[i, j]:
                diff[i, lab[i, j], j] -= 1
            else:
                diff[i, :, j] = 0
    return loss / normalizer, (diff / normalizer).reshape(s.shape)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(["VALID", "FULL", "BATCH_SIZE", "NONE"]),
    ignored=st.floats(0, 1),
)
def test_softmax_with_loss_normalisations(seed, mode, ignored):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((2, 4, 3, 3)).astype(np.float32) * 3
    label = rng.integers(0, 4, (2, 1, 3, 3)).astype(np.float32)
    label[rng.random(label.shape) < ignored] = IGNORE
    layer = make_layer(
        f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: {IGNORE} normalization: {mode} }}', scores.shape, label.shape
    )
    x = torch.tensor(scores, requires_grad=True)
    lab = torch.tensor(label, requires_grad=True)
    (loss,) = run(layer, x, lab)
    loss.backward()
    ref_loss, ref_diff = _softmax_loss_reference(scores, label, mode)
    assert loss.dtype == torch.float32
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), ref_diff, rtol=1e-4, atol=1e-6)
    assert lab.grad is None  # Caffe never backpropagates to labels


@pytest.mark.parametrize("flag, expected", [("true", "VALID"), ("false", "BATCH_SIZE")])
def test_softmax_legacy_normalize_flag(flag, expected):
    scores = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    label = np.array([0, 1, IGNORE, 2, 2, IGNORE, IGNORE, 0], np.float32).reshape(2, 1, 2, 2)
    layer = make_layer(
        f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: {IGNORE} normalize: {flag} }}', scores.shape, label.shape
    )
    (loss,) = run(layer, torch.tensor(scores), torch.tensor(label))
    np.testing.assert_allclose(loss.item(), _softmax_loss_reference(scores, label, expected)[0], rtol=1e-5)


def test_softmax_loss_clamps_at_flt_min_but_keeps_the_gradient():
    x = torch.tensor([[0.0, 200.0]], requires_grad=True)
    layer = make_layer('type: "SoftmaxWithLoss"', (1, 2), (1,))
    (loss,) = run(layer, x, torch.tensor([0.0]))
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(np.finfo(np.float32).tiny), rel=1e-6)  # 87.3365
    torch.testing.assert_close(x.grad, torch.tensor([[-1.0, 1.0]]))  # prob - onehot, as in Caffe


def test_softmax_loss_all_ignored_is_zero_and_axis_and_prob_top():
    layer = make_layer(f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: {IGNORE} }}', (2, 3), (2,))
    (loss,) = run(layer, torch.randn(2, 3), torch.tensor([IGNORE, IGNORE], dtype=torch.float32))
    assert loss.item() == 0.0
    # axis 2 of (2, 3, 4): 4 classes, 6 labels; a second top is the softmax.
    layer = make_layer('type: "SoftmaxWithLoss" top: "loss" top: "prob" softmax_param { axis: 2 }', (2, 3, 4), (2, 3))
    x = torch.randn(2, 3, 4)
    label = torch.tensor([[0, 1, 2], [3, 0, 1]], dtype=torch.float32)
    loss, prob = run(layer, x, label)
    torch.testing.assert_close(prob, torch.softmax(x, 2))
    expected = -torch.log_softmax(x, 2).gather(2, label.long()[..., None]).mean()
    torch.testing.assert_close(loss, expected)


def test_softmax_loss_errors():
    with pytest.raises(CaffeCompatError, match="number of labels .* must match"):
        make_layer('type: "SoftmaxWithLoss"', (2, 3, 4), (2, 3))
    with pytest.raises(CaffeCompatError, match="same first dimension"):
        make_layer('type: "SoftmaxWithLoss"', (2, 3), (3,))
    layer = make_layer('type: "SoftmaxWithLoss"', (2, 3), (2,))
    with pytest.raises(CaffeCompatError, match="label 3 out of range"):
        layer(torch.randn(2, 3), torch.tensor([0.0, 3.0]))


def test_euclidean_loss_differentiates_both_bottoms():
    a = torch.randn(4, 3, 2, requires_grad=True)
    b = torch.randn(4, 6, requires_grad=True)
    (loss,) = run(make_layer('type: "EuclideanLoss"', (4, 3, 2), (4, 6)), a, b)
    loss.backward()
    diff = a.detach().reshape(4, 6) - b.detach()
    torch.testing.assert_close(loss, (diff**2).sum() / 8)
    torch.testing.assert_close(a.grad.reshape(4, 6), diff / 4)
    torch.testing.assert_close(b.grad, -diff / 4)
    with pytest.raises(CaffeCompatError, match="same dimension"):
        make_layer('type: "EuclideanLoss"', (4, 3), (4, 4))


@pytest.mark.parametrize(
    "loss_param, normalizer, ignoring",
    [
        ("", 4, False),  # default BATCH_SIZE, not VALID
        ("ignore_label: -1", 4, True),
        ("normalization: VALID ignore_label: -1", 17, True),  # 20 targets, 3 ignored
        ("normalize: true", 20, False),  # legacy flag: VALID, nothing ignored
    ],
)
def test_sigmoid_cross_entropy(loss_param, normalizer, ignoring):
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.standard_normal((4, 5)).astype(np.float32) * 4, requires_grad=True)
    t = torch.tensor(rng.random((4, 5)).astype(np.float32))
    t.view(-1)[:3] = -1
    layer = make_layer(f'type: "SigmoidCrossEntropyLoss" loss_param {{ {loss_param} }}', (4, 5), (4, 5))
    (loss,) = run(layer, x, t)
    loss.backward()
    x64, t64 = x.detach().double(), t.double()
    valid = (t64 != -1).double() if ignoring else torch.ones_like(t64)
    per_entry = torch.clamp(x64, min=0) - x64 * t64 + torch.log1p(torch.exp(-x64.abs()))
    np.testing.assert_allclose(loss.item(), (per_entry * valid).sum().item() / normalizer, rtol=1e-5)
    expected_diff = (torch.sigmoid(x64) - t64) * valid / normalizer
    np.testing.assert_allclose(x.grad.numpy(), expected_diff.numpy(), rtol=1e-4, atol=1e-7)


def _caffe_accuracy(scores: np.ndarray, label: np.ndarray, k: int, ignore: int | None) -> tuple[float, np.ndarray]:
    hits, seen = np.zeros(scores.shape[1]), np.zeros(scores.shape[1])
    for s, lab in zip(scores, label.astype(int)):
        if lab == ignore:
            continue
        seen[lab] += 1
        hits[lab] += (s >= s[lab]).sum() - 1 < k  # ties count against the sample
    per_class = np.where(seen > 0, hits / np.maximum(seen, 1), 0)
    return (hits.sum() / seen.sum() if seen.sum() else 0.0), per_class


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 6),
    ignore=st.sampled_from([None, 2]),
)
def test_accuracy_tie_rule_top_k_ignore_and_per_class(seed, k, ignore):
    rng = np.random.default_rng(seed)
    scores = (rng.integers(-2, 3, (8, 6)) / 2).astype(np.float32)  # quantised: ties happen
    label = rng.integers(0, 6, 8).astype(np.float32)
    extra = f" ignore_label: {ignore}" if ignore is not None else ""
    layer = make_layer(f'type: "Accuracy" top: "acc" top: "pc" accuracy_param {{ top_k: {k}{extra} }}', (8, 6), (8,))
    acc, per_class = run(layer, torch.tensor(scores), torch.tensor(label))
    ref_acc, ref_pc = _caffe_accuracy(scores, label, k, ignore)
    assert acc.item() == pytest.approx(ref_acc, abs=1e-7)
    np.testing.assert_allclose(per_class.numpy(), ref_pc, atol=1e-7)


def test_accuracy_spatial_axis_and_errors():
    scores = torch.randn(2, 4, 3, 3)
    label = scores.argmax(1, keepdim=True).float()
    (acc,) = run(make_layer('type: "Accuracy"', (2, 4, 3, 3), (2, 1, 3, 3)), scores, label)
    assert acc.item() == 1.0
    with pytest.raises(CaffeCompatError, match="top_k .* must be <= the number of classes"):
        make_layer('type: "Accuracy" accuracy_param { top_k: 5 }', (2, 4), (2,))


def test_losses_are_float32_under_bf16_autocast():
    x = torch.randn(4, 5).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (loss,) = run(make_layer('type: "SoftmaxWithLoss"', (4, 5), (4,)), x, torch.tensor([0.0, 1, 2, 3]))
        (sig,) = run(make_layer('type: "SigmoidCrossEntropyLoss"', (4, 5), (4, 5)), x, torch.rand(4, 5))
    assert loss.dtype == torch.float32 and sig.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(sig)
