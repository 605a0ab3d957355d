"""SSD nets (weiliu89/caffe layers) through ONNX: onnxruntime gives our net's detections, in the
same order, at batch 1 and 3 from one dynamic-batch export; and OpenCV's importer agrees."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST
from caffe_compat.onnx.export import net_to_onnx
from ssd_util import image, opencv_available, opencv_forward, save_net, seeded_net, ssd_prototxt
from test_ssd_layers import canonical


def _session(net) -> ort.InferenceSession:
    model, _, inputs = net_to_onnx(net)
    assert inputs[0][1][0] == "N"  # dynamic batch
    assert "NonMaxSuppression" in {node.op_type for node in model.graph.node}
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _same_detections(net, session, batch: int) -> np.ndarray:
    x = image(batch, seed=batch)
    ours = net({"data": torch.from_numpy(x)})["detection_out"].detach().numpy()
    (got,) = session.run(["detection_out"], {"data": x})
    assert got.shape == ours.shape
    np.testing.assert_array_equal(got[..., :2], ours[..., :2])  # images and labels, in order
    np.testing.assert_allclose(got, ours, rtol=1e-5, atol=1e-6)
    return ours


DETECTIONS = [
    "nms_param { nms_threshold: 0.45 top_k: 50 } keep_top_k: 20 confidence_threshold: 0.3",
    "nms_param { nms_threshold: 0.3 } confidence_threshold: 0.5 variance_encoded_in_target: true clip: true",
    "nms_param { nms_threshold: 1.5 top_k: 5 } keep_top_k: 7",
]
CASES = [(code, share) for code in ("CENTER_SIZE", "CORNER", "CORNER_SIZE") for share in (True, False)]


@pytest.mark.parametrize("code, share, detection",
                         [(code, share, DETECTIONS[i % 3]) for i, (code, share) in enumerate(CASES)])
def test_onnxruntime_gives_the_same_detections_in_the_same_order(code, share, detection):
    net = seeded_net(ssd_prototxt(detection=detection, code_type=code, share_location=share), conf_gain=2)
    session = _session(net)
    for batch in (1, 3):
        rows = _same_detections(net, session, batch)
        assert rows.shape[2] > batch  # something was detected


def test_nothing_detected_gives_one_row_per_image_in_onnx_too():
    net = seeded_net(ssd_prototxt(detection="confidence_threshold: 0.999"))
    session = _session(net)
    for batch in (1, 3):
        rows = _same_detections(net, session, batch)
        np.testing.assert_array_equal(rows[0, 0, :, 1:], -1)


def _detection_only(params: str, loc: np.ndarray, conf: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, ...]:
    """A net of the DetectionOutput layer alone on these bottoms: our forward, and onnxruntime's
    run of its dynamic-batch export."""
    shapes = {"loc": loc.shape, "conf": conf.shape, "prior": prior.shape}
    text = "".join(f'layer {{ name: "{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
                   + " ".join(f"dim: {d}" for d in v) + " } } }\n" for k, v in shapes.items())
    text += ('layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det" '
             f"detection_output_param {{ {params} }} }}")
    net = CaffeNet(parse_net_text(text), phase=TEST)
    feeds = {"loc": loc, "conf": conf, "prior": prior}
    ours = net({k: torch.from_numpy(v) for k, v in feeds.items()})["det"].numpy()
    model, _, _ = net_to_onnx(net, dynamic_inputs=["loc", "conf"])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return ours, session.run(["det"], feeds)[0]


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2 ** 16), levels=st.sampled_from([2, 4, 1000]), keep=st.sampled_from([-1, 0, 4, 30]),
       top_k=st.sampled_from([-1, 3, 40]), nms=st.sampled_from([0.0, 0.3, 0.7]), share=st.booleans(),
       batch=st.sampled_from([1, 3]))
def test_ties_and_cuts_follow_the_fork_in_onnx(seed, levels, keep, top_k, nms, share, batch):
    """Scores on a few ``levels`` force ties inside a class and across classes; onnxruntime must
    break them, cut to top_k and keep_top_k, and order the rows as the fork's stable sorts do."""
    rng = np.random.default_rng(seed)
    p, c = 30, 4
    loc_classes = 1 if share else c
    corners = rng.uniform(0, 1, (p, 2, 2)).astype(np.float32)
    prior = np.stack([np.concatenate([corners.min(1), corners.max(1)], 1).reshape(-1),
                      np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), p)])[None]
    loc = rng.normal(0, 1, (batch, p * loc_classes * 4)).astype(np.float32)
    conf = (np.round(rng.uniform(0, 1, (batch, p * c)) * levels) / levels).astype(np.float32)
    params = (f"num_classes: {c} share_location: {str(share).lower()} code_type: CENTER_SIZE keep_top_k: {keep} "
              f"confidence_threshold: 0.2 nms_param {{ nms_threshold: {nms} "
              + (f"top_k: {top_k} " if top_k > -1 else "") + "}")
    ours, got = _detection_only(params, loc, conf, prior)
    assert got.shape == ours.shape
    np.testing.assert_array_equal(got[..., :3], ours[..., :3])  # images, labels, scores in order
    np.testing.assert_allclose(got, ours, rtol=1e-5, atol=1e-6)


def test_adaptive_nms_is_refused_with_a_clear_error():
    net = seeded_net(ssd_prototxt(detection="nms_param { nms_threshold: 0.7 eta: 0.9 }"))
    with pytest.raises(CaffeCompatError, match="layer 'detection_out'.*eta"):
        net_to_onnx(net)


def test_fp16_export_keeps_the_detections():
    net = seeded_net(ssd_prototxt(detection="keep_top_k: 20 confidence_threshold: 0.3"), conf_gain=2)
    model, _, _ = net_to_onnx(net, fp16=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = image(1)
    ours = net({"data": torch.from_numpy(x)})["detection_out"].detach().numpy()
    (got,) = session.run(["detection_out"], {"data": x})
    assert got.shape[3] == 7 and abs(got.shape[2] - ours.shape[2]) <= 2  # fp16 scores move a little
    assert set(got[0, 0, :, 1]) <= set(range(1, 4))


@pytest.mark.skipif(not opencv_available(), reason="no cv2 with readNetFromCaffe for /usr/bin/python3")
def test_onnxruntime_equals_opencv(tmp_path):
    text = ssd_prototxt(detection="nms_param { nms_threshold: 0.45 top_k: 100 } keep_top_k: 30 "
                                  "confidence_threshold: 0.3", normalize="across_spatial: false channel_shared: false")
    net = seeded_net(text, conf_gain=2)
    prototxt, model = save_net(net, text, tmp_path)
    x = image(3)
    (got,) = _session(net).run(["detection_out"], {"data": x})
    cv = canonical(opencv_forward(prototxt, model, x, ["detection_out"], tmp_path)["detection_out"])
    mine = canonical(got)
    assert len(mine) > 30
    np.testing.assert_array_equal(cv[:, :2], mine[:, :2])
    np.testing.assert_allclose(cv[:, 2:], mine[:, 2:], rtol=1e-5, atol=1e-6)
