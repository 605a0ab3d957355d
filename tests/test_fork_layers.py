"""The forks' layers against transcriptions of the forks' own CPU loops, their gradients, and
their ONNX export run by onnxruntime at batch 1 and 3 (dynamic batch, with --fold-bn too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST, TRAIN, layer_class
from caffe_compat.onnx.export import net_to_onnx
from caffe_compat.proto import caffe_pb2

FORKS_NET = Path(__file__).parent / "fixtures" / "forks" / "forks.prototxt"


def _layer(text: str, *shapes):
    param = caffe_pb2.LayerParameter()
    from google.protobuf import text_format

    text_format.Parse(text, param)
    return layer_class(param)(param, shapes, TEST)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ SegNet / ENet BN


def test_bn_learn_normalises_by_the_batch_like_segnet():
    x = _rng().standard_normal((3, 4, 5, 6)).astype(np.float32) * 3 + 1
    layer = _layer('name: "bn" type: "BN" top: "y" top: "m" top: "v" bn_param { '
                   'scale_filler { type: "constant" value: 2 } shift_filler { type: "constant" value: -1 } }',
                   x.shape)
    y, mean, var = layer(torch.from_numpy(x))
    x64 = x.astype(np.float64)
    ref_mean = x64.mean((0, 2, 3), keepdims=True)
    ref_var = (x64**2).mean((0, 2, 3), keepdims=True) - ref_mean**2
    ref = (x64 - ref_mean) / np.sqrt(ref_var + 1e-9) * 2 - 1
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mean.detach().numpy(), ref_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var.detach().numpy(), ref_var, rtol=1e-4, atol=1e-4)


def test_bn_inference_is_scale_and_shift():
    x = _rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    layer = _layer('name: "bn" type: "BN" bn_param { bn_mode: INFERENCE '
                   'scale_filler { type: "gaussian" } shift_filler { type: "gaussian" } }', x.shape)
    scale, shift = layer.blobs[0].detach().numpy(), layer.blobs[1].detach().numpy()
    assert scale.shape == shift.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(layer(torch.from_numpy(x))[0].detach().numpy(), x * scale + shift, rtol=1e-6)
    with pytest.raises(CaffeCompatError, match="INFERENCE has no batch mean"):
        _layer('name: "bn" type: "BN" top: "y" top: "m" bn_param { bn_mode: INFERENCE }', x.shape)


# ------------------------------------------------------------------ Upsample


def caffe_unpool(x: np.ndarray, mask: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """caffe-segnet's UpsampleLayer::Forward_cpu, loop for loop."""
    n, c = x.shape[:2]
    top = np.zeros((n, c, oh * ow), x.dtype)
    flat_x, flat_m = x.reshape(n, c, -1), mask.reshape(n, c, -1)
    for i in range(n):
        for j in range(c):
            for k in range(flat_x.shape[2]):
                top[i, j, int(flat_m[i, j, k])] = flat_x[i, j, k]
    return top.reshape(n, c, oh, ow)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(h=st.integers(3, 9), w=st.integers(3, 9), kernel=st.integers(2, 3), ceil=st.booleans())
def test_upsample_puts_values_where_the_pooling_mask_says(h, w, kernel, ceil):
    x = torch.from_numpy(_rng(h * 10 + w).standard_normal((2, 3, h, w)).astype(np.float32))
    pool = _layer(f'name: "p" type: "Pooling" top: "y" top: "m" pooling_param {{ pool: MAX kernel_size: {kernel} '
                  f'stride: 2 ceil_mode: {"true" if ceil else "false"} }}', x.shape)
    y, mask = pool(x)
    up = _layer(f'name: "u" type: "Upsample" upsample_param {{ upsample_h: {h} upsample_w: {w} }}',
                tuple(y.shape), tuple(mask.shape))
    got = up(y, mask)[0].numpy()
    np.testing.assert_array_equal(got, caffe_unpool(y.numpy(), mask.numpy(), h, w))


