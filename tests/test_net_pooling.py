"""Pooling against a literal transcription of Caffe's PoolingLayer loops, for random geometry.

The fixtures cover a dozen cases; this covers padding up to kernel - 1 (beyond PyTorch's own
limit of kernel / 2), ceil and floor rounding, windows that start in the padding, and the MAX
mask, where our layer must switch from PyTorch's native kernels to its general path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.net.layers.vision import Pooling
from caffe_compat.proto import caffe_pb2


def caffe_pool(x: np.ndarray, k, s, p, ceil: bool, method: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Caffe's Reshape + Forward_cpu, loop for loop (float64)."""
    n, c, h, w = x.shape
    rnd = math.ceil if ceil else math.floor
    oh, ow = rnd((h + 2 * p[0] - k[0]) / s[0]) + 1, rnd((w + 2 * p[1] - k[1]) / s[1]) + 1
    if p[0] or p[1]:
        oh -= (oh - 1) * s[0] >= h + p[0]
        ow -= (ow - 1) * s[1] >= w + p[1]
    if (oh - 1) * s[0] >= h + p[0] or (ow - 1) * s[1] >= w + p[1]:
        return None  # a window past the input (kernel < stride, no pad): Caffe reads nothing
    top = np.zeros((n, c, oh, ow))
    mask = np.full((n, c, oh, ow), -1.0)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            if method == "MAX":
                he, we = min(hs + k[0], h), min(ws + k[1], w)
                hs, ws = max(hs, 0), max(ws, 0)
                window = x[:, :, hs:he, ws:we].reshape(n, c, -1)
                arg = window.argmax(-1)
                top[:, :, i, j] = window.max(-1)
                mask[:, :, i, j] = (hs + arg // (we - ws)) * w + ws + arg % (we - ws)
            else:
                he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                top[:, :, i, j] = x[:, :, hs:he, ws:we].sum((-2, -1)) / size
    return top, mask


@settings(max_examples=120, deadline=None)
@given(
    h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), data=st.data(),
    ceil=st.booleans(), method=st.sampled_from(["MAX", "AVE"]),
)
def test_pooling_matches_caffes_loops(h, w, kh, kw, sh, sw, data, ceil, method) -> None:
    ph, pw = data.draw(st.integers(0, kh - 1)), data.draw(st.integers(0, kw - 1))
    h, w = max(h, kh - 2 * ph), max(w, kw - 2 * pw)
    x = np.random.default_rng(h * 100 + w).standard_normal((2, 2, h, w)).astype(np.float32)
    expected = caffe_pool(x.astype(np.float64), (kh, kw), (sh, sw), (ph, pw), ceil, method)
    if expected is None:
        return
    ref, ref_mask = expected
    param = caffe_pb2.LayerParameter(name="pool", type="Pooling", bottom=["x"],
                                     top=["y", "mask"] if method == "MAX" else ["y"])
    pp = param.pooling_param
    pp.pool = getattr(caffe_pb2.PoolingParameter, method)
    pp.kernel_h, pp.kernel_w, pp.stride_h, pp.stride_w, pp.pad_h, pp.pad_w = kh, kw, sh, sw, ph, pw
    pp.round_mode = caffe_pb2.PoolingParameter.CEIL if ceil else caffe_pb2.PoolingParameter.FLOOR
    layer = Pooling(param, [x.shape], 1)
    assert [tuple(s) for s in layer.top_shapes()][0] == ref.shape
    tops = layer(torch.from_numpy(x))
    np.testing.assert_allclose(tops[0].numpy(), ref, rtol=1e-5, atol=1e-6)
    if method == "MAX":
        np.testing.assert_array_equal(tops[1].numpy(), ref_mask)


def stochastic(phase: int, kernel: int = 3, stride: int = 2) -> Pooling:
    param = caffe_pb2.LayerParameter(name="sto", type="Pooling", bottom=["x"], top=["y"])
    param.pooling_param.pool = caffe_pb2.PoolingParameter.STOCHASTIC
    param.pooling_param.kernel_size, param.pooling_param.stride = kernel, stride
    return Pooling(param, [(2, 3, 6, 6)], phase)


def test_stochastic_test_phase_is_the_probability_weighted_mean() -> None:
    x = torch.rand(2, 3, 6, 6)
    x[0, 0] = 0  # all-zero windows give 0, not NaN
    (y,) = stochastic(phase=1)(x)
    assert y.shape == (2, 3, 3, 3)  # ceil: (6 - 3) / 2 -> 2 + 1, last window clipped
    for i in range(3):
        for j in range(3):
            window = x[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].reshape(2, 3, -1)
            expected = (window**2).sum(-1) / window.sum(-1)
            expected[0, 0] = 0
            assert torch.allclose(y[:, :, i, j], expected, atol=1e-6)


def test_stochastic_train_phase_samples_in_proportion_and_routes_the_gradient() -> None:
    torch.manual_seed(0)
    layer = stochastic(phase=0, kernel=2, stride=2)
    x = torch.zeros(2, 3, 6, 6)
    x[..., 0, 0], x[..., 0, 1], x[..., 1, 0] = 1.0, 3.0, 0.0  # first window: P(1) = 1/4, P(3) = 3/4
    draws = torch.stack([layer(x)[0][..., 0, 0] for _ in range(400)])
    assert set(draws.unique().tolist()) <= {1.0, 3.0}
    assert abs((draws == 3.0).float().mean().item() - 0.75) < 0.05
    leaf = x.clone().requires_grad_()
    (y,) = layer(leaf)
    y.sum().backward()
    assert leaf.grad[..., :2, :2].sum().item() == 6.0  # one pick per (n, c) in that window
