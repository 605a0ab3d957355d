"""Caffe geometry the ONNX graph must reproduce, over many random cases (hypothesis).

Pooling: ceil/floor rounding, the last-window-must-start-inside rule, AVE divisors that count
padding but not the overhang past it. Convolution/Deconvolution: pads, strides, dilation, group.
Each case builds a one-layer net with CaffeNet and compares onnxruntime with its forward, on a
dynamic batch of 2 while the prototxt says 1.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.onnx.export import net_to_onnx
from tests.test_onnx_layers import TOL, run_onnx


def _check(layer_text: str, shape: tuple[int, ...], seed: int) -> None:
    dims = " ".join(f"dim: {d}" for d in (1, *shape))
    net = CaffeNet(parse_net_text(
        f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
        f'layer {{ name: "l" bottom: "data" top: "out" {layer_text} }}'))
    x = np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32)
    model, _, _ = net_to_onnx(net)
    got = run_onnx(model, {"data": x})
    with torch.no_grad():
        want = net({"data": torch.from_numpy(x)})
    for blob, value in want.items():
        np.testing.assert_allclose(got[blob], value.numpy(), rtol=TOL, atol=TOL, err_msg=layer_text)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 5), kw=st.integers(1, 5),
       sh=st.integers(1, 4), sw=st.integers(1, 4), ph=st.integers(0, 2), pw=st.integers(0, 2),
       ave=st.booleans(), floor=st.booleans(), seed=st.integers(0, 99))
def test_pooling_geometry(h, w, kh, kw, sh, sw, ph, pw, ave, floor, seed):
    ph, pw = min(ph, kh - 1), min(pw, kw - 1)  # Caffe requires pad < kernel
    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    if ph == 0 and pw == 0 and not floor and ((h - kh + sh - 1) // sh * sh >= h or (w - kw + sw - 1) // sw * sw >= w):
        return  # Caffe's ceil mode without padding can start a window past the input (empty window)
    rounding = " round_mode: FLOOR" if floor else ""
    text = (f'type: "Pooling" pooling_param {{ pool: {"AVE" if ave else "MAX"} kernel_h: {kh} kernel_w: {kw} '
            f"stride_h: {sh} stride_w: {sw} pad_h: {ph} pad_w: {pw}{rounding} }}")
    _check(text, (2, h, w), seed)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(3, 8), k=st.integers(1, 3), stride=st.integers(1, 3), pad=st.integers(0, 2),
       dilation=st.integers(1, 2), group=st.sampled_from([1, 2]), bias=st.booleans(), deconv=st.booleans(),
       seed=st.integers(0, 99))
def test_convolution_geometry(size, k, stride, pad, dilation, group, bias, deconv, seed):
    extent = dilation * (k - 1) + 1
    if not deconv and size + 2 * pad < extent:
        return
    if deconv and stride * (size - 1) + extent - 2 * pad <= 0:
        return
    text = (f'type: "{"Deconvolution" if deconv else "Convolution"}" convolution_param {{ num_output: 4 '
            f"kernel_size: {k} stride: {stride} pad: {pad} dilation: {dilation} group: {group} "
            f'bias_term: {str(bias).lower()} weight_filler {{ type: "gaussian" std: 1 }} '
            f'bias_filler {{ type: "gaussian" std: 1 }} }}')
    _check(text, (4, size, size + 1), seed)


BN_SCALE = ('type: "BatchNorm" }}\nlayer {{ name: "s" type: "Scale" bottom: "out" top: "out" '
            'scale_param {{ axis: {axis} bias_term: true filler {{ type: "gaussian" }} '
            'bias_filler {{ type: "gaussian" }} }}')


def test_scale_after_batchnorm_is_folded_only_on_the_channel_axis():
    for axis, folded in ((1, True), (3, False)):  # axis 3 has W == C: must not be mistaken for channels
        text = BN_SCALE.format(axis=axis)
        _check(text, (4, 3, 4), seed=axis)
        net = CaffeNet(parse_net_text(
            'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 3 dim: 4 } } }\n'
            f'layer {{ name: "l" bottom: "data" top: "out" {text} }}'))
        ops = [node.op_type for node in net_to_onnx(net)[0].graph.node]
        assert ops == (["BatchNormalization"] if folded else ["BatchNormalization", "Mul", "Add"]), ops
