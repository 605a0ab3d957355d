"""benchmarks/zoo.py on small nets of our own, with OpenCV's Caffe importer as the oracle.

OpenCV 4.6 (Debian's python3-opencv, run by /usr/bin/python3) reads ``ceil_mode``, ``ReLU6``,
``ConvolutionDepthwise``, ``Axpy``, ``ROIPooling`` and ``PSROIPooling``; the OpenCV checks skip
cleanly where it is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fork_rcnn import random_rois

from caffe_compat.io.caffemodel import write_caffemodel
from caffe_compat.io.prototxt import parse_net_text, read_net
from caffe_compat.net.builder import CaffeNet

ROOT = Path(__file__).resolve().parents[1]
FORKS = ROOT / "tests" / "fixtures" / "forks"


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


zoo = _load("zoo")
oracle = _load("opencv_oracle")
OPENCV = oracle.available()
needs_opencv = pytest.mark.skipif(OPENCV is None, reason="no OpenCV with a Caffe importer for /usr/bin/python3")


def _args(opencv: bool) -> argparse.Namespace:
    return argparse.Namespace(seed=0, big=100.0, opencv=opencv, weights="calibrated")


def test_zoo_row_of_a_fork_net_passes_every_column(tmp_path: Path):
    row = zoo.one_net(FORKS / "forks.prototxt", "ours", tmp_path, _args(False))
    assert row.layers.startswith("17 (") and "Upsample" in row.layers
    assert row.cells["inspect"] == row.cells["build"] == row.cells["export"] == "✓"
    for key in ("ort1", "ort3", "fold"):
        assert row.cells[key].startswith("✓ "), (key, row.cells[key])
    assert re.fullmatch(r"\d+\.\d", row.seconds)  # seconds of the export, one decimal


def test_zoo_reports_a_failing_net_in_its_row(tmp_path: Path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('input: "data"\ninput_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
                   'layer { name: "n" type: "Normalize" bottom: "data" top: "n" nosuch_param { eps: 1 } }\n')
    row = zoo.one_net(bad, "ours", tmp_path, _args(False))
    assert row.cells["inspect"].startswith("✗ ") and "nosuch_param" in row.cells["inspect"]
    assert "build" not in row.cells


def test_zoo_writes_its_table_with_the_command(tmp_path: Path, monkeypatch):
    folder = tmp_path / "zoo" / "someone+nets"
    folder.mkdir(parents=True)
    shutil.copy(FORKS / "forks.prototxt", folder / "deploy.prototxt")
    (folder / "COMMIT").write_text("abc1234\n")
    out = tmp_path / "zoo.md"
    monkeypatch.setattr(sys, "argv", ["zoo.py", str(tmp_path / "zoo"), "--out", str(out), "--no-opencv"])
    zoo.main()
    text = out.read_text()
    assert f"benchmarks/zoo.py {tmp_path / 'zoo'} --out {out}" in text
    assert "1 of 1 nets" in text
    assert "| deploy | someone/nets @abc1234 | 17 (" in text


def test_zoo_size_runs_a_net_declared_1x1_at_a_real_size(tmp_path: Path):
    """OpenPose's deploys declare a 1 x 1 image (set at run time): --size runs them at HxW, and
    the row says so; a net declaring a real size is left as it is."""
    prototxt = tmp_path / "pose.prototxt"
    prototxt.write_text('input: "image" input_dim: 1 input_dim: 3 input_dim: 1 input_dim: 1\n'
                        'layer { name: "c" type: "Convolution" bottom: "image" top: "c" '
                        'convolution_param { num_output: 4 kernel_size: 3 } }\n'
                        'layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { kernel_size: 2 stride: 2 } }\n')
    args = argparse.Namespace(**{**vars(_args(False)), "size": (12, 10)})
    row = zoo.one_net(prototxt, "ours", tmp_path, args)
    assert row.layers == "at 12x10: 3", row.layers  # the Input layer read_net makes of input_dim
    assert all(row.cells[key].startswith("✓ ") for key in ("ort1", "ort3", "fold")), row.cells
    from caffe_compat.io.prototxt import read_net
    from caffe_compat.net.builder import CaffeNet

    assert CaffeNet(read_net(tmp_path / "pose.prototxt")).blob_shapes["image"] == (1, 3, 12, 10)  # the sized copy
    fixed = tmp_path / "fixed" / "fixed.prototxt"
    fixed.parent.mkdir()
    fixed.write_text(prototxt.read_text().replace("input_dim: 1 input_dim: 1", "input_dim: 6 input_dim: 6"))
    assert zoo.one_net(fixed, "ours", tmp_path, args).layers == "3"


FASTER_RCNN = """
name: "faster_rcnn"
input: "data" input_shape { dim: 1 dim: 3 dim: 64 dim: 80 }
input: "im_info" input_shape { dim: 1 dim: 3 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "features"
  convolution_param { num_output: 8 kernel_size: 16 stride: 16 } }
