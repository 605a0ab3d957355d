"""Caffe layer types outside the fixture zoo (Clip, Swish, Silence, Reduction, HingeLoss,
MultinomialLogisticLoss, ContrastiveLoss), checked against Caffe's Forward_cpu/Backward_cpu
formulas written out in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layers_util import make_layer, run

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet


def _grads(layer, *arrays: np.ndarray, differentiable: int = 1):
    tensors = [torch.tensor(a, requires_grad=i < differentiable) for i, a in enumerate(arrays)]
    (y,) = run(layer, *tensors)
    y.sum().backward()
    return y.detach().numpy(), [t.grad.numpy() for t in tensors[:differentiable]]


def test_clip_is_inclusive_like_caffe():
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0], np.float32)
    y, (dx,) = _grads(make_layer('type: "Clip" clip_param { min: -1 max: 1 }', x.shape), x)
    np.testing.assert_array_equal(y, [-1, -1, 0, 1, 1])
    np.testing.assert_array_equal(dx, [0, 1, 1, 1, 0])  # x == min / max still pass the diff
    with pytest.raises(CaffeCompatError, match="both min and max"):
        make_layer('type: "Clip" clip_param { min: 0 }', x.shape)


def test_swish_matches_caffe_backward():
    x = np.linspace(-4, 4, 17, dtype=np.float32)
    y, (dx,) = _grads(make_layer('type: "Swish" swish_param { beta: 1.5 }', x.shape), x)
    s = 1 / (1 + np.exp(-1.5 * x.astype(np.float64)))
    np.testing.assert_allclose(y, x * s, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dx, 1.5 * x * s + s * (1 - 1.5 * x * s), rtol=1e-5, atol=1e-6)


def test_silence_swallows_its_bottoms():
    net = CaffeNet(parse_net_text("""
        layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 } } }
        layer { name: "s" type: "Silence" bottom: "a" }
    """))
    assert net.output_names == ["b"]
    assert sorted(net({"a": torch.ones(2), "b": torch.ones(2)})) == ["b"]


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction(op, axis):
    x = np.array([[[-1.5, 0.0, 2.0], [1.0, -3.0, 0.5]]], np.float32).repeat(2, 0)  # (2, 2, 3)
    layer = make_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: 0.5 }}', x.shape)
    y, (dx,) = _grads(layer, x)
    start = axis % 3
    rows = x.astype(np.float64).reshape(*x.shape[:start], -1)
    dim = rows.shape[-1]
    value = {"SUM": rows, "ASUM": np.abs(rows), "SUMSQ": rows**2, "MEAN": rows / dim}[op].sum(-1) * 0.5
    grad = {"SUM": np.ones_like(rows), "ASUM": np.sign(rows), "SUMSQ": 2 * rows, "MEAN": np.full_like(rows, 1 / dim)}[op]
    np.testing.assert_allclose(y, value, rtol=1e-6)
    np.testing.assert_allclose(dx, (0.5 * grad).reshape(x.shape), rtol=1e-6)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    label = np.array([0, 3, 4, 3], np.float32)
    layer = make_layer(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}', x.shape, label.shape)
    loss, (dx,) = _grads(layer, x, label)
    sign = np.ones_like(x, dtype=np.float64)
    sign[np.arange(4), label.astype(int)] = -1
    margin = np.maximum(0, 1 + sign * x)
    if norm == "L1":
        expected, grad = margin.sum() / 4, sign * np.sign(margin) / 4
    else:
        expected, grad = (margin**2).sum() / 4, 2 * sign * margin / 4
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(dx, grad, rtol=1e-6, atol=1e-7)


def test_multinomial_logistic_loss_clamps_like_caffe():
    p = np.array([[0.2, 0.8], [1e-30, 1.0]], np.float32)
    label = np.array([1, 0], np.float32)
    loss, (dp,) = _grads(make_layer('type: "MultinomialLogisticLoss"', p.shape, label.shape), p, label)
    np.testing.assert_allclose(loss, (-np.log(0.8) - np.log(1e-20)) / 2, rtol=1e-6)
    np.testing.assert_allclose(dp, [[0, -1 / 0.8 / 2], [-1 / 1e-20 / 2, 0]], rtol=1e-6)
    with pytest.raises(CaffeCompatError, match="one label per sample"):
        make_layer('type: "MultinomialLogisticLoss"', (2, 2), (2, 2))(torch.tensor(p), torch.zeros(2, 2))


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_matches_caffe_backward(legacy):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 3)).astype(np.float32) * 0.6
    b = rng.standard_normal((6, 3)).astype(np.float32) * 0.6
    sim = np.array([1, 0, 0, 1, 0, 0], np.float32)
    text = f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: 1.5 legacy_version: {str(legacy).lower()} }}'
    loss, (da, db) = _grads(make_layer(text, a.shape, b.shape, sim.shape), a, b, sim, differentiable=2)
    diff = a.astype(np.float64) - b
    d2 = (diff**2).sum(1)
    d = np.sqrt(d2)
    if legacy:
        apart, beta = np.maximum(1.5 - d2, 0), -1.0 * (1.5 - d2 > 0)
    else:
        apart, beta = np.maximum(1.5 - d, 0) ** 2, -np.maximum(1.5 - d, 0) / (d + 1e-4)
    np.testing.assert_allclose(loss, np.where(sim == 1, d2, apart).sum() / 12, rtol=1e-5)
    grad = np.where(sim[:, None] == 1, diff, beta[:, None] * diff) / 6
    np.testing.assert_allclose(da, grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, -grad, rtol=1e-5, atol=1e-7)


def _infogain_reference(scores, label, h, ignore):
    s = scores.astype(np.float64)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss, count = 0.0, 0
    diff = np.zeros_like(p)
    for i, lab in enumerate(label.astype(int)):
        if lab == ignore:
            continue
        loss -= (h[lab] * np.log(np.maximum(p[i], 1e-20))).sum()
        diff[i] = p[i] * h[lab].sum() - h[lab]
        count += 1
    return loss / max(count, 1), diff / max(count, 1)


def test_infogain_loss_from_bottom_and_from_source(tmp_path):
    from caffe_compat.io.blob import write_binaryproto

    rng = np.random.default_rng(2)
    scores = rng.standard_normal((5, 4)).astype(np.float32)
    label = np.array([0, 3, 9, 1, 3], np.float32)  # 9 = ignore_label
    h = rng.random((4, 4)).astype(np.float32)
    ref_loss, ref_diff = _infogain_reference(scores, label, h, 9)
    layer = make_layer('type: "InfogainLoss" loss_param { ignore_label: 9 }', scores.shape, label.shape, h.shape)
    loss, (dx,) = _grads(layer, scores, label, h)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(dx, ref_diff, rtol=1e-4, atol=1e-7)
    source = tmp_path / "H.binaryproto"
    write_binaryproto(source, h.reshape(1, 1, 4, 4))
    layer = make_layer(
        f'type: "InfogainLoss" loss_param {{ ignore_label: 9 }} infogain_loss_param {{ source: "{source}" }}',
        scores.shape, label.shape,
    )
    loss, (dx,) = _grads(layer, scores, label)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    with pytest.raises(CaffeCompatError, match="infogain matrix must be 4x4"):
        make_layer('type: "InfogainLoss"', scores.shape, label.shape, (3, 3))
    with pytest.raises(CaffeCompatError, match="needs the infogain matrix"):
        make_layer('type: "InfogainLoss"', scores.shape, label.shape)


@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_mvn_forward_and_caffe_backward(across, normalize):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32) * 2 + 1
    dy = rng.standard_normal(x.shape).astype(np.float32)
    text = f'type: "MVN" mvn_param {{ across_channels: {str(across).lower()} normalize_variance: {str(normalize).lower()} }}'
    t = torch.tensor(x, requires_grad=True)
    (y,) = run(make_layer(text, x.shape), t)
    y.backward(torch.tensor(dy))
    rows = x.astype(np.float64).reshape(2 if across else 6, -1)
    g = dy.astype(np.float64).reshape(rows.shape)
    centred = rows - rows.mean(1, keepdims=True)
    if normalize:
        std = np.sqrt((centred**2).mean(1, keepdims=True)) + 1e-9
        ry = centred / std
        rdx = (g - (ry * (ry * g).sum(1, keepdims=True) + g.sum(1, keepdims=True)) / rows.shape[1]) / std
    else:
        ry, rdx = centred, g - g.mean(1, keepdims=True)
    np.testing.assert_allclose(y.detach().numpy().reshape(rows.shape), ry, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.grad.numpy().reshape(rows.shape), rdx, rtol=1e-4, atol=1e-5)


def test_mvn_constant_input_has_finite_diffs():
    t = torch.ones(1, 2, 3, 3, requires_grad=True)
    (y,) = run(make_layer('type: "MVN" mvn_param { eps: 0.001 }', (1, 2, 3, 3)), t)
    y.sum().backward()
    assert not y.any() and torch.isfinite(t.grad).all()


def test_embed_lookup_bias_and_weight_diffs():
    layer = make_layer(
        'type: "Embed" embed_param { num_output: 3 input_dim: 4 weight_filler { type: "uniform" } '
        'bias_filler { type: "constant" value: 0.5 } }', (2, 2),
    )
    index = torch.tensor([[0.0, 3.0], [3.0, 1.0]])
    (y,) = run(layer, index)
    weight, bias = layer.blobs
    torch.testing.assert_close(y, weight.detach()[index.long()] + 0.5)
    y.sum().backward()
    assert weight.grad[:, 0].tolist() == [1.0, 1.0, 0.0, 2.0]  # row 3 used twice
    assert bias.grad.tolist() == [4.0, 4.0, 4.0]
    with pytest.raises(CaffeCompatError, match="out of range"):
        layer(torch.tensor([[4.0, 0.0], [0.0, 0.0]]))


def test_parameter_and_batch_reindex():
    net = CaffeNet(parse_net_text("""
        force_backward: true
        layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 3 dim: 2 } } }
        layer { name: "idx" type: "Input" top: "i" input_param { shape { dim: 4 } } }
        layer { name: "r" type: "BatchReindex" bottom: "w" bottom: "i" top: "picked" }
    """))
    assert net.blob_shapes["picked"] == (4, 2)
    param = net.layer_by_name("p").blobs[0]
    with torch.no_grad():
        param.copy_(torch.arange(6.0).reshape(3, 2))
    out = net({"i": torch.tensor([2.0, 0.0, 2.0, 1.0])})["picked"]
    assert out[:, 0].tolist() == [4.0, 0.0, 4.0, 2.0]
    out.sum().backward()
    assert param.grad[:, 0].tolist() == [1.0, 1.0, 2.0]
    with pytest.raises(CaffeCompatError, match="out of range"):
        net({"i": torch.tensor([3.0, 0.0, 0.0, 0.0])})
