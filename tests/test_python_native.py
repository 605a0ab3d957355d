"""Native versions of ENet's SpatialDropoutLayer and py-faster-rcnn's ProposalLayer
(caffe_compat/net/layers/python_native.py): against literal numpy transcriptions of the
originals, through onnxruntime, and the policy (never imported, one log line when running)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.layers import python_native
from caffe_compat.net.registry import TEST, TRAIN
from caffe_compat.net.user_code import user_code_refused
from caffe_compat.onnx.export import net_to_onnx
from caffe_compat.proto import caffe_pb2

ort = pytest.importorskip("onnxruntime")
_spec = importlib.util.spec_from_file_location(
    "opencv_oracle", Path(__file__).resolve().parents[1] / "benchmarks" / "opencv_oracle.py")
oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle)


def net_of(text: str, phase: int = TEST) -> CaffeNet:
    return CaffeNet(text_format.Parse(text, caffe_pb2.NetParameter()), phase=phase)


def run_onnx(net: CaffeNet, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    model = net_to_onnx(net, dynamic_batch=True)[0]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def dropout_net(param_str: str, shape=(2, 4, 3, 3)) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f"""
input: "x" input_shape {{ {dims} }}
layer {{ name: "drop" type: "Python" bottom: "x" top: "y"
  python_param {{ module: "spatial_dropout" layer: "SpatialDropoutLayer" param_str: "{param_str}" }} }}
