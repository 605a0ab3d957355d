"""Caffe's input transform inside the exported model, read back by `predict` (no flags needed),
and the PyTorch engine (`predict --engine torch`) on the CPU: eager, bf16 and compiled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.blob import write_binaryproto
from caffe_compat.onnx.engines import TorchEngine
from caffe_compat.onnx.export import export_onnx
from caffe_compat.onnx.predict import predict
from caffe_compat.onnx.transform import METADATA_KEY
from caffe_compat.report import expected_scores
from tests.test_onnx_cli import score_net  # noqa: F401  (fixture)

TOL = 1e-5


def _images(folder: Path, count: int = 3) -> list[Path]:
    rng = np.random.default_rng(3)
    paths = []
    for i in range(count):
        paths.append(folder / f"im{i}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, (13 + i, 17, 3), dtype=np.uint8))
    return paths


@pytest.mark.parametrize("input_format, uint8", [("bgr", False), ("bgr", True), ("rgb", True)])
def test_transform_in_the_model_needs_no_predict_flags(score_net, tmp_path: Path, input_format: str,  # noqa: F811
                                                       uint8: bool):
    deploy, weights, _ = score_net
    mean = np.random.default_rng(4).uniform(0, 255, (3, 10, 10)).astype(np.float32)
    write_binaryproto(tmp_path / "mean.binaryproto", mean[None])
    images = _images(tmp_path)
    export_onnx(deploy, weights, tmp_path / "plain.onnx")
    want = predict(tmp_path / "plain.onnx", images, tmp_path / "mean.binaryproto", scale=0.0125)
    result = export_onnx(deploy, weights, tmp_path / "baked.onnx", mean_file=tmp_path / "mean.binaryproto",
                         scale=0.0125, input_format=input_format, input_uint8=uint8)
    assert any("input transform in the graph" in note for note in result.notes)
    model = onnx.load(str(tmp_path / "baked.onnx"))
    record = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert record == {"input": "data", "dtype": "uint8" if uint8 else "float32", "channel_order": input_format,
                      "resize": [10, 10], "crop_size": 8, "mean": "mean.binaryproto", "scale": 0.0125}
    elem = model.graph.input[0].type.tensor_type.elem_type
    assert elem == (onnx.TensorProto.UINT8 if uint8 else onnx.TensorProto.FLOAT)
    got = predict(tmp_path / "baked.onnx", images)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    with pytest.raises(CaffeCompatError, match="drop --mean_file/--mean_value/--scale"):
        predict(tmp_path / "baked.onnx", images, tmp_path / "mean.binaryproto")


def test_mean_value_scale_and_resize_flags(score_net, tmp_path: Path):  # noqa: F811
    deploy, weights, _ = score_net
    images = _images(tmp_path)
    export_onnx(deploy, weights, tmp_path / "plain.onnx")
    want = predict(tmp_path / "plain.onnx", images, mean_value=(100, 110, 120), scale=0.5, resize=(12, 12))
    runner = CliRunner()
    result = runner.invoke(main, ["export-onnx", "--model", str(deploy), "--weights", str(weights), "-o",
                                  str(tmp_path / "b.onnx"), "--mean_value", "100,110,120", "--scale", "0.5",
                                  "--resize", "12", "--input-uint8", "--verify"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("max |onnxruntime - CaffeNet|"))
    assert float(line.rsplit(" ", 1)[1]) < 1e-5  # random uint8 pixels through the graph's transform
    np.testing.assert_allclose(predict(tmp_path / "b.onnx", images), want, rtol=0, atol=1e-6)
    for flags, message in ((["--mean_value", "1,2"], "give 1 value or one per channel"),
                           (["--input-format", "rgb", "--mean_file", str(tmp_path / "none.binaryproto")],
                            "none.binaryproto")):
        result = runner.invoke(main, ["export-onnx", "--model", str(deploy), "--weights", str(weights), "-o",
                                      str(tmp_path / "c.onnx"), *flags])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "c.onnx").exists()


@pytest.fixture()
def test_set(fixtures: Path, tmp_path: Path, monkeypatch) -> Path:
    """tests/fixtures/test, where `caffe test` ran (its prototxt paths are relative to it)."""
    monkeypatch.chdir(fixtures / "test")
    return fixtures / "test"


def _listed_images(folder: Path) -> list[str]:
    return [f"images/{line.split()[0]}" for line in (folder / "test_list.txt").read_text().splitlines()]


def test_train_val_transform_param_goes_into_the_model(test_set: Path, tmp_path: Path):
    """export-onnx of the train_val (Data layer: crop 16, mean_file, scale 0.0125), then predict
    with no flags: Caffe's probabilities and expected scores for the 12 list images."""
    runner = CliRunner()
    path = tmp_path / "model.onnx"
    result = runner.invoke(main, ["export-onnx", "--model", "test.prototxt", "--weights", "weights.caffemodel",
                                  "-o", str(path), "--verify"])
    assert result.exit_code == 0, result.output
    assert "transform_param is in the graph" in result.output and "host: resize to 20x20, centre crop 16" in result.output
    images = _listed_images(test_set)
    probs = predict(path, images)
    np.testing.assert_allclose(probs, np.load(test_set / "probs.npy"), rtol=0, atol=TOL)
    expected = json.loads((test_set / "summary.json").read_text())["expected_scores"]  # caffe test's
    result = runner.invoke(main, ["predict", "--onnx", str(path), *images])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 12
    for line, score in zip(lines, expected_scores(np.load(test_set / "probs.npy"))):
        assert f": score {score:.2f} (expected over 60..99)" in line
    np.testing.assert_allclose(expected_scores(probs), expected, atol=1e-3)


