"""The SSD layers of weiliu89/caffe (ssd@4817bf8b): Permute, Normalize, PriorBox, DetectionOutput.

Expected values are worked out by hand from the fork's loops (prior_box_layer.cpp,
normalize_layer.cpp, bbox_util.cpp) for small cases that pin each rule: the stable sort, the
strict confidence threshold, ``overlap <= nms_threshold`` keeps, ``top_k`` before NMS, the
per-image ``keep_top_k`` and the output order. The OpenCV checks run OpenCV 4.x's own Caffe
importer (Debian python3-opencv) on the same prototxt and caffemodel and skip without it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.errors import CaffeCompatError
from layers_util import make_layer, run
from ssd_util import image, opencv_available, opencv_forward, save_net, seeded_net, ssd_prototxt


# ----------------------------------------------------------------------------- Permute

def test_permute_appends_the_axes_the_order_leaves_out_and_inverts_in_backward():
    layer = make_layer('type: "Permute" permute_param { order: 0 order: 2 }', (2, 3, 4, 5))
    assert layer.order == [0, 2, 1, 3]
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    (top,) = run(layer, x)
    assert torch.equal(top, x.permute(0, 2, 1, 3))
    g = torch.randn_like(top)
    top.backward(g)
    assert torch.equal(x.grad, g.permute(0, 2, 1, 3))


@pytest.mark.parametrize("order, message", [("order: 4", "beyond"), ("order: 1 order: 1", "repeats")])
def test_permute_rejects_bad_orders(order, message):
    with pytest.raises(CaffeCompatError, match=message):
        make_layer(f'type: "Permute" permute_param {{ {order} }}', (2, 3, 4, 5))


# ----------------------------------------------------------------------------- Normalize

def _normalize_reference(x: np.ndarray, scale: np.ndarray, across: bool, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    if across:
        norm = np.sqrt((x ** 2).sum(axis=(1, 2, 3), keepdims=True) + eps)
    else:
        norm = np.sqrt((x ** 2).sum(axis=1, keepdims=True) + eps)
    return x / norm * scale.reshape((1, -1, 1, 1) if scale.ndim else ())


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_matches_the_fork_formula_and_has_a_gradient(across, shared):
    text = (f'type: "Normalize" norm_param {{ across_spatial: {str(across).lower()} '
            f'channel_shared: {str(shared).lower()} eps: 0.01 scale_filler {{ type: "constant" value: 20 }} }}')
    layer = make_layer(text, (2, 3, 4, 5))
    assert tuple(layer.blobs[0].shape) == (() if shared else (3,))
    assert torch.all(layer.blobs[0] == 20)
    with torch.no_grad():
        layer.blobs[0].copy_(torch.tensor(1.5) if shared else torch.tensor([0.5, 2.0, -1.0]))
    x = torch.randn(2, 3, 4, 5)
    (top,) = run(layer, x)
    expected = _normalize_reference(x.numpy(), layer.blobs[0].detach().numpy(), across, float(np.float32(0.01)))
    np.testing.assert_allclose(top.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    xd = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    small = make_layer(text, (1, 3, 2, 2))
    assert torch.autograd.gradcheck(lambda v: small(v)[0], (xd,))


def test_normalize_default_scale_is_one():
    layer = make_layer('type: "Normalize"', (1, 4, 2, 2))
    assert layer.blobs[0].shape == () and float(layer.blobs[0].detach()) == 1.0


# ----------------------------------------------------------------------------- PriorBox

def test_prior_box_by_hand():
    """A 2x2 map over an 8x8 image: step 4, centres 2 and 6; min 2, max 8 -> sqrt(16) = 4;
    aspect 4 with flip -> (2*2, 2/2) = 4 x 1 and 1 x 4."""
    layer = make_layer('type: "PriorBox" prior_box_param { min_size: 2 max_size: 8 aspect_ratio: 4 flip: true '
                       'variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }', (1, 1, 2, 2), (1, 3, 8, 8))
    (top,) = run(layer, torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 8, 8))
    assert top.shape == (1, 2, 2 * 2 * 4 * 4)
    boxes = top[0, 0].reshape(2, 2, 4, 4).numpy() * 8  # back to pixels
    cell = boxes[0, 1]  # h = 0, w = 1: centre (6, 2)
    np.testing.assert_allclose(cell, [[5, 1, 7, 3], [4, 0, 8, 4], [4, 1.5, 8, 2.5], [5.5, 0, 6.5, 4]], atol=1e-5)
    np.testing.assert_array_equal(top[0, 1].reshape(-1, 4).numpy(), np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), (16, 1)))


def test_prior_box_clip_img_size_step_offset_and_one_variance():
    layer = make_layer('type: "PriorBox" prior_box_param { min_size: 6 clip: true img_size: 10 step: 5 offset: 0 '
                       'variance: 0.3 }', (1, 1, 2, 2), (1, 3, 99, 77))
    (top,) = run(layer, torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 99, 77))
    boxes = top[0, 0].reshape(4, 4).numpy()
    # centres at (0, 0), (5, 0), (0, 5), (5, 5) in a 10 x 10 image; half size 3; clipped to [0, 1]
    np.testing.assert_allclose(boxes, [[0, 0, .3, .3], [.2, 0, .8, .3], [0, .2, .3, .8], [.2, .2, .8, .8]], atol=1e-6)
    assert torch.all(top[0, 1] == np.float32(0.3))


def test_prior_box_drops_repeated_aspect_ratios_and_ratio_one():
    layer = make_layer('type: "PriorBox" prior_box_param { min_size: 4 aspect_ratio: 1 aspect_ratio: 2 '
                       'aspect_ratio: 2.0000001 flip: false }', (1, 1, 1, 1), (1, 3, 8, 8))
    assert layer.top_shapes() == [(1, 2, 2 * 4)]


@pytest.mark.parametrize("param, message", [
    ("", "min_size"), ("min_size: 4 max_size: 3", "max_size"), ("min_size: 4 variance: 0.1 variance: 0.2", "variance"),
    ("min_size: 4 img_size: 8 img_h: 8 img_w: 8", "img_size"), ("min_size: 4 step: 2 step_h: 2 step_w: 2", "step"),
])
def test_prior_box_rejects_bad_parameters(param, message):
    with pytest.raises(CaffeCompatError, match=message):
        make_layer(f'type: "PriorBox" prior_box_param {{ {param} }}', (1, 1, 2, 2), (1, 3, 8, 8))


# ----------------------------------------------------------------------------- DetectionOutput

def _detect(boxes, scores, params: str, priors=None, code="CORNER", share=True):
    """DetectionOutput on decoded-as-given boxes: CORNER code, zero loc offsets on prior boxes."""
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)  # (N, P, C)
    n, p, c = scores.shape
    loc_classes = 1 if share else c
    prior = np.stack([boxes.reshape(-1), np.full(p * 4, 0.1, np.float32)])[None]
    loc = np.zeros((n, p * loc_classes * 4), np.float32)
    layer = make_layer(f'type: "DetectionOutput" detection_output_param {{ num_classes: {c} code_type: {code} '
                       f'share_location: {str(share).lower()} {params} }}', loc.shape, (n, p * c), prior.shape)
    (top,) = layer(torch.from_numpy(loc), torch.from_numpy(scores.reshape(n, -1)), torch.from_numpy(prior))
    return top[0, 0].numpy()


SQUARES = [[0, 0, 1, 1], [0, 0, 1, 0.5], [0, 0, 1, 1], [2, 2, 3, 3]]  # IoU(0,1) = 0.5, IoU(0,2) = 1


def test_detection_rows_threshold_is_strict_and_ties_keep_the_lower_index():
    scores = np.zeros((1, 4, 2), np.float32)
    scores[0, :, 1] = [0.5, 0.5, 0.5, 0.4]
    top = _detect(SQUARES, scores, "confidence_threshold: 0.4 nms_param { nms_threshold: 0.5 }")
    # box 0 first (tie, lower index); box 1 overlaps it by exactly 0.5 (kept: <=); box 2 by 1
    # (suppressed); box 3 scores 0.4, not > 0.4.
    np.testing.assert_array_equal(top[:, :3], [[0, 1, 0.5], [0, 1, 0.5]])
    np.testing.assert_array_equal(top[:, 3:], [SQUARES[0], SQUARES[1]])


def test_detection_top_k_cuts_before_nms():
    scores = np.zeros((1, 4, 2), np.float32)
    scores[0, :, 1] = [0.9, 0.1, 0.8, 0.7]  # box 2 (0.8) is suppressed by box 0
    top = _detect(SQUARES, scores, "nms_param { nms_threshold: 0.6 top_k: 2 }")
    np.testing.assert_array_equal(top[:, 2], np.float32([0.9]))  # box 3 never was a candidate
    top = _detect(SQUARES, scores, "nms_param { nms_threshold: 0.6 top_k: 3 }")
    np.testing.assert_array_equal(top[:, 2], np.float32([0.9, 0.7]))


def test_detection_keep_top_k_is_per_image_and_output_is_by_class():
    scores = np.zeros((2, 4, 3), np.float32)
    scores[0, :, 1] = [0.3, 0.0, 0.0, 0.6]
    scores[0, :, 2] = [0.5, 0.0, 0.0, 0.6]  # ties with class 1's 0.6: class 1 ranks first
    scores[1, :, 2] = [0.2, 0.0, 0.0, 0.1]
    top = _detect(SQUARES, scores, "confidence_threshold: 0.05 keep_top_k: 2 nms_param { nms_threshold: 0.5 }")
    # image 0 keeps 0.6 (class 1) and 0.6 (class 2), dropping 0.5; rows by class then score
    np.testing.assert_array_equal(top[:, :3], np.float32([[0, 1, 0.6], [0, 2, 0.6], [1, 2, 0.2], [1, 2, 0.1]]))
    top = _detect(SQUARES, scores, "confidence_threshold: 0.05 keep_top_k: 3 nms_param { nms_threshold: 0.5 }")
    np.testing.assert_array_equal(top[:, :3], np.float32([[0, 1, 0.6], [0, 2, 0.6], [0, 2, 0.5], [1, 2, 0.2],
                                                          [1, 2, 0.1]]))


def test_detection_background_is_skipped_and_nothing_found_gives_one_row_per_image():
    scores = np.zeros((2, 4, 2), np.float32)
    scores[:, :, 0] = 0.9
    top = _detect(SQUARES, scores, "confidence_threshold: 0.5")
    np.testing.assert_array_equal(top, [[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]])
    top = _detect(SQUARES, scores, "confidence_threshold: 0.5 background_label_id: 1")
    # class 0 is now a class: boxes 0 and 3 of each image survive NMS (default threshold 0.3)
    np.testing.assert_array_equal(top[:, :2], [[0, 0], [0, 0], [1, 0], [1, 0]])
    np.testing.assert_array_equal(top[:, 3:], [SQUARES[0], SQUARES[3]] * 2)


def test_detection_eta_lowers_the_threshold_after_each_kept_box():
    boxes = [[0, 0, 1, 1], [0, 0, 1, 0.7], [0, 0.4, 1, 1], [0, 0, 0.62, 1]]  # IoU with box 0: .7 .6 .62
    scores = np.zeros((1, 4, 2), np.float32)
    scores[0, :, 1] = [0.9, 0.8, 0.7, 0.6]
    plain = _detect(boxes, scores, "nms_param { nms_threshold: 0.75 }")
    assert len(plain) == 4  # no pair overlaps by more than 0.75
    adaptive = _detect(boxes, scores, "nms_param { nms_threshold: 0.75 eta: 0.9 }")
    # kept box 0 -> 0.675: box 1 (0.7) goes; kept box 2 (0.6) -> 0.6075: box 3 (0.62) goes
    np.testing.assert_array_equal(adaptive[:, 3:], np.float32([boxes[0], boxes[2]]))


def test_detection_inverted_boxes_never_overlap():
    boxes = [[0, 0, 1, 1], [1, 1, 0, 0]]
    scores = np.zeros((1, 2, 2), np.float32)
    scores[0, :, 1] = [0.9, 0.8]
    assert len(_detect(boxes, scores, "nms_param { nms_threshold: 0.0 }")) == 2


def test_detection_decodes_center_size_with_variance():
    prior = np.float32([[0.2, 0.2, 0.6, 0.4]])
    loc = np.float32([[1.0, -1.0, 0.5, 0.0]])
    variances = np.float32([0.1, 0.1, 0.2, 0.2])
    layer = make_layer('type: "DetectionOutput" detection_output_param { num_classes: 2 code_type: CENTER_SIZE }',
                       (1, 4), (1, 2), (1, 2, 4))
    priors = torch.from_numpy(np.stack([prior.reshape(-1), variances])[None])
    (top,) = layer(torch.from_numpy(loc), torch.tensor([[0.2, 0.8]]), priors)
    cx, cy = 0.4 + 0.1 * 1.0 * 0.4, 0.3 + 0.1 * -1.0 * 0.2
    w, h = np.exp(0.2 * 0.5) * 0.4, 0.2
    np.testing.assert_allclose(top[0, 0, 0].numpy(), [0, 1, 0.8, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
                               rtol=1e-6)


def test_detection_clip_is_opencvs_clip_of_the_decoded_boxes():
    boxes = [[-0.5, 0.2, 0.5, 1.5]]
    scores = np.float32([[[0.1, 0.9]]])
    np.testing.assert_array_equal(_detect(boxes, scores, "clip: true")[:, 3:], np.float32([[0, 0.2, 0.5, 1]]))
    np.testing.assert_array_equal(_detect(boxes, scores, "")[:, 3:], np.float32(boxes))


def test_detection_rejects_mismatched_bottoms():
    with pytest.raises(CaffeCompatError, match="priors x 1 x 4"):
        make_layer('type: "DetectionOutput" detection_output_param { num_classes: 2 }', (1, 12), (1, 4), (1, 2, 8))
    with pytest.raises(CaffeCompatError, match="num_classes"):
        make_layer('type: "DetectionOutput"', (1, 8), (1, 4), (1, 2, 8))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2 ** 16), threshold=st.sampled_from([0.0, 0.2, 0.4]),
       nms=st.sampled_from([0.0, 0.3, 0.5, 1.0]), top_k=st.sampled_from([-1, 1, 5]),
       keep=st.sampled_from([-1, 0, 3, 8]), ties=st.booleans())
def test_detection_equals_a_direct_transcription_of_the_fork(seed, threshold, nms, top_k, keep, ties):
    """Against a transcription of DetectionOutputLayer::Forward_cpu's loops (plain Python lists,
    one pair at a time), on random boxes and scores (quantised to force ties when ``ties``)."""
    rng = np.random.default_rng(seed)
    n, p, c = 2, 12, 3
    corners = rng.uniform(0, 1, (p, 2, 2)).astype(np.float32)
    boxes = np.concatenate([corners.min(1), corners.max(1)], 1)
    scores = rng.uniform(0, 1, (n, p, c)).astype(np.float32)
    if ties:
        scores = np.round(scores * 4) / 4
    params = (f"confidence_threshold: {threshold} keep_top_k: {keep} nms_param {{ nms_threshold: {nms} "
              + (f"top_k: {top_k} " if top_k > -1 else "") + "}")
    got = _detect(boxes, scores, params)

    def iou(a, b):
        if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
            return 0.0
        w = np.float32(min(a[2], b[2]) - max(a[0], b[0]))
        h = np.float32(min(a[3], b[3]) - max(a[1], b[1]))
        if not (w > 0 and h > 0):
            return 0.0
        inter = np.float32(w * h)
        size = [np.float32((x[2] - x[0]) * (x[3] - x[1])) for x in (a, b)]
        return np.float32(inter / np.float32(np.float32(size[0] + size[1]) - inter))

    rows = []
    for i in range(n):
        picked = {}
        for label in range(1, c):
            cand = [(scores[i, k, label], k) for k in range(p) if scores[i, k, label] > np.float32(threshold)]
            cand.sort(key=lambda pair: -pair[0])  # Python's sort is stable, as std::stable_sort
            if top_k > -1:
                cand = cand[:top_k]
            kept = []
            for _, k in cand:
                if all(iou(boxes[k], boxes[j]) <= np.float32(nms) for j in kept):
                    kept.append(k)
            picked[label] = kept
        total = sum(len(v) for v in picked.values())
        if keep > -1 and total > keep:
            pairs = [(scores[i, k, label], label, k) for label, ks in picked.items() for k in ks]
            pairs.sort(key=lambda t: -t[0])
            picked = {}
            for _, label, k in pairs[:keep]:
                picked.setdefault(label, []).append(k)
        for label in sorted(picked):
            rows += [[i, label, scores[i, k, label], *boxes[k]] for k in picked[label]]
    expected = np.array(rows, np.float32).reshape(-1, 7) if rows else np.float32([[i] + [-1] * 6 for i in range(n)])
    np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------------------- OpenCV oracle

needs_opencv = pytest.mark.skipif(not opencv_available(), reason="no cv2 with readNetFromCaffe for /usr/bin/python3")


def canonical(rows: np.ndarray) -> np.ndarray:
    """Detection rows sorted by (image, label, descending score, box): OpenCV writes an image's
    rows by descending score, the fork by class first. OpenCV pads its top with all-zero rows
    (up to keep_top_k per image) when it finds fewer; those are dropped."""
    rows = rows.reshape(-1, 7)
    rows = rows[np.any(rows[:, 1:] != 0, axis=1)]
    return rows[np.lexsort((rows[:, 3], -rows[:, 2], rows[:, 1], rows[:, 0]))]


@needs_opencv
@pytest.mark.parametrize("normalize, code, share, detection", [
    ("across_spatial: false", "CENTER_SIZE", True,
     "nms_param { nms_threshold: 0.45 top_k: 50 } keep_top_k: 20 confidence_threshold: 0.3"),
    ("across_spatial: false channel_shared: false", "CORNER", False,
     "nms_param { nms_threshold: 0.3 top_k: 20 } keep_top_k: 200 confidence_threshold: 0.4"),
    # OpenCV 4.6 reads no CORNER_SIZE and wants priors without variances when
    # variance_encoded_in_target: those are checked against the fork's loops and onnxruntime only
    ("across_spatial: true", "CENTER_SIZE", False,
     "nms_param { nms_threshold: 0.5 } keep_top_k: 50 confidence_threshold: 0.35 clip: true"),
])
def test_ssd_detections_equal_opencv(tmp_path, normalize, code, share, detection):
    """Our net and OpenCV's Caffe importer on one prototxt + caffemodel (OpenCV insists on a
    keep_top_k): every blob the SSD layers make, and the same detections (as a set; OpenCV
    orders them by score)."""
    text = ssd_prototxt(detection=detection, code_type=code, share_location=share, normalize=normalize)
    net = seeded_net(text, conf_gain=2)
    x = image(2)
    ours = {k: v.detach().numpy() for k, v in net({"data": torch.from_numpy(x)}, blobs="all").items()}
    prototxt, model = save_net(net, text, tmp_path)
    blobs = ["conv1_norm", "m1_loc_perm", "mbox_priorbox", "detection_out"]
    cv = opencv_forward(prototxt, model, x, blobs, tmp_path)
    for blob in blobs[:-1]:
        np.testing.assert_allclose(cv[blob], ours[blob], rtol=1e-5, atol=1e-6)
    theirs = canonical(cv["detection_out"])
    mine = canonical(ours["detection_out"])
    assert len(mine) > 10
    np.testing.assert_array_equal(theirs[:, :2], mine[:, :2])
    np.testing.assert_allclose(theirs[:, 2:], mine[:, 2:], rtol=1e-5, atol=1e-6)


def test_tiny_ssd_builds_at_any_batch():
    net = seeded_net(ssd_prototxt(detection="confidence_threshold: 0.3"))
    for batch in (1, 3):
        top = net({"data": torch.from_numpy(image(batch))})["detection_out"]
        assert top.shape[:2] == (1, 1) and top.shape[3] == 7
        assert set(top[0, 0, :, 0].tolist()) == set(range(batch))


def test_ssd_caffemodel_round_trips_byte_identically(tmp_path):
    """A caffemodel whose layers carry the fork's parameters (written as Caffe's Net::ToProto of
    the tiny SSD) -> safetensors -> caffemodel with --template: the same bytes; and the fields
    read back with their meaning."""
    from caffe_compat.io.caffemodel import read_caffemodel
    from caffe_compat.net.torch_state import export_torch, import_torch

    text = ssd_prototxt(detection="nms_param { nms_threshold: 0.45 top_k: 50 } keep_top_k: 20 clip: true")
    prototxt, weights = save_net(seeded_net(text), text, tmp_path)
    export_torch(prototxt, weights, tmp_path / "ssd.safetensors")
    import_torch(prototxt, tmp_path / "ssd.safetensors", tmp_path / "same.caffemodel", template=weights)
    assert (tmp_path / "same.caffemodel").read_bytes() == weights.read_bytes()
    layers = {layer.name: layer for layer in read_caffemodel(weights).layer}
    assert list(layers["m2_prior"].prior_box_param.aspect_ratio) == [2.0, 3.0]
    assert list(layers["m1_loc_perm"].permute_param.order) == [0, 2, 3, 1]
    assert layers["conv1_norm"].norm_param.across_spatial is False
    out = layers["detection_out"].detection_output_param
    assert (out.nms_param.top_k, out.keep_top_k, out.clip) == (50, 20, True)
