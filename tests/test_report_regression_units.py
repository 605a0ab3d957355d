"""Regression nets report with `test -model M -weights W --report DIR` alone: the output and the
label scale come from the net's own loss; the headline figures are logged; every figure names
its unit; the page's cosmetics (no empty header row, keys wrapped at separators, sane CSV)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.evaluate import regression_loss
from caffe_compat.io.caffemodel import write_caffemodel
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet, load_net
from caffe_compat.net.registry import TEST
from caffe_compat.report.page import key_html

ROOT = Path(__file__).resolve().parents[1]

DATA = """
name: "regress"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { crop_size: 16 mean_file: "@MEAN@" scale: 0.0125 }
  data_param { source: "@SOURCE@" batch_size: 5 backend: LMDB } }
layer { name: "fc_score" type: "InnerProduct" bottom: "data" top: "fc_score"
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.05 }
                        bias_filler { type: "constant" value: 0.2 } } }
"""
# The SCUT-FBP5500 recipes' L1 loss with BVLC layers, here with two Power layers (0.1 × 0.1).
L1 = """
layer { name: "tenth" type: "Power" bottom: "label" top: "tenth" power_param { scale: 0.1 } }
layer { name: "label_score" type: "Power" bottom: "tenth" top: "label_score" power_param { scale: 0.1 } }
layer { name: "label_column" type: "Reshape" bottom: "label_score" top: "label_column"
  reshape_param { shape { dim: 0 dim: 1 } } }