def test_upsample_scale_sizes_and_nearest():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    mask = torch.zeros_like(x)
    padded = _layer('name: "u" type: "Upsample" upsample_param { scale: 2 pad_out_h: true }', x.shape, x.shape)
    assert padded.top_shapes() == [(1, 1, 5, 8)]
    assert padded(x, mask)[0][0, 0, 0, 0] == 11.0  # every value aimed at 0: the last one wins
    nearest = _layer('name: "u" type: "Upsample" upsample_param { scale: 3 }', x.shape)
    np.testing.assert_array_equal(nearest(x)[0].numpy(), np.repeat(np.repeat(x.numpy(), 3, 2), 3, 3))
    with pytest.raises(CaffeCompatError, match="pad_out_h / pad_out_w need a scale of 2"):
        _layer('name: "u" type: "Upsample" upsample_param { scale: 3 pad_out_w: true }', x.shape, x.shape)
    bad = _layer('name: "u" type: "Upsample" upsample_param { upsample_h: 2 upsample_w: 2 }', x.shape, x.shape)
    with pytest.raises(CaffeCompatError, match="outside the 2x2 top"):
        bad(x, torch.full_like(x, 7.0))


# ------------------------------------------------------------------ Axpy, ShuffleChannel, ReLU6


def test_axpy_and_its_gradients():
    a = torch.randn(2, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    layer = _layer('name: "s" type: "Axpy"', a.shape, x.shape, y.shape)
    np.testing.assert_allclose(layer(a, x, y)[0].detach().numpy(),
                               a.detach().numpy() * x.detach().numpy() + y.detach().numpy())
    assert torch.autograd.gradcheck(lambda *t: layer(*t)[0], (a, x, y))
    with pytest.raises(CaffeCompatError, match="must be .N, C. or .N, C, 1, 1."):
        _layer('name: "s" type: "Axpy"', (2, 3, 2, 1), x.shape, y.shape)


def caffe_shuffle(x: np.ndarray, group: int) -> np.ndarray:
    """farmingyard's ShuffleChannelLayer::Resize_cpu: input block (i, j) -> output block (j, i)."""
    n, c = x.shape[:2]
    rows, cols = group, c // group
    out = np.empty_like(x)
    for i in range(rows):
        for j in range(cols):
            out[:, j * rows + i] = x[:, i * cols + j]
    return out


@pytest.mark.parametrize("channels, group", [(6, 3), (6, 2), (8, 8), (5, 1)])
def test_shuffle_channel_matches_the_forks_loop(channels: int, group: int):
    x = _rng(channels).standard_normal((2, channels, 3, 2)).astype(np.float32)
    layer = _layer(f'name: "sc" type: "ShuffleChannel" shuffle_channel_param {{ group: {group} }}', x.shape)
    np.testing.assert_array_equal(layer(torch.from_numpy(x))[0].numpy(), caffe_shuffle(x, group))
    t = torch.from_numpy(x).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: layer(v)[0], (t,))


def test_relu6():
    x = torch.linspace(-8, 8, 33)
    plain = _layer('name: "r" type: "ReLU6"', x.shape)
    np.testing.assert_array_equal(plain(x)[0].numpy(), np.clip(x.numpy(), 0, 6))
    leaky = _layer('name: "r" type: "ReLU6" relu6_param { negative_slope: 0.25 }', x.shape)
    np.testing.assert_allclose(leaky(x)[0].numpy(), np.clip(x.numpy(), 0, 6) + 0.25 * np.minimum(x.numpy(), 0))


def test_depthwise_convolution_is_grouped_convolution():
    x = torch.randn(2, 4, 7, 7)
    for kind in ("DepthwiseConvolution", "ConvolutionDepthwise"):
        text = 'name: "dw" type: "{}" convolution_param {{ num_output: 4 group: 4 kernel_size: 3 stride: 2 pad: 1 ' \
               'bias_term: true weight_filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }}'
        dw = _layer(text.format(kind), x.shape)
        conv = _layer(text.format("Convolution"), x.shape)
        conv.blobs[0].data.copy_(dw.blobs[0].data)
        conv.blobs[1].data.copy_(dw.blobs[1].data)
        torch.testing.assert_close(dw(x)[0], conv(x)[0], rtol=0, atol=0)


# ------------------------------------------------------------------ Interp


