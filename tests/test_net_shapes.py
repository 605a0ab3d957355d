"""infer_blob_shapes: what ``caffe-compat inspect`` prints, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import parse_net_text, read_net
from caffe_compat.net.registry import TEST, TRAIN
from caffe_compat.net.shapes import infer_blob_shapes

FIXTURES = Path(__file__).parent / "fixtures"


def test_resnet_shapes(nsfw_dir: Path) -> None:
    shapes = infer_blob_shapes(read_net(nsfw_dir / "deploy.prototxt"), TEST)
    assert shapes["data"] == (1, 3, 224, 224)
    assert shapes["conv_1"] == (1, 64, 112, 112)
    assert shapes["pool1"] == (1, 64, 56, 56)  # ceil rounding: 112 -> 56 with k3 s2
    assert shapes["pool"] == (1, 1024, 1, 1)
    assert shapes["prob"] == (1, 2)


@pytest.mark.parametrize("name", ["pool", "conv", "deconv", "batchnorm_train", "split"])
def test_fixture_shapes_in_caffes_blob_order(name: str) -> None:
    meta = json.loads((FIXTURES / "layers" / name / "meta.json").read_text())
    phase = TRAIN if meta["phase"] == "TRAIN" else TEST
    shapes = infer_blob_shapes(read_net(FIXTURES / "layers" / name / "net.prototxt"), phase)
    assert {b: list(s) for b, s in shapes.items()} == meta["blobs"]


def test_phase_selects_layers() -> None:
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 6 } } }
    layer { name: "train_ip" type: "InnerProduct" bottom: "x" top: "y"
            inner_product_param { num_output: 3 } include { phase: TRAIN } }
    layer { name: "test_ip" type: "InnerProduct" bottom: "x" top: "y"
            inner_product_param { num_output: 5 } include { phase: TEST } }
    """
    assert infer_blob_shapes(parse_net_text(text), TRAIN)["y"] == (4, 3)
    assert infer_blob_shapes(parse_net_text(text), TEST)["y"] == (4, 5)


def test_mismatch_error_names_both_layers_and_shapes() -> None:
    text = """
    layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 4 } } }
    layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "c" concat_param { axis: 0 } }
    """
    with pytest.raises(CaffeCompatError, match=r"layer 'cat'.*\(2, 4\).*\(2, 3\).*from layer 'a'.*from layer 'b'"):
        infer_blob_shapes(parse_net_text(text))