layer { name: "residual" type: "Eltwise" bottom: "fc_score" bottom: "label_column" top: "residual"
  eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
layer { name: "abs_residual" type: "AbsVal" bottom: "residual" top: "abs_residual" }
layer { name: "loss" type: "Reduction" bottom: "abs_residual" top: "loss" loss_weight: 1
  reduction_param { operation: MEAN } }
"""
EUCLIDEAN_SHIFTED = """
layer { name: "label_score" type: "Power" bottom: "label" top: "label_score" power_param { scale: 0.01 shift: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc_score" bottom: "label_score" top: "loss" }
"""
# The same subtraction without a loss behind it is no regression loss.
NO_LOSS = """
layer { name: "label_column" type: "Reshape" bottom: "label" top: "label_column"
  reshape_param { shape { dim: 0 dim: 1 } } }
layer { name: "residual" type: "Eltwise" bottom: "fc_score" bottom: "label_column" top: "residual"
  eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
"""


@pytest.fixture
def fx(fixtures, monkeypatch):
    monkeypatch.chdir(fixtures / "test")
    return fixtures / "test"


def _net(fx: Path, tmp_path: Path, tail: str) -> tuple[Path, Path]:
    text = (DATA + tail).replace("@MEAN@", str(fx / "mean.binaryproto")).replace("@SOURCE@", str(fx / "test_lmdb"))
    (tmp_path / "net.prototxt").write_text(text)
    torch.manual_seed(3)
    write_caffemodel(tmp_path / "net.caffemodel", CaffeNet(parse_net_text(text), TEST).to_net_parameter())
    return tmp_path / "net.prototxt", tmp_path / "net.caffemodel"


def test_l1_net_reports_with_no_flag_but_report(fx, tmp_path):
    model, weights = _net(fx, tmp_path, L1)
    run = CliRunner().invoke(main, ["test", "-model", str(model), "-weights", str(weights), "-iterations", "1",
                                    "--report", str(tmp_path / "r"), "--no-face-flags"])
    assert run.exit_code == 0, run.output
    rows = list(csv.DictReader((tmp_path / "r" / "predictions.csv").open()))
    truth = np.array([float(r["ground_truth"]) for r in rows])
    np.testing.assert_allclose(truth, np.load(fx / "labels.npy") * 0.01, atol=1e-12)
    # the headline figures, as a glog line after Caffe's, equal the report's
    m = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]
    lines = run.output.splitlines()
    last_caffe = max(i for i, line in enumerate(lines) if "caffe.cpp:" in line)
    report_line = next(i for i, line in enumerate(lines) if "] Report: PC = " in line)
    assert report_line > last_caffe and re.match(r"I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ evaluate\.py:1\] ", lines[report_line])
    assert f"MAE = {m['mae']:.4f} label units" in lines[report_line]
    assert f"PC = {m['pearson']:.4f}" in lines[report_line] and f"RMSE = {m['rmse']:.4f}" in lines[report_line]
    info = json.loads((tmp_path / "r" / "report.json").read_text())["info"]
    assert info["label scale"] == "0.01 (from the net's loss)"
    assert "Power layer 'tenth', Power layer 'label_score'" in info["output"]


def test_label_scale_flag_still_wins_and_shifted_powers_are_not_scales(fx, tmp_path):
    model, weights = _net(fx, tmp_path, EUCLIDEAN_SHIFTED)
    net = load_net(model, TEST, weights)
    assert regression_loss(net) is None  # label × 0.01 + 1 is no scale: the user says what it is
    run = CliRunner().invoke(main, ["test", "-model", str(model), "-weights", str(weights), "-iterations", "1",
                                    "--report", str(tmp_path / "r"), "--no-face-flags", "--label-scale", "0.5"])
    assert run.exit_code == 0, run.output
    info = json.loads((tmp_path / "r" / "report.json").read_text())["info"]
    assert info["label scale"] == "0.5 (--label-scale)"


def test_a_subtraction_without_a_loss_is_no_regression(fx, tmp_path):
    model, weights = _net(fx, tmp_path, NO_LOSS)
    assert regression_loss(load_net(model, TEST, weights)) is None


@pytest.mark.parametrize("recipe", ["resnet50_1by2", "resnet50_1by2_cpu", "resnet50"])
def test_the_shipped_scut_recipes_name_their_output_and_scale(fixtures, recipe):
    text = (ROOT / "prototxt" / "scut_fbp5500" / recipe / "train_val.prototxt").read_text()
    found = regression_loss(_shapes_only(text, fixtures))
    assert found is not None and (found.prediction, found.loss, found.label_scale) == ("fc_score", "loss", 0.01)


def _shapes_only(text: str, fixtures: Path):
    """The recipe's TEST net reading the fixture's LMDB (the layers are what is checked)."""
    text = re.sub(r'source: "[^"]*"', f'source: "{fixtures / "test" / "test_lmdb"}"', text)
    text = re.sub(r'mean_file: "[^"]*"\n', "", text)
    text = re.sub(r"crop_size: \d+", "crop_size: 16", text)
    return CaffeNet(parse_net_text(text), TEST)


def test_page_units_headers_keys_and_csv(fx, tmp_path):
    model, weights = _net(fx, tmp_path, L1)
    run = CliRunner().invoke(main, ["test", "-model", str(model), "-weights", str(weights), "-iterations", "1",
                                    "--report", str(tmp_path / "r"), "--no-face-flags"])
    assert run.exit_code == 0, run.output
    page = (tmp_path / "r" / "report.html").read_text()
    md = (tmp_path / "r" / "report.md").read_text()
    unit = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]["unit"]
    five, half = f"{5 * unit:g}", f"{unit / 2:g}"
    assert five != "5" and unit < 1  # labels × 0.01: thresholds are fractions of the score
    for text in (page, md):
        assert f"within {five} label units" in text and "MAE (label units)" in text and "within 5 " not in text
        assert "k (label units)" in text
    assert f"Best: |error| under {half} label units" in page or "Best cases (none within" in page
    assert "<th></th>" not in page and "|  |  |" not in md
    assert re.search(r"gt \d\.\d{3} / pred -?\d+\.\d\d \(error [+-]\d+\.\d\d\)", page)
    for line in (tmp_path / "r" / "predictions.csv").read_text().splitlines()[1:]:
        assert not re.search(r"\d\.\d{10}", line), line  # 2.8, not 2.8000000000000003


def test_key_html_breaks_only_after_separators():
    assert key_html("00000012_AF1234.jpg") == "00000012_<wbr>AF1234.<wbr>jpg"
    assert key_html("a/b<c") == "a/<wbr>b&lt;c"


def test_predict_prints_a_score_for_regression_and_score_nets():
    from caffe_compat.onnx.predict import format_predictions

    assert format_predictions(["a.jpg"], np.array([[2.62]])) == ["a.jpg: score 2.6200"]
    probs = np.zeros((1, 40))
    probs[0, [10, 12]] = 0.5  # half on 70, half on 72
    line = format_predictions(["b.jpg"], probs, top_k=2)[0]
    assert line.startswith("b.jpg: score 71.00 (expected over 60..99); top-2 scores [70: 0.5000, 72: 0.5000]")
    assert format_predictions(["c.jpg"], np.array([[0.1, 0.9]]))[0] == "c.jpg: top-2 [1: 0.9000, 0: 0.1000]"


@pytest.mark.parametrize("side, shown", [(64, 64), (112, 112), (350, 112)])
def test_thumbnails_shrink_but_never_blow_up(side, shown):
    import base64

    import cv2

    from caffe_compat.report.images import thumbnail_uri

    picture = np.random.default_rng(side).integers(0, 256, (side, side // 2 * 2, 3), dtype=np.uint8)
    data = base64.b64decode(thumbnail_uri(picture).split(",", 1)[1])
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert max(decoded.shape[:2]) == shown
