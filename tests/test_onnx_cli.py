"""`export-onnx` / `predict` on a small 40-class score net, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.data.transformer import DataTransformer
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.blob import write_binaryproto
from caffe_compat.io.caffemodel import write_caffemodel
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.onnx.export import export_onnx
from caffe_compat.onnx.predict import predict
from caffe_compat.proto import caffe_pb2
from caffe_compat.report import expected_scores

SCORE_NET = """
name: "score40"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc40" type: "InnerProduct" bottom: "pool" top: "fc40"
  inner_product_param { num_output: 40 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "fc40" top: "prob" }
"""


@pytest.fixture()
def score_net(tmp_path: Path) -> tuple[Path, Path, CaffeNet]:
    torch.manual_seed(0)
    net = CaffeNet(parse_net_text(SCORE_NET))
    with torch.no_grad():  # trained-looking BatchNorm sums: scaled by a factor, like Caffe's
        bn = net.layer_by_name("bn")
        bn.blobs[0].copy_(torch.rand(6) * 999)
        bn.blobs[1].copy_(torch.rand(6) * 999 + 1)
        bn.blobs[2].fill_(999.0)
    (tmp_path / "deploy.prototxt").write_text(SCORE_NET)
    write_caffemodel(tmp_path / "w.caffemodel", net.to_net_parameter())
    return tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel", net


def test_predict_matches_caffenet_with_mean_file(score_net, tmp_path: Path):
    deploy, weights, net = score_net
    rng = np.random.default_rng(3)
    mean = rng.uniform(0, 255, (3, 10, 10)).astype(np.float32)
    write_binaryproto(tmp_path / "mean.binaryproto", mean[None])
    images = []
    for i in range(3):
        images.append(tmp_path / f"im{i}.png")
        cv2.imwrite(str(images[-1]), rng.integers(0, 256, (13 + i, 17, 3), dtype=np.uint8))
    export_onnx(deploy, weights, tmp_path / "net.onnx")
    probs = predict(tmp_path / "net.onnx", images, tmp_path / "mean.binaryproto", batch_size=2)
    assert probs.shape == (3, 40)
    transformer = DataTransformer(caffe_pb2.TransformationParameter(crop_size=8), mean=mean)
    x = np.stack([transformer(cv2.resize(cv2.imread(str(p)), (10, 10)).transpose(2, 0, 1)) for p in images])
    with torch.no_grad():
        want = net({"data": torch.from_numpy(x)})["prob"].numpy()
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)

    result = CliRunner().invoke(main, ["predict", "-onnx", str(tmp_path / "net.onnx"), "-mean_file",
                                       str(tmp_path / "mean.binaryproto"), "--top_k", "3", *map(str, images)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3
    score = expected_scores(want)[0]
    assert f": score {score:.2f} (expected over 60..99); top-3 scores [" in lines[0]


PLUGIN_LAYER = """
from caffe_compat.net.layers.activations import NeuronLayer
from caffe_compat.net.registry import register_layer


@register_layer("PlusOneForTest")
class PlusOne(NeuronLayer):
    def forward(self, x):
        return (x + 1,)
"""

PLUGIN_CONVERTER = """
import numpy as np

from caffe_compat.onnx.converters import add_converter


@add_converter("PlusOneForTest")
def plus_one(e):
    e.node("Add", [e.bottom(), e.const("one", np.float32(1.0))], top=0)
