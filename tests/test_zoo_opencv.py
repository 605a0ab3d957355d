"""benchmarks/zoo.py on small nets of our own, with OpenCV's Caffe importer as the oracle.

OpenCV 4.6 (Debian's python3-opencv, run by /usr/bin/python3) reads ``ceil_mode``, ``ReLU6``,
``ConvolutionDepthwise`` and ``Axpy``; the OpenCV checks skip cleanly where it is not installed.
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
    return argparse.Namespace(seed=0, big=100.0, opencv=opencv, calibrate_bn=False)


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
    assert row.cells["opencv"].startswith("✗ OpenCV: ") and "ReadProtoFromTextFile" in row.cells["opencv"], row.cells


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
        from caffe_compat.io.prototxt import read_net
        from caffe_compat.net.builder import CaffeNet

        net = CaffeNet(read_net(prototxt))
        assert net.blob_shapes["p"] == (1, 1, size, size)


def test_calibrated_batchnorm_normalises_its_input(tmp_path: Path):
    """--calibrate-bn: each BatchNorm's statistics are its input's, so its output is N(0, 1)-like."""
    import numpy as np
    import torch

    from caffe_compat.io.prototxt import parse_net_text
    from caffe_compat.net.builder import CaffeNet
    from caffe_compat.net.registry import TEST

    text = ('input: "data" input_shape { dim: 4 dim: 3 dim: 8 dim: 8 }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 5 kernel_size: 3 } }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "c" top: "bn" batch_norm_param { use_global_stats: true } }\n')
    net = CaffeNet(parse_net_text(text), phase=TEST)
    zoo.randomise(net, 0)
    net.layer_by_name("c").blobs[0].data.mul_(7.0).add_(0.5)  # far from normalised before
    zoo.calibrate_batchnorm(net, 0)
    rng = np.random.default_rng(1000)
    feeds = {"data": torch.from_numpy(rng.standard_normal((4, 3, 8, 8)).astype(np.float32))}
    with torch.no_grad():
        out = net.forward(feeds, blobs=["bn"])["bn"].double()
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(5, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(out.var((0, 2, 3)), torch.ones(5, dtype=torch.float64), atol=1e-2)


def test_im_info_gets_the_image_size_and_other_inputs_noise():
    """Faster R-CNN's im_info (N, 3) is [height, width, scale] of the image: N(0, 1) there
    would make the proposal layer clip every box to nothing."""
    shapes = {"data": (2, 3, 60, 80), "im_info": (2, 3), "extra": (2, 3)}
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(zoo.im_info_feed("im_info", shapes, rng), [[60, 80, 1], [60, 80, 1]])
    extra = zoo.im_info_feed("extra", shapes, rng)
    assert extra.shape == (2, 3) and extra.dtype == np.float32 and len(np.unique(extra)) == 6
