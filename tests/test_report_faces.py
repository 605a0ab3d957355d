"""Quality flags: the image measures, the face rules, and cv2.FaceDetectorYN on a stand-in model.

No face model can be downloaded here, so `fake_yunet` builds an ONNX graph with YuNet's outputs
(cls/obj/bbox/kps at strides 8, 16, 32) that "finds" a 64x64 face on every bright 32x32 cell:
the real detector code of OpenCV runs on it, as it would on OpenCV Zoo's model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.report.faces import (Face, YuNetDetector, face_flags, image_flags, open_detector, quality_flags,
                                       sharpness)


def fake_yunet(path, nose_dx: float = 0.0):
    """A YuNet-shaped ONNX model: a face (box 64x64, landmarks around the cell) per bright cell of
    stride 32; ``nose_dx`` moves the nose sideways (in cells) to make a profile."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    const("shape", np.array([1, -1, 1], np.int64))
    #            right eye   left eye    nose        mouth right  mouth left
    landmarks = [-0.5, -0.3, 0.5, -0.3, nose_dx, 0.0, -0.4, 0.4, 0.4, 0.4]
    for s in (8, 16, 32):
        nodes += [helper.make_node("AveragePool", ["input"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]),
                  helper.make_node("ReduceMean", [f"p{s}"], [f"m{s}"], axes=[1], keepdims=1),
                  helper.make_node("Reshape", [f"m{s}", "shape"], [f"f{s}"]),
                  helper.make_node("Mul", [f"f{s}", const(f"a{s}", np.float32(0.1 if s == 32 else 0))], [f"g{s}"]),
                  helper.make_node("Sub", [f"g{s}", const(f"b{s}", np.float32(20))], [f"h{s}"]),
                  helper.make_node("Sigmoid", [f"h{s}"], [f"cls_{s}"]),
                  helper.make_node("Identity", [f"cls_{s}"], [f"obj_{s}"]),
                  helper.make_node("Mul", [f"f{s}", const(f"z{s}", np.float32(0))], [f"zero{s}"])]
        parts = []
        for j, value in enumerate([0.0, 0.0, float(np.log(2)), float(np.log(2)), *landmarks]):
            nodes.append(helper.make_node("Add", [f"zero{s}", const(f"v{s}_{j}", np.float32(value))], [f"c{s}_{j}"]))
            parts.append(f"c{s}_{j}")
        nodes += [helper.make_node("Concat", parts[:4], [f"bbox_{s}"], axis=2),
                  helper.make_node("Concat", parts[4:], [f"kps_{s}"], axis=2)]
    outputs = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)]
    graph = helper.make_graph(nodes, "fake_yunet", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                  [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _picture(size: int, cells=()) -> np.ndarray:
    """Mid-grey noise (sharp, well lit) with bright 32x32 cells at (row, col) cell positions."""
    rng = np.random.default_rng(0)
    image = rng.integers(60, 140, (size, size, 3), dtype=np.uint8)
    for r, c in cells:
        image[32 * r:32 * r + 32, 32 * c:32 * c + 32] = 255
    return image


def test_image_flags():
    rng = np.random.default_rng(1)
    sharp = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert image_flags(sharp) == []
    assert "blur" in image_flags(np.full((64, 64, 3), 128, np.uint8))
    assert image_flags(sharp // 8) == ["dark"] or image_flags(sharp // 8) == ["blur", "dark"]
    assert "overexposed" in image_flags(np.clip(sharp.astype(int) + 200, 0, 255).astype(np.uint8))
    import cv2

    assert "blur" in image_flags(cv2.GaussianBlur(sharp, (0, 0), 4))  # the same picture out of focus
    assert sharpness(cv2.GaussianBlur(sharp, (0, 0), 4)) < sharpness(cv2.GaussianBlur(sharp, (0, 0), 1)) < sharpness(sharp)


def test_face_rules():
    assert face_flags([], 100, 100) == ["no_face"]
    assert face_flags([Face((20, 20, 60, 60))], 100, 100) == []
    assert face_flags([Face((20, 20, 60, 60)), Face((0, 0, 30, 30))], 100, 100) == ["several_faces"]
    assert face_flags([Face((40, 40, 10, 10))], 100, 100) == ["small_face"]
    assert face_flags([Face((-20, 10, 60, 60))], 100, 100) == ["cut_off"]
    assert face_flags([Face((20, 20, 60, 60), profile=True)], 100, 100) == ["profile"]


def test_yunet_detector_flags(tmp_path):
    frontal = YuNetDetector(fake_yunet(tmp_path / "yunet.onnx"))
    profile = YuNetDetector(fake_yunet(tmp_path / "side.onnx", nose_dx=0.6))
    pictures = [_picture(128, [(1, 2)]), _picture(128), _picture(128, [(1, 1), (2, 3)]), _picture(128, [(0, 0)]),
                _picture(512, [(5, 5)])]
    flags = quality_flags(pictures, frontal)
    assert flags == [(), ("no_face",), ("several_faces",), ("cut_off",), ("small_face",)]
    assert quality_flags(pictures[:1], profile) == [("profile",)]


def test_open_detector(tmp_path):
    detector, note = open_detector(fake_yunet(tmp_path / "yunet.onnx"))
    assert detector is not None and "YuNet (yunet.onnx)" in note
    detector, note = open_detector(None)  # dlib-bin is a dependency: its HOG detector is the default
    assert detector is not None and note.startswith("faces found with dlib ")
    with pytest.raises(CaffeCompatError, match="no such file"):
        open_detector(tmp_path / "nope.onnx")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(CaffeCompatError, match="expected a YuNet .onnx model or a Haar cascade .xml"):
        open_detector(tmp_path / "model.bin")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(CaffeCompatError, match="cv2.FaceDetectorYN cannot load it"):
        open_detector(tmp_path / "broken.onnx")


def test_cli_face_model_flags_every_sample(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(fixtures / "test")
    model = fake_yunet(tmp_path / "yunet.onnx")
    run = CliRunner().invoke(main, ["test", "-model", "test.prototxt", "-weights", "weights.caffemodel",
                                    "--report", str(tmp_path / "r"), "--face-model", str(model)])
    assert run.exit_code == 0, run.output
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "faces found with YuNet (yunet.onnx)" in data["notes"]
    flags = {row["flag"]: row["count"] for row in data["flags"]}
    assert flags.get("no_face") == 12  # the fixture's 20x20 noise pictures have no bright cell
    assert "Worst with flag &#x27;no_face&#x27;" in (tmp_path / "r" / "report.html").read_text()
    bad = CliRunner().invoke(main, ["test", "-model", "test.prototxt", "-weights", "weights.caffemodel",
                                    "--report", str(tmp_path / "r2"), "--face-model", str(tmp_path / "missing.onnx")])
    assert bad.exit_code == 1 and "--face-model" in bad.output and not (tmp_path / "r2").exists()