@pytest.mark.parametrize("bf16, tolerance", [(False, TOL), (True, 3e-2)])
def test_torch_engine_gives_caffes_probabilities(test_set: Path, bf16: bool, tolerance: float):
    """The CaffeNet engine (BatchNorm folded, channels_last, the transform on the device) on the CPU."""
    engine = TorchEngine("test.prototxt", "weights.caffemodel", bf16=bf16)
    assert engine.get_providers() == [f"torch cpu{' bf16' if bf16 else ''} channels_last"]
    probs = predict(None, _listed_images(test_set), session=engine, batch_size=5)
    np.testing.assert_allclose(probs, np.load(test_set / "probs.npy"), rtol=0, atol=tolerance)


@pytest.mark.slow  # inductor compiles C++ for the CPU: ~17 s on the 2-core box
def test_torch_engine_compiled_at_a_fixed_batch(test_set: Path):
    """torch.compile(mode="reduce-overhead") at batch 5: 12 images = 3 calls, the last one padded."""
    runner = CliRunner()
    images = _listed_images(test_set)
    result = runner.invoke(main, ["predict", "--engine", "torch", "--model", "test.prototxt", "--weights",
                                  "weights.caffemodel", "--compile", "--batch_size", "5", *images])
    assert result.exit_code == 0, result.output
    scores = [float(line.rsplit(" ", 1)[1]) for line in result.output.strip().splitlines()[-12:]]
    np.testing.assert_allclose(scores, expected_scores(np.load(test_set / "probs.npy")), atol=0.006)


def test_torch_engine_flag_errors(test_set: Path, tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(main, ["predict", "--engine", "torch", "images/face_000.png"])
    assert result.exit_code == 1 and "--engine torch needs --model and --weights" in result.output
    result = runner.invoke(main, ["predict", "images/face_000.png"])
    assert result.exit_code == 1 and "--onnx is required" in result.output
    shutil.copy(test_set / "weights.caffemodel", tmp_path / "w.caffemodel")
    if not torch.cuda.is_available():
        result = runner.invoke(main, ["predict", "--engine", "torch", "--model", "test.prototxt", "--weights",
                                      str(tmp_path / "w.caffemodel"), "--gpu", "0", "images/face_000.png"])
        assert result.exit_code == 1 and "no CUDA device" in result.output


def test_provider_fallback_is_one_warning_naming_the_provider_used(score_net, tmp_path: Path):  # noqa: F811
    import onnxruntime as ort

    deploy, weights, _ = score_net
    export_onnx(deploy, weights, tmp_path / "n.onnx")
    images = [str(p) for p in _images(tmp_path, 1)]
    runner = CliRunner()
    result = runner.invoke(main, ["predict", "--onnx", str(tmp_path / "n.onnx"), "--mean_value", "1", *images])
    assert result.exit_code == 0 and "ExecutionProvider" not in result.output  # the default: no warning
    result = runner.invoke(main, ["predict", "--onnx", str(tmp_path / "n.onnx"), "--mean_value", "1",
                                  "--providers", "cuda,cpu", *images])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "ExecutionProvider" in line]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith("W")
        assert "on CPUExecutionProvider: CUDAExecutionProvider is not available here" in warnings[0]
        assert "caffe-compat[gpu]" in warnings[0]
