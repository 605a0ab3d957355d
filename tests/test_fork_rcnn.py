"""ROIPooling (caffe-fast-rcnn) and PSROIPooling (caffe-rfcn): forward and backward against
loops written after the forks' kernels, and ONNX (MaxRoiPool; the PSROIPooling composite) at
several ROI counts with the count left symbolic."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.layers.fork_rcnn import round_away
from caffe_compat.net.registry import TEST
from caffe_compat.onnx.export import net_to_onnx
from layers_util import make_layer, run

F32 = np.float32


def c_round(x: float) -> int:
    """C's round on a float32 value: halves away from zero."""
    x = float(F32(x))
    return int(math.copysign(math.floor(abs(x) + 0.5), x)) if abs(x) % 1 != 0.5 else int(math.copysign(abs(x) + 0.5, x))


def fast_rcnn_loops(x: np.ndarray, rois: np.ndarray, ph: int, pw: int, scale: float):
    """roi_pooling_layer.cpp's Forward_cpu: (top, argmax as flat h * W + w, -1 for empty)."""
    n, c, h, w = x.shape
    top = np.zeros((len(rois), c, ph, pw), F32)
    argmax = -np.ones((len(rois), c, ph, pw), np.int64)
    scale = F32(scale)
    for r, roi in enumerate(rois.astype(F32)):
        b = int(roi[0])
        sw, sh, ew, eh = (c_round(roi[k] * scale) for k in (1, 2, 3, 4))
        bin_h = F32(max(eh - sh + 1, 1)) / F32(ph)
        bin_w = F32(max(ew - sw + 1, 1)) / F32(pw)
        for i in range(ph):
            hs = min(max(math.floor(F32(i) * bin_h) + sh, 0), h)
            he = min(max(math.ceil(F32(i + 1) * bin_h) + sh, 0), h)
            for j in range(pw):
                ws = min(max(math.floor(F32(j) * bin_w) + sw, 0), w)
                we = min(max(math.ceil(F32(j + 1) * bin_w) + sw, 0), w)
                if he <= hs or we <= ws:
                    continue
                for ch in range(c):
                    window = x[b, ch, hs:he, ws:we]
                    k = int(np.argmax(window))  # first maximum in raster order, as Caffe's '>'
                    top[r, ch, i, j] = window.flat[k]
                    argmax[r, ch, i, j] = (hs + k // (we - ws)) * w + ws + k % (we - ws)
    return top, argmax


def rfcn_loops(x: np.ndarray, rois: np.ndarray, dim: int, g: int, scale: float):
    """psroi_pooling_layer.cu's kernels: (top, the bottom gradient of a top gradient ``dtop``)."""
    n, c, h, w = x.shape
    top = np.zeros((len(rois), dim, g, g), F32)
    bins = {}
    scale = F32(scale)
    for r, roi in enumerate(rois.astype(F32)):
        b = int(roi[0])
        sw, sh = F32(c_round(roi[1])) * scale, F32(c_round(roi[2])) * scale
        ew, eh = F32(c_round(roi[3]) + 1) * scale, F32(c_round(roi[4]) + 1) * scale
        bin_w = max(F32(ew - sw), F32(0.1)) / F32(g)
        bin_h = max(F32(eh - sh), F32(0.1)) / F32(g)
        for i in range(g):
            hs = min(max(math.floor(F32(F32(i) * bin_h) + sh), 0), h)
            he = min(max(math.ceil(F32(F32(i + 1) * bin_h) + sh), 0), h)
            for j in range(g):
                ws = min(max(math.floor(F32(F32(j) * bin_w) + sw), 0), w)
                we = min(max(math.ceil(F32(F32(j + 1) * bin_w) + sw), 0), w)
                bins[r, i, j] = (b, hs, he, ws, we)
                if he <= hs or we <= ws:
                    continue
                for ctop in range(dim):
                    top[r, ctop, i, j] = x[b, (ctop * g + i) * g + j, hs:he, ws:we].mean()

    def backward(dtop: np.ndarray) -> np.ndarray:
        grad = np.zeros_like(x)
        for (r, i, j), (b, hs, he, ws, we) in bins.items():
            if he <= hs or we <= ws:
                continue
            for ctop in range(dim):
                grad[b, (ctop * g + i) * g + j, hs:he, ws:we] += dtop[r, ctop, i, j] / ((he - hs) * (we - ws))
        return grad

    return top, backward


def random_rois(rng: np.random.Generator, count: int, batch: int, height: float, width: float) -> np.ndarray:
    """ROIs of every kind: inside, half outside, outside, malformed (x2 < x1), on .5 boundaries."""
    x = rng.uniform(-0.3 * width, 1.3 * width, (count, 2))
    y = rng.uniform(-0.3 * height, 1.3 * height, (count, 2))
    rois = np.stack([rng.integers(0, batch, count) + 0.7 * (rng.random(count) > 0.5),
                     x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1).astype(F32)
    rois[::4, 1:] = np.round(rois[::4, 1:]) + 0.5  # halfway cases for R-FCN's round(x)
    rois[1::4, 1:] = np.round(rois[1::4, 1:] / 8) * 8  # x * (1/16) on .5 for Fast R-CNN's
    return rois


ROI_TEXT = 'type: "ROIPooling" roi_pooling_param { pooled_h: %d pooled_w: %d spatial_scale: 0.0625 }'
PSROI_TEXT = 'type: "PSROIPooling" psroi_pooling_param { spatial_scale: 0.0625 output_dim: %d group_size: %d }'


def test_round_away_rounds_halves_away_from_zero():
    got = round_away(torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -1.2], dtype=torch.float32))
    assert got.tolist() == [1, 2, 3, -1, -3, 0, -1]