"""


def test_plugins_bring_user_layers_and_converters(tmp_path: Path, monkeypatch):
    """A user layer without a converter stops the export naming the layer, its type and the
    supported list; `--plugins` with a module that adds the converter exports it."""
    (tmp_path / "plus_one_layer.py").write_text(PLUGIN_LAYER)
    (tmp_path / "plus_one_onnx.py").write_text(PLUGIN_CONVERTER)
    monkeypatch.chdir(tmp_path)  # plugin module names resolve from the current folder, like python -m
    text = SCORE_NET.replace('type: "ReLU"', 'type: "PlusOneForTest"')
    (tmp_path / "net.prototxt").write_text(text)
    write_caffemodel(tmp_path / "w.caffemodel", CaffeNet(parse_net_text(SCORE_NET)).to_net_parameter())
    runner = CliRunner()
    base = ["export-onnx", "--model", "net.prototxt", "--weights", "w.caffemodel", "-o", "out.onnx"]
    result = runner.invoke(main, base)
    assert result.exit_code == 1 and "unknown type 'PlusOneForTest'" in result.output
    result = runner.invoke(main, [*base, "--plugins", "plus_one_layer"])
    assert result.exit_code == 1
    assert "layer 'relu': type 'PlusOneForTest' has no ONNX converter" in result.output
    assert "Convolution" in result.output and "Traceback" not in result.output
    assert list(tmp_path.glob("*.onnx*")) == []  # nothing half-written
    result = runner.invoke(main, [*base, "--plugins", "plus_one_layer,plus_one_onnx.py", "--verify"])
    assert result.exit_code == 0, result.output
    assert "Add" in result.output and (tmp_path / "out.onnx").is_file()
    line = next(x for x in result.output.splitlines() if x.startswith("max |onnxruntime - CaffeNet|"))
    assert float(line.rsplit(" ", 1)[1]) < 1e-5
    result = runner.invoke(main, [*base, "--plugins", "no_such_module_xyz"])
    assert result.exit_code == 1 and "--plugins: cannot import 'no_such_module_xyz'" in result.output


@pytest.mark.parametrize("flags, message", [
    (["--opset", "9"], "--opset 9 is not supported"),
    (["--batch", "many"], "--batch must be 'dynamic', 'prototxt' or a positive number"),
    (["--batch", "0"], "--batch must be 'dynamic', 'prototxt' or a positive number"),
])
def test_bad_export_flags(score_net, tmp_path: Path, flags, message):
    deploy, weights, _ = score_net
    result = CliRunner().invoke(main, ["export-onnx", "--model", str(deploy), "--weights", str(weights),
                                       "-o", str(tmp_path / "o.onnx"), *flags])
    assert result.exit_code == 1 and message in result.output, result.output


def test_predict_errors(score_net, tmp_path: Path):
    deploy, weights, _ = score_net
    with pytest.raises(CaffeCompatError, match="no such ONNX model"):
        predict(tmp_path / "missing.onnx", ["x.jpg"])
    export_onnx(deploy, weights, tmp_path / "net.onnx")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(CaffeCompatError, match="bad.jpg"):
        predict(tmp_path / "net.onnx", [tmp_path / "bad.jpg"])
    with pytest.raises(CaffeCompatError, match="unknown provider"):
        predict(tmp_path / "net.onnx", [tmp_path / "bad.jpg"], providers=["quantum"])
    (tmp_path / "broken.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(CaffeCompatError, match="cannot load it"):
        predict(tmp_path / "broken.onnx", [tmp_path / "bad.jpg"])


def test_fixed_batch_model_pads_the_last_chunk(score_net, tmp_path: Path):
    deploy, weights, _ = score_net
    images = []
    for i in range(3):
        images.append(tmp_path / f"im{i}.png")
        cv2.imwrite(str(images[-1]), np.full((8, 8, 3), 40 * i, np.uint8))
    export_onnx(deploy, weights, tmp_path / "dyn.onnx")
    export_onnx(deploy, weights, tmp_path / "fixed.onnx", batch=2)
    np.testing.assert_allclose(predict(tmp_path / "fixed.onnx", images), predict(tmp_path / "dyn.onnx", images),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fp16, tolerance", [(False, 1e-6), (True, 2e-3)])
def test_export_verify_reports_the_difference(score_net, tmp_path: Path, fp16: bool, tolerance: float):
    deploy, weights, _ = score_net
    flags = ["--fp16"] if fp16 else []
    result = CliRunner().invoke(main, ["export-onnx", "--model", str(deploy), "--weights", str(weights),
                                       "-o", str(tmp_path / "v.onnx"), "--verify", *flags])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("max |onnxruntime - CaffeNet|"))
    assert line.split(": ")[1].startswith("prob ") and float(line.rsplit(" ", 1)[1]) < tolerance