layer { name: "rpn_cls_score" type: "Convolution" bottom: "features" top: "rpn_cls_score"
  convolution_param { num_output: 18 kernel_size: 1 } }
layer { name: "rpn_bbox_pred" type: "Convolution" bottom: "features" top: "rpn_bbox_pred"
  convolution_param { num_output: 36 kernel_size: 1 } }
layer { name: "rpn_cls_score_reshape" type: "Reshape" bottom: "rpn_cls_score" top: "rpn_cls_score_reshape"
  reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }
layer { name: "rpn_cls_prob" type: "Softmax" bottom: "rpn_cls_score_reshape" top: "rpn_cls_prob" }
layer { name: "rpn_cls_prob_reshape" type: "Reshape" bottom: "rpn_cls_prob" top: "rpn_cls_prob_reshape"
  reshape_param { shape { dim: 0 dim: 18 dim: -1 dim: 0 } } }
layer { name: "proposal" type: "Python" bottom: "rpn_cls_prob_reshape" bottom: "rpn_bbox_pred" bottom: "im_info"
  top: "rois" python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "'feat_stride': 16" } }
layer { name: "roi_pool" type: "ROIPooling" bottom: "features" bottom: "rois" top: "pooled"
  roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 0.0625 } }
layer { name: "cls_score" type: "InnerProduct" bottom: "pooled" top: "cls_score" inner_product_param { num_output: 3 } }
"""


def test_zoo_checks_a_proposal_net_in_two_parts(tmp_path: Path):
    """A Faster R-CNN net: our proposal layer on onnxruntime's own inputs gives its rois, and our
    net on its rois gives its outputs; batch 3 is skipped (one image, as py-faster-rcnn's layer);
    the RPN heads are calibrated so that more than one roi survives NMS."""
    prototxt = tmp_path / "faster.prototxt"
    prototxt.write_text(FASTER_RCNN)
    row = zoo.one_net(prototxt, "ours", tmp_path, _args(False))
    for key in ("ort1", "fold"):
        assert re.fullmatch(r"✓ \S+ \(proposals on onnxruntime's inputs, \d+ rois\)", row.cells[key]), row.cells
        assert int(row.cells[key].split(", ")[1].split()[0]) > 1
    assert row.cells["ort3"].startswith("skipped (batch 1 only")
    assert zoo.passes(row)


def test_zoo_update_keeps_the_rows_of_nets_it_did_not_run(tmp_path: Path, monkeypatch):
    """--update: a second run on another folder adds its rows and command; running a net again
    replaces its row instead of adding one."""
    for repo in ("a+nets", "b+nets"):
        folder = tmp_path / repo / repo
        folder.mkdir(parents=True)
        shutil.copy(FORKS / "forks.prototxt", folder / f"{repo[0]}_deploy.prototxt")
    out = tmp_path / "zoo.md"
    out.write_text(f"prose kept\n{zoo.MARKER}\nold table\n")
    for repo in ("a+nets", "b+nets", "a+nets"):
        monkeypatch.setattr(sys, "argv", ["zoo.py", str(tmp_path / repo), "--out", str(out), "--no-opencv", "--update"])
        zoo.main()
    text = out.read_text()
    assert text.startswith("prose kept\n") and "old table" not in text
    assert "2 of 2 nets" in text and "a/nets 1/1, b/nets 1/1" in text
    assert text.count("| a_deploy | a/nets |") == 1 and text.count("| b_deploy | b/nets |") == 1
    assert sum(line.startswith("- `.venv/bin/python benchmarks/zoo.py") for line in text.splitlines()) == 3
    rows, _ = zoo.read_table(out)
    assert all(zoo.passes(row) for row in rows) and rows[0].cells["ort3"].startswith("✓ ")


@needs_opencv
def test_opencv_agrees_on_fork_fields_it_reads(tmp_path: Path):
    """ceil_mode both ways, ReLU6, ConvolutionDepthwise and Axpy: OpenCV's own code agrees."""
    row = zoo.one_net(FORKS / "opencv_forks.prototxt", "ours", tmp_path, _args(True))
    assert row.cells["opencv"].startswith("✓ "), row.cells
    assert all(row.cells[key].startswith("✓ ") for key in ("ort1", "ort3", "fold")), row.cells


@needs_opencv
def test_opencv_oracle_reports_what_it_cannot_read(tmp_path: Path):
    """OpenCV's caffe.proto has no bn_param: a cell with OpenCV's reason, ours still checked."""
    row = zoo.one_net(FORKS / "segnet_bn.prototxt", "ours", tmp_path, _args(True))
    assert row.cells["ort1"].startswith("✓ ")
    cell = row.cells["opencv"]
    assert cell.startswith("✗ OpenCV: cannot parse the prototxt: ") and 'no field named "bn_param"' in cell, cell


@needs_opencv
def test_opencv_floor_and_ceil_sizes_match_ours(tmp_path: Path):
    """An independent check of the meaning of ceil_mode: OpenCV's output sizes are ours."""
    prototxt = tmp_path / "p.prototxt"
    text = ('input: "data"\ninput_shape { dim: 1 dim: 1 dim: 7 dim: 7 }\n'
            'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: MODE } }\n')
    for mode, size in (("false", 3), ("true", 4)):
        prototxt.write_text(text.replace("MODE", mode))
        x = np.arange(49, dtype=np.float32).reshape(1, 1, 7, 7)
        got, error = oracle.opencv_forward(prototxt, "", {"data": x})
        assert error is None
        assert got["p"].shape == (1, 1, size, size)
        net = CaffeNet(read_net(prototxt))
        assert net.blob_shapes["p"] == (1, 1, size, size)


def test_calibrated_weights_keep_gates_near_their_linear_part(tmp_path: Path):
    """calibrate: a weighted layer feeding a Sigmoid has unit output standard deviation on the
    calibration batch (an SE gate of random He weights sees values in the thousands); layers
    feeding anything else keep their seeded weights."""
    import numpy as np
    import torch

    from caffe_compat.io.prototxt import parse_net_text
    from caffe_compat.net.builder import CaffeNet
    from caffe_compat.net.registry import TEST

    text = ('input: "data" input_shape { dim: 4 dim: 3 dim: 8 dim: 8 }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 5 kernel_size: 3 } }\n'
            'layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "c" top: "fc" inner_product_param { num_output: 6 } }\n'
            'layer { name: "gate" type: "Sigmoid" bottom: "fc" top: "gate" }\n')
    net = CaffeNet(parse_net_text(text), phase=TEST)
    zoo.randomise(net, 0)
    net.layer_by_name("fc").blobs[0].data.mul_(300.0)  # a saturated gate before
    conv = net.layer_by_name("c").blobs[0].detach().clone()
    zoo.calibrate(net, 0)
    rng = np.random.default_rng(1000)
    feeds = {"data": torch.from_numpy(rng.standard_normal((4, 3, 8, 8)).astype(np.float32))}
    with torch.no_grad():
        out = {k: v.double() for k, v in net.forward(feeds, blobs=["fc", "gate"]).items()}
    assert abs(float(out["fc"].std()) - 1.0) < 1e-4
    assert 0.05 < float(out["gate"].min()) and float(out["gate"].max()) < 0.95
    assert torch.equal(net.layer_by_name("c").blobs[0].detach(), conv)


RCNN = """
name: "rcnn_half"
input: "data" input_shape { dim: 1 dim: 3 dim: 24 dim: 20 }
input: "rois" input_shape { dim: 6 dim: 5 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "features"
  convolution_param { num_output: 18 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "roi_pool" type: "ROIPooling" bottom: "features" bottom: "rois" top: "pooled"
  roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.25 } }
layer { name: "fc" type: "InnerProduct" bottom: "pooled" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "psroi" type: "PSROIPooling" bottom: "features" bottom: "rois" top: "ps"
  psroi_pooling_param { spatial_scale: 0.25 output_dim: 2 group_size: 3 } }
layer { name: "vote" type: "Pooling" bottom: "ps" top: "vote" pooling_param { pool: AVE global_pooling: true } }
"""


def test_zoo_feeds_valid_rois(tmp_path: Path):
    """An (R, 5) input named rois gets [index < batch, x1 <= x2, y1 <= y2] inside the image
    (the 4-axis input's 24 x 20 over the pooling layers' spatial_scale 0.25), seeded, at the
    batch asked for; other inputs stay N(0, 1)."""
    net = CaffeNet(zoo.at_batch(parse_net_text(RCNN), 3))
    rois = zoo.feed(net, "rois", np.random.default_rng(0))
    assert rois.shape == (3, 5) and rois.dtype == np.float32
    assert set(rois[:, 0]) <= {0.0, 1.0, 2.0}
    assert (rois[:, 1] <= rois[:, 3]).all() and (rois[:, 2] <= rois[:, 4]).all()
    assert rois[:, 1:].min() >= 0 and (rois[:, [1, 3]] <= 4 * 20 - 1).all() and (rois[:, [2, 4]] <= 4 * 24 - 1).all()
    assert rois[:, 3].max() > 20 and rois[:, 4].max() > 24  # image pixels, not the features' (rois is split)
    np.testing.assert_array_equal(rois, zoo.feed(net, "rois", np.random.default_rng(0)))
    assert zoo.feed(net, "data", np.random.default_rng(0)).shape == (3, 3, 24, 20)


@needs_opencv
def test_opencv_agrees_on_region_pooling(tmp_path: Path):
    """ROIPooling and PSROIPooling: OpenCV's own code gives our numbers on valid ROIs (the zoo
    row) and on ROIs outside the map, malformed or on rounding halves (the direct call)."""
    prototxt = tmp_path / "rcnn.prototxt"
    prototxt.write_text(RCNN)
    row = zoo.one_net(prototxt, "ours", tmp_path, _args(True))
    assert row.layers == "6 (PSROIPooling, ROIPooling)"
    assert all(row.cells[key].startswith("✓ ") for key in ("ort1", "ort3", "fold", "opencv")), row.cells
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 24, 20)).astype(np.float32)
    rois = random_rois(rng, 40, 1, 96, 80)
    text = RCNN.replace("dim: 6 dim: 5", "dim: 40 dim: 5")
    prototxt.write_text(text)
    net = CaffeNet(read_net(prototxt))
    zoo.randomise(net, 0)
    write_caffemodel(tmp_path / "w.caffemodel", net.to_net_parameter())
    with torch.no_grad():
        ours = net({"data": torch.from_numpy(x), "rois": torch.from_numpy(rois)}, blobs=["pooled", "ps"])
    got, error = oracle.opencv_forward(prototxt, tmp_path / "w.caffemodel", {"data": x, "rois": rois},
                                       extra_layers=["roi_pool", "psroi"])
    assert error is None
    np.testing.assert_allclose(got["roi_pool"], ours["pooled"].numpy(), rtol=1e-5, atol=1e-6)  # after a conv
    np.testing.assert_allclose(got["psroi"], ours["ps"].numpy(), rtol=1e-5, atol=1e-6)
    assert (ours["ps"] == 0).any() and (ours["pooled"] == 0).any()


