"""Neuron layers: Caffe's forward formulas and Backward_cpu gradients, kinks, dtypes, layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layers_util import make_layer, run

from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.registry import TRAIN


def _grad(layer, x: np.ndarray, top_diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = torch.tensor(x, requires_grad=True)
    (y,) = run(layer, t)
    y.backward(torch.tensor(top_diff))
    return y.detach().numpy(), t.grad.numpy()


# Caffe's Forward_cpu / Backward_cpu written out in numpy (float64), per layer.
def _relu(x, dy, slope):
    return np.maximum(x, 0) + slope * np.minimum(x, 0), dy * ((x > 0) + slope * (x <= 0))


def _elu(x, dy, alpha):
    y = np.maximum(x, 0) + alpha * (np.exp(np.minimum(x, 0)) - 1)
    return y, dy * ((x > 0) + (alpha + y) * (x <= 0))


def _bnll(x, dy):
    y = np.where(x > 0, x + np.log1p(np.exp(-np.abs(x))), np.log1p(np.exp(np.minimum(x, 50))))
    e = np.exp(np.minimum(x, 50))
    return y, dy * e / (e + 1)


finite = st.floats(-6, 6, allow_nan=False, width=32)
arrays = st.lists(finite, min_size=1, max_size=40).map(lambda v: np.array(v, np.float32).reshape(1, 1, -1))


@settings(max_examples=40, deadline=None)
@given(x=arrays, slope=st.sampled_from([0.0, 0.1, 0.5]))
def test_relu_matches_caffe_including_zero(x, slope):
    x = np.concatenate([x, np.zeros_like(x)], axis=2)  # x == 0 takes the negative slope
    dy = np.linspace(-1, 1, x.size, dtype=np.float32).reshape(x.shape)
    y, dx = _grad(make_layer(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}', x.shape), x, dy)
    ry, rdx = _relu(x.astype(np.float64), dy, slope)
    np.testing.assert_allclose(y, ry, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, rdx, rtol=1e-6, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(x=arrays, alpha=st.sampled_from([0.3, 1.0, 1.7]))
def test_elu_and_bnll_match_caffe(x, alpha):
    x = np.concatenate([x, np.zeros_like(x)], axis=2)
    dy = np.ones_like(x)
    y, dx = _grad(make_layer(f'type: "ELU" elu_param {{ alpha: {alpha} }}', x.shape), x, dy)
    ry, rdx = _elu(x.astype(np.float64), dy, alpha)
    np.testing.assert_allclose(y, ry, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-6)
    y, dx = _grad(make_layer('type: "BNLL"', x.shape), x, dy)
    ry, rdx = _bnll(x.astype(np.float64), dy)
    np.testing.assert_allclose(y, ry, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-6)


def test_elu_has_no_nan_gradient_for_large_inputs():
    x = np.array([[[100.0, -100.0, 0.0]]], np.float32)
    _, dx = _grad(make_layer('type: "ELU"', x.shape), x, np.ones_like(x))
    np.testing.assert_allclose(dx, [[[1.0, 0.0, 1.0]]], atol=1e-30)  # alpha=1 at 0, exp(-100) ~ 0


def test_absval_gradient_sign_zero_and_refuses_in_place():
    x = np.array([[[-2.0, 0.0, 3.0]]], np.float32)
    y, dx = _grad(make_layer('type: "AbsVal"', x.shape), x, np.full_like(x, 5.0))
    np.testing.assert_array_equal(y, [[[2.0, 0.0, 3.0]]])
    np.testing.assert_array_equal(dx, [[[-5.0, 0.0, 5.0]]])
    with pytest.raises(CaffeCompatError, match="in-place"):
        make_layer('name: "abs" type: "AbsVal" bottom: "x" top: "x"', x.shape)


@settings(max_examples=40, deadline=None)
@given(
    x=st.lists(st.floats(0.125, 5, width=32), min_size=1, max_size=20).map(lambda v: np.array(v, np.float32)),
    power=st.sampled_from([0.0, 1.0, 2.0, 0.5, -1.5, 3.0]),
    scale=st.sampled_from([0.0, 1.0, 2.0, 0.5]),
    shift=st.sampled_from([0.0, 1.0, 0.5]),
)
def test_power_matches_caffe(x, power, scale, shift):
    layer = make_layer(f'type: "Power" power_param {{ power: {power} scale: {scale} shift: {shift} }}', x.shape)
    y, dx = _grad(layer, x, np.ones_like(x))
    x64 = x.astype(np.float64)
    if power * scale == 0:  # Caffe ignores the input: a constant, zero gradient
        with np.errstate(divide="ignore"):
            ry = np.full_like(x64, 1.0 if power == 0 else np.power(shift, power))
        rdx = np.zeros_like(x64)
    else:
        ry = (shift + scale * x64) ** power
        rdx = power * scale * (shift + scale * x64) ** (power - 1)
    np.testing.assert_allclose(y, ry, rtol=1e-5)
    np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base", [-1.0, 2.0, 10.0, 0.5])
def test_exp_and_log_bases(base):
    x = np.linspace(0.1, 3, 12, dtype=np.float32)
    b = np.e if base == -1 else base
    y, dx = _grad(make_layer(f'type: "Exp" exp_param {{ base: {base} scale: 0.7 shift: 0.3 }}', x.shape), x, np.ones_like(x))
    ry = b ** (0.3 + 0.7 * x.astype(np.float64))
    np.testing.assert_allclose(y, ry, rtol=1e-5)
    np.testing.assert_allclose(dx, ry * 0.7 * np.log(b), rtol=1e-5)
    y, dx = _grad(make_layer(f'type: "Log" log_param {{ base: {base} scale: 2 shift: 0.5 }}', x.shape), x, np.ones_like(x))
    inner = 0.5 + 2 * x.astype(np.float64)
    np.testing.assert_allclose(y, np.log(inner) / np.log(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, 2 / (inner * np.log(b)), rtol=1e-5)


@pytest.mark.parametrize("kind", ["Exp", "Log"])
def test_exp_log_reject_non_positive_base(kind):
    with pytest.raises(CaffeCompatError, match="base must be strictly positive"):
        make_layer(f'type: "{kind}" {kind.lower()}_param {{ base: -2 }}', (2, 3))


def test_threshold_is_strict_and_not_differentiable():
    x = torch.tensor([[0.2, 0.3, 0.4]], requires_grad=True)
    (y,) = run(make_layer('type: "Threshold" threshold_param { threshold: 0.3 }', (1, 3)), x)
    assert y.tolist() == [[0.0, 0.0, 1.0]]
    assert not y.requires_grad


def test_dropout_scales_kept_values_in_train_and_is_identity_in_test():
    torch.manual_seed(0)
    x = torch.rand(4000) + 1.0
    x.requires_grad_(True)
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.25 }', (4000,), phase=TRAIN)
    (y,) = run(layer, x)
    kept = y != 0
    assert 0.7 < kept.float().mean().item() < 0.8
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)  # Caffe: top_diff * mask * scale
    (y_test,) = run(make_layer('type: "Dropout"', (4000,)), x)
    assert torch.equal(y_test, x)
    with pytest.raises(CaffeCompatError, match="dropout_ratio"):
        make_layer('type: "Dropout" dropout_param { dropout_ratio: 1.0 }', (3,))


NEURONS = [
    'type: "ReLU"',
    'type: "ReLU" relu_param { negative_slope: 0.2 }',
    'type: "ELU"',
    'type: "Sigmoid"',
    'type: "TanH"',
    'type: "AbsVal"',
    'type: "BNLL"',
    'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }',
    'type: "Exp" exp_param { scale: 0.5 }',
    'type: "Log" log_param { shift: 10 }',
    'type: "Threshold"',
    'type: "Dropout"',
]


@pytest.mark.parametrize("text", NEURONS)
def test_bf16_autocast_and_channels_last(text):
    """Under bf16 autocast a bf16 channels_last input keeps its dtype and layout and stays close
    to the float32 result."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 5)
    layer = make_layer(text, tuple(x.shape))
    (ref,) = run(layer, x)
    xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (y,) = run(layer, xb)
    assert y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=3e-2)