"""


TEST_STR = "{'phase': 'TEST', 'p': '0.01'}"  # ENet's deploy prototxt, word for word


def test_spatial_dropout_test_phase_scales_and_exports():
    """The original scales by 1 / (1 - p) in TEST (even in a TRAIN-phase net: param_str decides)."""
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    for phase in (TEST, TRAIN):
        net = net_of(dropout_net(TEST_STR), phase)
        y = net({"x": torch.from_numpy(x)}, blobs=["y"])["y"].detach().numpy()
        np.testing.assert_array_equal(y, x * np.float32(1.0 / (1.0 - 0.01)))  # numpy's float32 product
    onnx_y = run_onnx(net_of(dropout_net(TEST_STR)), {"x": np.concatenate([x, x])})["y"]
    np.testing.assert_allclose(onnx_y, np.concatenate([y, y]), rtol=1e-6)


def test_spatial_dropout_train_drops_whole_channels_with_the_same_mask_backward():
    torch.manual_seed(0)
    net = net_of(dropout_net("{'phase': 'TRAIN', 'p': 0.5}", (8, 16, 4, 4)), TRAIN)
    x = torch.randn(8, 16, 4, 4, requires_grad=True)
    y = net({"x": x}, blobs=["y"])["y"]
    kept = (y != 0).flatten(2).all(2)
    dropped = (y == 0).flatten(2).all(2)
    assert bool((kept | dropped).all()) and 0 < int(dropped.sum()) < 128
    torch.testing.assert_close(y[kept], 2 * x[kept])
    y.backward(torch.ones_like(y))
    mask = kept[:, :, None, None].float().expand_as(x)
    torch.testing.assert_close(x.grad, 2 * mask)
    with pytest.raises(CaffeCompatError, match="'drop'.*phase 'TRAIN'.*only 'TEST' exports"):
        net_to_onnx(net_of(dropout_net("{'phase': 'TRAIN', 'p': 0.5}")), dynamic_batch=True)


@pytest.mark.parametrize("param_str, message", [
    ("__import__('os').system('true')", "not a dict of literals"),
    ("{'phase': 'TEST'}", "needs 'phase' and 'p'"),
    ("{'phase': 'VAL', 'p': 0.1}", "phase must be 'TRAIN' or 'TEST'"),
    ("{'phase': 'TEST', 'p': '1.0'}", r"p must be in \(0, 1\)"),
    ("{'phase': 'TEST', 'p': 'x'}", "is not a number"),
])
def test_spatial_dropout_bad_param_str_is_one_line(param_str, message):
    with pytest.raises(CaffeCompatError, match=f"layer 'drop' \\(type Python\\): .*{message}") as info:
        net_of(dropout_net(param_str.replace("'", "\\'")))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- py-faster-rcnn's ProposalLayer
# A literal Python 3 transcription of rbgirshick/py-faster-rcnn @781a917 (generate_anchors.py,
# bbox_transform.py, py_cpu_nms.py, proposal_layer.py forward with config.py's TEST values).

def orig_generate_anchors(base_size=16, ratios=[0.5, 1, 2], scales=2 ** np.arange(3, 6)):
    base_anchor = np.array([1, 1, base_size, base_size]) - 1
    ratio_anchors = _ratio_enum(base_anchor, ratios)
    return np.vstack([_scale_enum(ratio_anchors[i, :], scales) for i in range(ratio_anchors.shape[0])])


def _whctrs(anchor):
    w = anchor[2] - anchor[0] + 1
    h = anchor[3] - anchor[1] + 1
    return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)


def _mkanchors(ws, hs, x_ctr, y_ctr):
    ws, hs = ws[:, np.newaxis], hs[:, np.newaxis]
    return np.hstack((x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1), x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)))


def _ratio_enum(anchor, ratios):
    w, h, x_ctr, y_ctr = _whctrs(anchor)
    ws = np.round(np.sqrt(w * h / ratios))
    return _mkanchors(ws, np.round(ws * ratios), x_ctr, y_ctr)


def _scale_enum(anchor, scales):
    w, h, x_ctr, y_ctr = _whctrs(anchor)
    return _mkanchors(w * scales, h * scales, x_ctr, y_ctr)


def orig_bbox_transform_inv(boxes, deltas):
    boxes = boxes.astype(deltas.dtype, copy=False)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dx, dy, dw, dh = deltas[:, 0::4], deltas[:, 1::4], deltas[:, 2::4], deltas[:, 3::4]
    pred_ctr_x = dx * widths[:, np.newaxis] + ctr_x[:, np.newaxis]
    pred_ctr_y = dy * heights[:, np.newaxis] + ctr_y[:, np.newaxis]
    pred_w = np.exp(dw) * widths[:, np.newaxis]
    pred_h = np.exp(dh) * heights[:, np.newaxis]
    pred_boxes = np.zeros(deltas.shape, dtype=deltas.dtype)
    pred_boxes[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    pred_boxes[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    pred_boxes[:, 2::4] = pred_ctr_x + 0.5 * pred_w
    pred_boxes[:, 3::4] = pred_ctr_y + 0.5 * pred_h
    return pred_boxes


def orig_clip_boxes(boxes, im_shape):
    boxes[:, 0::4] = np.maximum(np.minimum(boxes[:, 0::4], im_shape[1] - 1), 0)
    boxes[:, 1::4] = np.maximum(np.minimum(boxes[:, 1::4], im_shape[0] - 1), 0)
    boxes[:, 2::4] = np.maximum(np.minimum(boxes[:, 2::4], im_shape[1] - 1), 0)
    boxes[:, 3::4] = np.maximum(np.minimum(boxes[:, 3::4], im_shape[0] - 1), 0)
    return boxes


def orig_py_cpu_nms(dets, thresh):
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def orig_proposal(cls_prob, bbox_pred, im_info, feat_stride=16, scales=(8, 16, 32)):
    pre_nms_topN, post_nms_topN, nms_thresh, min_size = 6000, 300, 0.7, 16
    anchors_ = orig_generate_anchors(scales=np.array(scales))
    num_anchors = anchors_.shape[0]
    scores = cls_prob[:, num_anchors:, :, :]
    im_info = im_info[0, :]
    height, width = scores.shape[-2:]
    shift_x = np.arange(0, width) * feat_stride
    shift_y = np.arange(0, height) * feat_stride
    shift_x, shift_y = np.meshgrid(shift_x, shift_y)
    shifts = np.vstack((shift_x.ravel(), shift_y.ravel(), shift_x.ravel(), shift_y.ravel())).transpose()
    A, K = num_anchors, shifts.shape[0]
    anchors = anchors_.reshape((1, A, 4)) + shifts.reshape((1, K, 4)).transpose((1, 0, 2))
    anchors = anchors.reshape((K * A, 4))
    bbox_deltas = bbox_pred.transpose((0, 2, 3, 1)).reshape((-1, 4))
    scores = scores.transpose((0, 2, 3, 1)).reshape((-1, 1))
    proposals = orig_clip_boxes(orig_bbox_transform_inv(anchors, bbox_deltas), im_info[:2])
    ws = proposals[:, 2] - proposals[:, 0] + 1
    hs = proposals[:, 3] - proposals[:, 1] + 1
    keep = np.where((ws >= min_size * im_info[2]) & (hs >= min_size * im_info[2]))[0]
    proposals, scores = proposals[keep, :], scores[keep]
    order = scores.ravel().argsort()[::-1][:pre_nms_topN]
    proposals, scores = proposals[order, :], scores[order]
    keep = orig_py_cpu_nms(np.hstack((proposals, scores)), nms_thresh)[:post_nms_topN]
    proposals, scores = proposals[keep, :], scores[keep]
    batch_inds = np.zeros((proposals.shape[0], 1), dtype=np.float32)
    return np.hstack((batch_inds, proposals.astype(np.float32, copy=False))), scores


def proposal_net(height: int, width: int, param_str: str = "'feat_stride': 16", anchors: int = 9) -> str:
    return f"""