def caffe_interp(x: np.ndarray, h2: int, w2: int) -> np.ndarray:
    """PSPNet's caffe_cpu_interp2 (non-packed), loop for loop."""
    h1, w1 = x.shape[-2:]
    if (h1, w1) == (h2, w2):
        return x.copy()
    rh = (h1 - 1) / (h2 - 1) if h2 > 1 else 0.0
    rw = (w1 - 1) / (w2 - 1) if w2 > 1 else 0.0
    out = np.zeros(x.shape[:-2] + (h2, w2))
    for i in range(h2):
        r = rh * i
        y0 = int(r)
        dy = 1 if y0 < h1 - 1 else 0
        l1 = r - y0
        for j in range(w2):
            c = rw * j
            x0 = int(c)
            dx = 1 if x0 < w1 - 1 else 0
            m1 = c - x0
            out[..., i, j] = ((1 - l1) * ((1 - m1) * x[..., y0, x0] + m1 * x[..., y0, x0 + dx])
                              + l1 * ((1 - m1) * x[..., y0 + dy, x0] + m1 * x[..., y0 + dy, x0 + dx]))
    return out


@settings(max_examples=60, deadline=None, derandomize=True)
@given(h=st.integers(1, 8), w=st.integers(1, 8), zoom=st.one_of(st.none(), st.integers(1, 4)),
       shrink=st.one_of(st.none(), st.integers(1, 3)), pad_beg=st.integers(-1, 0), pad_end=st.integers(-1, 0))