@needs_opencv
def test_opencv_oracle_takes_input_names_with_a_slash(tmp_path: Path):
    """soeaver's mobilenet R-CNN half reads the input 'conv5_5/sep': fed by name all the same."""
    prototxt = tmp_path / "slash.prototxt"
    prototxt.write_text('input: "conv5_5/sep" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
                        'input: "b" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
                        'layer { name: "sum" type: "Eltwise" bottom: "conv5_5/sep" bottom: "b" top: "sum" '
                        'eltwise_param { operation: PROD } }\n')
    a, b = np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3), np.full((1, 2, 3, 3), 2, np.float32)
    got, error = oracle.opencv_forward(prototxt, "", {"conv5_5/sep": a, "b": b})
    assert error is None
    np.testing.assert_array_equal(got["sum"], a * b)


def test_im_info_gets_the_image_size_and_other_inputs_noise():
    """Faster R-CNN's im_info (N, 3) is [height, width, scale] of the image: N(0, 1) there
    would make the proposal layer clip every box to nothing."""
    net = CaffeNet(parse_net_text('input: "data" input_shape { dim: 2 dim: 3 dim: 60 dim: 80 }\n'
                                  'input: "im_info" input_shape { dim: 2 dim: 3 }\n'
                                  'input: "extra" input_shape { dim: 2 dim: 3 }\n'))
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(zoo.feed(net, "im_info", rng), [[60, 80, 1], [60, 80, 1]])
    extra = zoo.feed(net, "extra", rng)
    assert extra.shape == (2, 3) and extra.dtype == np.float32 and len(np.unique(extra)) == 6