def test_prelu_blob_shapes_default_filler_and_gradients():
    shared = make_layer('type: "PReLU" prelu_param { channel_shared: true }', (2, 3, 4))
    assert tuple(shared.blobs[0].shape) == () and shared.blobs[0].item() == 0.25  # Caffe's default filler
    layer = make_layer('type: "PReLU" prelu_param { filler { type: "constant" value: 0.5 } }', (2, 3, 4))
    assert tuple(layer.blobs[0].shape) == (3,)
    x = torch.tensor([-2.0, 0.0, 3.0]).reshape(1, 3, 1).repeat(2, 1, 4).requires_grad_(True)
    (y,) = run(layer, x)
    y.sum().backward()
    assert y[0, :, 0].tolist() == [-1.0, 0.0, 3.0]
    assert x.grad[0, :, 0].tolist() == [0.5, 0.5, 1.0]  # slope at x == 0, like Caffe
    assert layer.blobs[0].grad.tolist() == [-16.0, 0.0, 0.0]  # sum of x * dy over x <= 0
    with pytest.raises(CaffeCompatError, match="at least 2 axes"):
        make_layer('type: "PReLU"', (5,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (yb,) = run(layer, x.detach().to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16


@pytest.mark.parametrize("power, shift, expected", [(0.0, 3.0, 1.0), (2.0, 3.0, 9.0), (-1.5, 0.0, np.inf), (0.5, -1.0, np.nan)])
def test_power_ignores_the_input_when_scale_is_zero(power, shift, expected):
    """Caffe's special case y = shift^power (C pow semantics), gradient 0."""
    x = torch.randn(2, 3, requires_grad=True)
    (y,) = run(make_layer(f'type: "Power" power_param {{ power: {power} scale: 0 shift: {shift} }}', (2, 3)), x)
    np.testing.assert_array_equal(y.detach().numpy(), np.full((2, 3), expected, np.float32))
    y.sum().backward()
    assert not x.grad.any()