def test_interp_matches_pspnets_loops(h, w, zoom, shrink, pad_beg, pad_end):
    x = _rng(h * 9 + w).standard_normal((1, 2, h + 2, w + 2))
    fields = [f"pad_beg: {pad_beg}", f"pad_end: {pad_end}"]
    fields += [f"zoom_factor: {zoom}"] if zoom else []
    fields += [f"shrink_factor: {shrink}"] if shrink else []
    if not zoom and not shrink:
        fields += [f"height: {h + 1}", f"width: {w + 3}"]
    layer = _layer(f'name: "i" type: "Interp" interp_param {{ {" ".join(fields)} }}', x.shape)
    (oh, ow), = [s[2:] for s in layer.top_shapes()]
    cropped = x[..., -pad_beg: x.shape[2] + pad_end, -pad_beg: x.shape[3] + pad_end]
    got = layer(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(got, caffe_interp(cropped, oh, ow), rtol=1e-9, atol=1e-12)


def test_interp_rejects_growing_pads_and_no_size():
    with pytest.raises(CaffeCompatError, match="non-positive pad_beg"):
        _layer('name: "i" type: "Interp" interp_param { zoom_factor: 2 pad_beg: 1 }', (1, 1, 4, 4))
    with pytest.raises(CaffeCompatError,
                       match="give zoom_factor, shrink_factor, both height and width, or use_blob_size"):
        _layer('name: "i" type: "Interp" interp_param { height: 3 }', (1, 1, 4, 4))


# ------------------------------------------------------------------ a net of them all through ONNX


def _net(batch: int) -> CaffeNet:
    torch.manual_seed(0)
    text = FORKS_NET.read_text().replace("dim: 2 dim: 6", f"dim: {batch} dim: 6")
    return CaffeNet(parse_net_text(text), phase=TEST)


@pytest.mark.parametrize("fold_bn", [False, True])
def test_fork_net_matches_onnxruntime_at_batch_1_and_3(fold_bn: bool):
    model, _, _ = net_to_onnx(_net(2), dynamic_batch=True, fold_bn=fold_bn)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        net = _net(batch)  # same seed: same weights, built at this batch
        x = _rng(batch).standard_normal((batch, 6, 9, 11)).astype(np.float32)
        with torch.no_grad():
            ours = net({"data": torch.from_numpy(x)})["out"].numpy()
        got = session.run(["out"], {"data": x})[0]
        assert np.abs(got - ours).max() <= 1e-4 * np.abs(ours).max()


# ------------------------------------------------------------------ PSPNet's own BN


def pspnet_bn(x: np.ndarray, slope, bias, mean, var, eps: float, batch_stats: bool):
    """hszhao/PSPNet @798bdc9 bn_layer.cpp Forward_cpu, step by step in float32: subtract the
    mean (moving, or the batch's: spatial then batch average), the variance (moving, or the
    batch's mean of squared deviations), add eps, power -0.5, multiply, times slope, plus bias."""
    x = x.astype(np.float32)
    if batch_stats:
        mean = x.mean(axis=(2, 3)).mean(axis=0).reshape(1, -1, 1, 1)
    top = x - mean
    if batch_stats:
        var = (top**2).mean(axis=(2, 3)).mean(axis=0).reshape(1, -1, 1, 1)
    inv_std = np.power(var + np.float32(eps), np.float32(-0.5))
    return top * inv_std * slope + bias, mean, var


PSP_BN = ('name: "bn" type: "BN" bn_param { slope_filler { type: "gaussian" std: 1 } '
          'bias_filler { type: "gaussian" std: 1 } momentum: 0.95 eps: 1e-4 %s }')


def _with_stats(layer, seed: int):
    rng = _rng(seed)
    c = layer.blobs[2].shape[1]
    with torch.no_grad():
        layer.blobs[2].copy_(torch.from_numpy(rng.standard_normal((1, c, 1, 1)).astype(np.float32)))
        layer.blobs[3].copy_(torch.from_numpy(rng.uniform(0.1, 3, (1, c, 1, 1)).astype(np.float32)))
    return layer


@pytest.mark.parametrize("frozen, phase", [(True, TEST), (False, TEST), (True, TRAIN)])
def test_pspnet_bn_uses_its_moving_statistics_in_test_or_frozen(frozen: bool, phase: int):
    x = _rng(2).standard_normal((2, 5, 4, 3)).astype(np.float32) * 2 + 1
    param = caffe_pb2.LayerParameter()
    from google.protobuf import text_format

    text_format.Parse(PSP_BN % f"frozen: {str(frozen).lower()}", param)
    layer = _with_stats(layer_class(param)(param, [x.shape], phase), 3)
    assert layer.pspnet and len(layer.blobs) == 4 and all(b.shape == (1, 5, 1, 1) for b in layer.blobs)
    blobs = [b.detach().numpy().copy() for b in layer.blobs]
    ref, _, _ = pspnet_bn(x, *blobs, eps=1e-4, batch_stats=False)
    np.testing.assert_allclose(layer(torch.from_numpy(x))[0].detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.blobs[2].detach().numpy(), blobs[2])  # no update


def test_pspnet_bn_train_uses_the_batch_and_moves_the_averages():
    x = _rng(4).standard_normal((3, 4, 5, 6)).astype(np.float32) * 3 - 1
    param = caffe_pb2.LayerParameter()
    from google.protobuf import text_format

    text_format.Parse(PSP_BN % "", param)
    layer = _with_stats(layer_class(param)(param, [x.shape], TRAIN), 5)
    blobs = [b.detach().numpy().copy() for b in layer.blobs]
    ref, mean, var = pspnet_bn(x, *blobs, eps=1e-4, batch_stats=True)
    y = layer(torch.from_numpy(x))[0]
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.blobs[2].detach().numpy(), 0.05 * mean + 0.95 * blobs[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.blobs[3].detach().numpy(), 0.05 * var + 0.95 * blobs[3], rtol=1e-5, atol=1e-6)
    y.sum().backward()  # autograd reaches slope and bias
    assert layer.blobs[0].grad is not None and layer.blobs[1].grad is not None


def test_pspnet_bn_defaults_and_mixed_fields():
    layer = _layer('name: "bn" type: "BN" bn_param { frozen: true }', (1, 2, 3, 3))
    assert layer.pspnet and layer.eps == pytest.approx(1e-5) and layer.momentum == pytest.approx(0.9)
    # Caffe's initial blobs: slope, bias from unset fillers (0), mean 0, variance 1 when frozen.
    assert [float(b.sum()) for b in layer.blobs] == [0.0, 0.0, 0.0, 2.0]
    with pytest.raises(CaffeCompatError, match="mixes SegNet's fields"):
        _layer('name: "bn" type: "BN" bn_param { bn_mode: INFERENCE frozen: true }', (1, 2, 3, 3))


PSP_NET = """
name: "psp"
input: "data"
input_shape { dim: 2 dim: 3 dim: 9 dim: 11 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "conv/bn" type: "BN" bottom: "conv" top: "conv"
  bn_param { slope_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } frozen: true momentum: 0.95 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "branch" type: "Convolution" bottom: "conv" top: "branch"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "branch/bn" type: "BN" bottom: "branch" top: "branch_bn"
  bn_param { slope_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 0 } eps: 1e-3 } }
layer { name: "interp" type: "Interp" bottom: "branch_bn" top: "out" interp_param { zoom_factor: 2 } }
"""


def _psp_net(batch: int) -> CaffeNet:
    torch.manual_seed(0)
    net = CaffeNet(parse_net_text(PSP_NET.replace("dim: 2 dim: 3", f"dim: {batch} dim: 3")), phase=TEST)
    for i, step in enumerate(s for s in net.steps if s.type == "BN"):
        _with_stats(step.layer, 10 + i)
    return net


@pytest.mark.parametrize("fold_bn", [False, True])
def test_pspnet_bn_net_matches_onnxruntime_at_batch_1_and_3(fold_bn: bool):
    model, _, _ = net_to_onnx(_psp_net(2), dynamic_batch=True, fold_bn=fold_bn)
    # --fold-bn folds the in-place BN after the convolution away; the other stays
    assert any("conv/bn/" in n.name for n in model.graph.node) is not fold_bn
    assert any("branch/bn/" in n.name for n in model.graph.node)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        net = _psp_net(batch)
        x = _rng(batch).standard_normal((batch, 3, 9, 11)).astype(np.float32)
        with torch.no_grad():
            ours = net({"data": torch.from_numpy(x)})["out"].numpy()
        got = session.run(["out"], {"data": x})[0]
        assert np.abs(got - ours).max() <= 1e-4 * np.abs(ours).max()


# ------------------------------------------------------------------ caffe-priv: SeLu, SeLuDropout, use_blob_size


def priv_selu(x: np.ndarray, lam: float, alpha: float) -> np.ndarray:
    """soeaver/py-RFCN-priv @ec89b86 selu_layer.cpp Forward_cpu, in float32."""
    lam, alpha = np.float32(lam), np.float32(alpha)
    with np.errstate(over="ignore"):  # the unselected exp of a large x, as in Caffe's loop
        return np.where(x > 0, lam * x, lam * alpha * (np.exp(x) - np.float32(1))).astype(np.float32)


def priv_selu_dropout(x: np.ndarray, mask: np.ndarray, ratio: float, alpha: float) -> np.ndarray:
    """selu_dropout_layer.cpp LayerSetUp and Forward_cpu (TRAIN) for a given keep mask, in float32."""
    threshold, alpha = np.float32(ratio), np.float32(alpha)
    q = np.float32(1) - threshold
    a = np.float32(np.float32(q * (np.float32(1) + alpha * alpha * (np.float32(1) - q))) ** np.float32(-0.5))
    b = -a * (np.float32(1) - q) * alpha
    return (a * np.where(mask, x, alpha) + b).astype(np.float32)


@pytest.mark.parametrize("fields, lam, alpha", [("", 1.050700987, 1.67326324),
                                                ("selu_param { lambda: 2 alpha: 0.5 }", 2.0, 0.5)])
def test_selu_matches_caffe_priv_and_its_gradient(fields: str, lam: float, alpha: float):
    x = (_rng(3).standard_normal((2, 3, 4, 5)) * 3).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, 100.0, -100.0]  # the boundary and the saturated ends
    layer = _layer(f'name: "s" type: "SeLu" {fields}', x.shape)
    t = torch.from_numpy(x).requires_grad_()
    y = layer(t)[0]
    np.testing.assert_allclose(y.detach().numpy(), priv_selu(x, lam, alpha), rtol=1e-6, atol=1e-7)
    y.sum().backward()
    with np.errstate(over="ignore"):
        grad = np.where(x > 0, lam, lam * alpha * np.exp(x))  # Backward_cpu
    np.testing.assert_allclose(t.grad.numpy(), grad, rtol=1e-6, atol=1e-7)
    assert np.isfinite(t.grad.numpy()).all()