input: "cls" input_shape {{ dim: 1 dim: {2 * anchors} dim: {height} dim: {width} }}
input: "bbox" input_shape {{ dim: 1 dim: {4 * anchors} dim: {height} dim: {width} }}
input: "im_info" input_shape {{ dim: 1 dim: 3 }}
layer {{ name: "proposal" type: "Python" bottom: "cls" bottom: "bbox" bottom: "im_info" top: "rois" top: "scores"
  python_param {{ module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "{param_str}" }} }}
"""


def proposal_inputs(height: int, width: int, anchors: int = 9, seed: int = 0, scale: float = 1.0):
    """Distinct scores (the original's unstable argsort leaves ties unspecified) and deltas
    that keep most boxes inside the image."""
    rng = np.random.default_rng(seed)
    count = anchors * height * width
    cls = (rng.permutation(2 * count) / (2 * count)).astype(np.float32).reshape(1, 2 * anchors, height, width)
    bbox = (rng.standard_normal((1, 4 * anchors, height, width)) * 0.3).astype(np.float32)
    im_info = np.array([[height * 16, width * 16, scale]], np.float32)
    return {"cls": cls, "bbox": bbox, "im_info": im_info}


def ours(net: CaffeNet, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net({k: torch.from_numpy(v) for k, v in feeds.items()}, blobs=["rois", "scores"])
    return {k: v.numpy() for k, v in out.items()}


def test_default_anchors_are_generate_anchors_output():
    """The code's anchors, which its comment's MATLAB values miss by 1 (Python rounds 11.5 to 12)."""
    layer = net_of(proposal_net(2, 2)).layer_by_name("proposal")
    np.testing.assert_array_equal(layer.anchors, orig_generate_anchors())
    np.testing.assert_array_equal(layer.anchors[[0, 4, 8]], [[-84, -40, 99, 55], [-120, -120, 135, 135],
                                                           [-168, -344, 183, 359]])
    custom = python_native.generate_anchors(16, (0.5, 1, 2), (2, 4, 8, 16, 32))
    np.testing.assert_array_equal(custom, orig_generate_anchors(scales=np.array([2, 4, 8, 16, 32])))


@pytest.mark.parametrize("height, width, scale", [(40, 45, 1.0), (9, 13, 1.6)])
def test_proposal_matches_the_original_code(height, width, scale):
    """40 x 45 x 9 = 16,200 anchors: the pre-NMS top 6000 and the post-NMS 300 both cut."""
    feeds = proposal_inputs(height, width, scale=scale)
    got = ours(net_of(proposal_net(height, width)), feeds)
    rois, scores = orig_proposal(feeds["cls"], feeds["bbox"], feeds["im_info"])
    assert got["rois"].shape == rois.shape and (height < 40 or len(rois) == 300)
    np.testing.assert_allclose(got["rois"], rois, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(got["scores"], scores)


def test_proposal_with_scales_and_ratios_matches_onnxruntime():
    param_str = "{'feat_stride': 8, 'scales': [2, 4, 8, 16, 32], 'ratios': [0.5, 1, 2]}"
    net = net_of(proposal_net(30, 34, param_str.replace("'", "\\'"), anchors=15))
    for seed in range(3):
        feeds = proposal_inputs(30, 34, anchors=15, seed=seed)
        feeds["im_info"][0, :2] = [30 * 8, 34 * 8]
        got, want = run_onnx(net, feeds), ours(net, feeds)
        assert want["rois"].shape[0] > 100
        np.testing.assert_array_equal(got["rois"][:, 0], 0)
        np.testing.assert_allclose(got["rois"], want["rois"], rtol=1e-6, atol=1e-3)
        np.testing.assert_array_equal(got["scores"], want["scores"])


def test_proposal_default_param_str_matches_onnxruntime():
    net = net_of(proposal_net(40, 45))
    feeds = proposal_inputs(40, 45, seed=5, scale=0.8)
    got, want = run_onnx(net, feeds), ours(net, feeds)
    assert want["rois"].shape == (300, 5)
    np.testing.assert_allclose(got["rois"], want["rois"], rtol=1e-6, atol=1e-3)
    np.testing.assert_array_equal(got["scores"], want["scores"])


@pytest.mark.skipif(oracle.available() is None, reason="no OpenCV with a Caffe importer for /usr/bin/python3")
def test_proposal_matches_opencvs_proposal_layer(tmp_path):
    """OpenCV 4.6 cannot create ``type: "Python"`` layers; its own ``Proposal`` type with the
    same settings is the oracle. It has no min-size filter, so the deltas here keep every box
    above 16 pixels; then it gives the same 300 rois in the same order."""
    feeds = proposal_inputs(20, 24, seed=1)
    feeds["bbox"] *= 0.2
    want = ours(net_of(proposal_net(20, 24)), feeds)["rois"]
    assert ((want[:, 3:] - want[:, 1:3] + 1) >= 16).all() and want.shape == (300, 5)
    opencv = proposal_net(20, 24).replace('type: "Python"', 'type: "Proposal"').split("python_param")[0] + (
        "proposal_param { feat_stride: 16 base_size: 16 min_size: 16 ratio: 0.5 ratio: 1 ratio: 2 scale: 8 "
        "scale: 16 scale: 32 pre_nms_topn: 6000 post_nms_topn: 300 nms_thresh: 0.7 } }")
    (tmp_path / "opencv.prototxt").write_text(opencv)
    (tmp_path / "empty.caffemodel").write_bytes(caffe_pb2.NetParameter(name="empty").SerializeToString())
    got, error = oracle.opencv_forward(tmp_path / "opencv.prototxt", tmp_path / "empty.caffemodel", feeds)
    assert error is None, error
    np.testing.assert_allclose(got["proposal"].reshape(want.shape), want, atol=1e-3)


def test_proposal_refuses_a_batch_of_two_and_bad_param_str():
    net = net_of(proposal_net(4, 4))
    feeds = {k: np.concatenate([v, v]) for k, v in proposal_inputs(4, 4).items()}
    with pytest.raises(CaffeCompatError, match="layer 'proposal' .*batch 1 only"):
        ours(net, feeds)
    with pytest.raises(CaffeCompatError, match=r"layer 'proposal' .*key\(s\) 'stride' not known"):
        net_of(proposal_net(4, 4, "'stride': 16"))
    with pytest.raises(CaffeCompatError, match="layer 'proposal' .*scores \\(1, 18, 4, 4\\) must be \\(1, 30"):
        net_of(proposal_net(4, 4, "{\\'feat_stride\\': 16, \\'scales\\': [2, 4, 8, 16, 32]}"))


def test_proposal_onnx_refuses_a_batch_of_two_and_inspect_shows_the_layer(tmp_path):
    net = net_of(proposal_net(4, 4))
    feeds = {k: np.concatenate([v, v]) for k, v in proposal_inputs(4, 4).items()}
    with pytest.raises(Exception, match="proposal/Reshape"):
        run_onnx(net, feeds)
    from click.testing import CliRunner

    from caffe_compat.cli import main

    (tmp_path / "rpn.prototxt").write_text(proposal_net(4, 4))
    said = CliRunner().invoke(main, ["inspect", str(tmp_path / "rpn.prototxt")])
    assert said.exit_code == 0 and "Python (rpn.proposal_layer.ProposalLayer)" in said.output
    assert "(1,5) (1,1,1,1)" in said.output


def test_native_layers_never_import_and_log_once_when_running(caplog, monkeypatch, tmp_path):
    """Read-only commands build them silently; running a net logs one line per layer kind and
    still does not import the module on PYTHONPATH (here one that would fail)."""
    (tmp_path / "rpn").mkdir()
    (tmp_path / "rpn" / "__init__.py").write_text("")
    (tmp_path / "rpn" / "proposal_layer.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(python_native, "_ANNOUNCED", set())
    with caplog.at_level(logging.INFO, logger="caffe_compat"):
        with user_code_refused("inspect"):
            net_of(proposal_net(4, 4))
        net_of(proposal_net(4, 4))
        net_of(proposal_net(4, 4))
    lines = [r.getMessage() for r in caplog.records if r.name == python_native.log.name]
    assert lines == ["Python layer rpn.proposal_layer.ProposalLayer: running caffe-compat's native "
                     "caffe_compat.net.layers.python_native.Proposal, not the module from PYTHONPATH"]