@pytest.mark.parametrize("ph, pw, count", [(3, 6, 40), (7, 7, 1), (2, 1, 5)])
def test_roi_pooling_matches_fast_rcnns_loops_forward_and_backward(ph: int, pw: int, count: int):
    rng = np.random.default_rng(ph * 10 + pw)
    x = rng.standard_normal((2, 3, 11, 13)).astype(F32)
    rois = random_rois(rng, count, 2, 11 * 16, 13 * 16)
    layer = make_layer(ROI_TEXT % (ph, pw), x.shape, rois.shape)
    features = torch.from_numpy(x).requires_grad_()
    (top,) = run(layer, features, torch.from_numpy(rois))
    want, argmax = fast_rcnn_loops(x, rois, ph, pw, 0.0625)
    np.testing.assert_array_equal(top.detach().numpy(), want)
    # Backward (roi_pooling_layer.cu): each top gradient goes to its bin's argmax
    dtop = rng.standard_normal(want.shape).astype(F32)
    top.backward(torch.from_numpy(dtop))
    grad = np.zeros_like(x)
    for (r, ch, i, j), k in np.ndenumerate(argmax):
        if k >= 0:
            grad[int(rois[r, 0]), ch, k // x.shape[3], k % x.shape[3]] += dtop[r, ch, i, j]
    np.testing.assert_allclose(features.grad.numpy(), grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dim, g, count", [(2, 3, 30), (1, 7, 4), (3, 1, 2)])
def test_psroi_pooling_matches_rfcns_kernels_forward_and_backward(dim: int, g: int, count: int):
    rng = np.random.default_rng(dim * 10 + g)
    x = rng.standard_normal((2, dim * g * g, 9, 12)).astype(F32)
    rois = random_rois(rng, count, 2, 9 * 16, 12 * 16)
    layer = make_layer(PSROI_TEXT % (dim, g), x.shape, rois.shape)
    features = torch.from_numpy(x).requires_grad_()
    (top,) = run(layer, features, torch.from_numpy(rois))
    want, backward = rfcn_loops(x, rois, dim, g, 0.0625)
    np.testing.assert_allclose(top.detach().numpy(), want, rtol=1e-5, atol=1e-6)
    assert (want == 0).any() and (want != 0).any()  # empty bins and pooled ones both tested
    dtop = rng.standard_normal(want.shape).astype(F32)
    top.backward(torch.from_numpy(dtop))
    np.testing.assert_allclose(features.grad.numpy(), backward(dtop), rtol=1e-5, atol=1e-6)


def test_bad_parameters_and_rois_are_one_error_naming_the_layer():
    with pytest.raises(CaffeCompatError, match=r"layer 'psroipooling' .*: features have 10 channels; "
                                               r"output_dim 2 x group_size 3\^2 = 18"):
        make_layer(PSROI_TEXT % (2, 3), (1, 10, 4, 4), (3, 5))
    with pytest.raises(CaffeCompatError, match="psroi_pooling_param needs group_size"):
        make_layer('type: "PSROIPooling" psroi_pooling_param { spatial_scale: 1 output_dim: 2 }', (1, 2, 4, 4), (3, 5))
    with pytest.raises(CaffeCompatError, match="needs pooled_h > 0"):
        make_layer('type: "ROIPooling" roi_pooling_param { pooled_w: 2 }', (1, 2, 4, 4), (3, 5))
    with pytest.raises(CaffeCompatError, match=r"rois must be \(R, 5\)"):
        make_layer(ROI_TEXT % (2, 2), (1, 2, 4, 4), (3, 4))
    layer = make_layer(ROI_TEXT % (2, 2), (1, 2, 4, 4), (1, 5))
    with pytest.raises(CaffeCompatError, match="batch index is outside the 1 images"):
        layer(torch.zeros(1, 2, 4, 4), torch.tensor([[1.0, 0, 0, 8, 8]]))


NET = """
name: "rcnn_half"
input: "features" input_shape { dim: 2 dim: 18 dim: 10 dim: 12 }
input: "rois" input_shape { dim: 4 dim: 5 }
layer { name: "roi_pool" type: "ROIPooling" bottom: "features" bottom: "rois" top: "pooled"
  roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.0625 } }
layer { name: "fc" type: "InnerProduct" bottom: "pooled" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "psroi" type: "PSROIPooling" bottom: "features" bottom: "rois" top: "ps"
  psroi_pooling_param { spatial_scale: 0.0625 output_dim: 2 group_size: 3 } }
layer { name: "vote" type: "Pooling" bottom: "ps" top: "vote" pooling_param { pool: AVE global_pooling: true } }
"""


@pytest.mark.parametrize("fp16", [False, True])
def test_onnx_export_keeps_the_roi_count_symbolic_and_matches(fp16: bool):
    net = CaffeNet(parse_net_text(NET), phase=TEST)
    model = net_to_onnx(net, fp16=fp16)[0]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"features": ["N", 18, 10, 12], "rois": ["N_rois", 5]}
    assert any(node.op_type == "MaxRoiPool" for node in model.graph.node)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for batch, count in ((1, 1), (2, 4), (3, 17)):
        x = rng.standard_normal((batch, 18, 10, 12)).astype(F32)
        rois = random_rois(rng, count, batch, 160, 192)
        with torch.no_grad():
            ours = net({"features": torch.from_numpy(x), "rois": torch.from_numpy(rois)}, blobs=["fc", "vote"])
        got = dict(zip(["fc", "vote"], session.run(["fc", "vote"], {"features": x, "rois": rois})))
        for name in ("fc", "vote"):
            assert got[name].shape[0] == count
            tolerance = 2e-2 if fp16 else 1e-5
            np.testing.assert_allclose(got[name], ours[name].numpy(), rtol=tolerance, atol=tolerance)


def test_onnxruntimes_max_roi_pool_is_caffes():
    """ONNX's MaxRoiPool in onnxruntime: Caffe's rounding, bin limits and empty bins exactly."""
    from onnx import TensorProto, helper

    node = helper.make_node("MaxRoiPool", ["x", "rois"], ["y"], pooled_shape=[3, 5], spatial_scale=0.0625)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                            helper.make_tensor_value_info("rois", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 9, 14)).astype(F32)
    rois = random_rois(rng, 60, 2, 9 * 16, 14 * 16)
    want, _ = fast_rcnn_loops(x, rois, 3, 5, 0.0625)
    assert (want == 0).any()
    np.testing.assert_array_equal(session.run(None, {"x": x, "rois": rois})[0], want)