def test_selu_dropout_is_the_identity_in_test_and_alpha_dropout_in_train():
    x = _rng(4).standard_normal((4, 8, 16, 16)).astype(np.float32)
    text = 'name: "d" type: "SeLuDropout" selu_dropout_param { dropout_ratio: 0.2 }'
    assert torch.equal(_layer(text, x.shape)(torch.from_numpy(x))[0], torch.from_numpy(x))
    param = caffe_pb2.LayerParameter()
    from google.protobuf import text_format

    text_format.Parse(text, param)
    layer = layer_class(param)(param, [x.shape], TRAIN)
    torch.manual_seed(1)
    t = torch.from_numpy(x).requires_grad_()
    y = layer(t)[0]
    y.sum().backward()
    # the kept values are where the gradient is nonzero (the gradient is a there, 0 where dropped)
    kept = t.grad.numpy() != 0
    assert 0.75 < kept.mean() < 0.85
    np.testing.assert_allclose(y.detach().numpy(), priv_selu_dropout(x, kept, 0.2, -1.75809934), rtol=1e-6, atol=1e-6)
    one, zero, keep = np.ones(1, np.float32), np.zeros(1, np.float32), np.ones(1, bool)
    a = priv_selu_dropout(one, keep, 0.2, -1.75809934) - priv_selu_dropout(zero, keep, 0.2, -1.75809934)
    np.testing.assert_allclose(np.unique(t.grad.numpy()[kept]), a, rtol=1e-6)  # Backward_cpu: a where kept
    # a normal input keeps (about) zero mean and unit variance: the point of the correction
    z = torch.randn(200_000)
    out = layer(z)[0]
    assert abs(float(out.mean())) < 0.02 and abs(float(out.std()) - 1.0) < 0.02


def test_selu_dropout_rejects_ratios_caffe_priv_rejects():
    for ratio in (0, 1):
        with pytest.raises(CaffeCompatError,
                           match=r"layer 'd' \(type SeLuDropout\): dropout_ratio must be in \(0, 1\)"):
            _layer(f'name: "d" type: "SeLuDropout" selu_dropout_param {{ dropout_ratio: {ratio} }}', (1, 2, 3, 3))


@pytest.mark.parametrize("pad", [0, -1])
def test_interp_use_blob_size_takes_the_second_bottoms_height_and_width(pad: int):
    x = _rng(5).standard_normal((2, 3, 5, 4))
    ref = np.zeros((2, 7, 9, 11))
    layer = _layer(f'name: "i" type: "Interp" interp_param {{ use_blob_size: true pad_beg: {pad} pad_end: {pad} }}',
                   x.shape, ref.shape)
    assert layer.top_shapes() == [(2, 3, 9, 11)]
    got = layer(torch.from_numpy(x), torch.from_numpy(ref))[0].numpy()
    cropped = x[..., -pad: 5 + pad, -pad: 4 + pad]
    np.testing.assert_allclose(got, caffe_interp(cropped, 9, 11), rtol=1e-9, atol=1e-12)


def test_interp_use_blob_size_needs_a_second_bottom():
    with pytest.raises(CaffeCompatError, match=r"layer 'i' \(type Interp\): use_blob_size takes the output size "
                                               r"from a second bottom, but the layer has one"):
        _layer('name: "i" type: "Interp" interp_param { use_blob_size: true }', (1, 1, 4, 4))


PRIV_NET = """
name: "priv"
input: "data"
input_shape { dim: 2 dim: 3 dim: 12 dim: 10 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "selu" type: "SeLu" bottom: "conv" top: "conv" }
layer { name: "drop" type: "SeLuDropout" bottom: "conv" top: "conv" selu_dropout_param { dropout_ratio: 0.1 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "up" type: "Interp" bottom: "pool" bottom: "conv" top: "up" interp_param { use_blob_size: true } }
layer { name: "sum" type: "Eltwise" bottom: "up" bottom: "conv" top: "sum" }
layer { name: "out" type: "SeLu" bottom: "sum" top: "out" selu_param { lambda: 1.5 alpha: 0.7 } }
"""


def _priv_net(batch: int, height: int = 12) -> CaffeNet:
    torch.manual_seed(0)
    text = PRIV_NET.replace("dim: 2 dim: 3 dim: 12", f"dim: {batch} dim: 3 dim: {height}")
    return CaffeNet(parse_net_text(text), phase=TEST)


def test_priv_net_matches_onnxruntime_at_batch_1_and_3():
    model, _, _ = net_to_onnx(_priv_net(2), dynamic_batch=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"Selu", "Resize"} <= ops
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        net = _priv_net(batch)
        x = _rng(batch).standard_normal((batch, 3, 12, 10)).astype(np.float32)
        with torch.no_grad():
            ours = net({"data": torch.from_numpy(x)})["out"].numpy()
        got = session.run(["out"], {"data": x})[0]
        assert got.shape == (batch, 4, 12, 10)
        assert np.abs(got - ours).max() <= 1e-5 * np.abs(ours).max()
