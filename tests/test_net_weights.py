"""Weight import (CopyTrainedLayersFrom) and export (Net::ToProto) against Caffe's own files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.caffemodel import load_weights, write_caffemodel
from caffe_compat.io.prototxt import parse_net_text, read_net
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST, TRAIN

FIXTURES = Path(__file__).parent / "fixtures"
LAYERS = FIXTURES / "layers"
NETS = sorted(d.name for d in LAYERS.iterdir() if (d / "net.prototxt").is_file())


def fixture_net(name: str) -> CaffeNet:
    meta = json.loads((LAYERS / name / "meta.json").read_text())
    return CaffeNet(read_net(LAYERS / name / "net.prototxt"), TRAIN if meta["phase"] == "TRAIN" else TEST)


@pytest.mark.parametrize("name", NETS)
def test_export_is_byte_identical_to_pycaffe_save(name: str) -> None:
    """Split layers, phase, loss_weight 1 and BatchNorm's lr_mult 0 specs, 0-d blobs: all as Caffe."""
    net = fixture_net(name)
    net.copy_from(LAYERS / name / "weights.caffemodel")
    saved = (LAYERS / name / "weights.caffemodel").read_bytes()
    assert net.to_net_parameter().SerializeToString() == saved


def test_import_matches_params_npz() -> None:
    net = fixture_net("conv")
    report = net.copy_from(LAYERS / "conv" / "weights.caffemodel")
    params = np.load(LAYERS / "conv" / "params.npz")
    for key in params.files:
        layer, index = key.split("/")
        assert np.array_equal(net.layer_by_name(layer).blobs[int(index)].detach().numpy(), params[key])
    assert report.loaded == ["conv_hw", "conv_group", "conv_dil", "conv_1x1", "conv_rep", "conv_chain"]
    assert report.initialised == report.ignored == report.skipped == []


@pytest.mark.parametrize("weights", ["v1_weights.caffemodel", "weights_upgraded.caffemodel"])
@pytest.mark.parametrize("model", ["v1_deploy.prototxt", "deploy_upgraded.prototxt"])
def test_v1_and_legacy_dims_caffemodels(model: str, weights: str) -> None:
    """V1 `layers` files and legacy num/channels/height/width blobs (ip1 weights 1x1x40x324)."""
    folder = FIXTURES / "upgrade"
    net = CaffeNet(read_net(folder / model))
    report = net.copy_from(folder / weights)
    assert report.loaded == ["conv1", "ip1"] and not report.initialised
    assert tuple(net.layer_by_name("ip1").blobs[0].shape) == (40, 324)
    out = net({"data": np.load(folder / "forward_input.npy")}, blobs="all")
    np.testing.assert_allclose(out["prob"].detach().numpy(), np.load(folder / "forward_prob.npy"), atol=1e-6)
    np.testing.assert_allclose(out["ip1"].detach().numpy(), np.load(folder / "forward_blob_ip1.npy"), atol=1e-5)


MISMATCH = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 11 } } }
layer { name: "conv_hw" type: "Convolution" bottom: "data" top: "a"
        convolution_param { num_output: %s kernel_h: 3 kernel_w: 2 bias_term: %s } }
layer { name: "fresh" type: "Convolution" bottom: "data" top: "b"
        convolution_param { num_output: 2 kernel_size: 1 } }
"""


def mismatch_net(num_output: int = 4, bias: str = "true") -> CaffeNet:
    return CaffeNet(parse_net_text(MISMATCH % (num_output, bias)))


def test_report_lists_loaded_filler_and_ignored_layers(caplog) -> None:
    net = mismatch_net()
    with caplog.at_level(logging.WARNING):
        report = net.copy_from(LAYERS / "conv" / "weights.caffemodel")
    assert report.loaded == ["conv_hw"]
    assert report.initialised == ["fresh"]
    assert report.ignored == ["conv_group", "conv_dil", "conv_1x1", "conv_rep", "conv_chain"]
    assert "conv_group" in caplog.text and "ignored" in caplog.text
    assert "initialised by fillers: fresh" in report.summary()


def test_blob_shape_mismatch_names_layer_and_both_shapes() -> None:
    with pytest.raises(CaffeCompatError, match=r"layer 'conv_hw'.*\(4, 3, 3, 2\).*\(5, 3, 3, 2\)"):
        mismatch_net(num_output=5).copy_from(LAYERS / "conv" / "weights.caffemodel")


def test_blob_count_mismatch_names_the_layer() -> None:
    with pytest.raises(CaffeCompatError, match="layer 'conv_hw'.*2 blobs.*needs 1"):
        mismatch_net(bias="false").copy_from(LAYERS / "conv" / "weights.caffemodel")


def test_mismatches_can_be_skipped_on_request() -> None:
    net = mismatch_net(num_output=5)
    before = net.layer_by_name("conv_hw").blobs[0].detach().clone()
    report = net.copy_from(LAYERS / "conv" / "weights.caffemodel", ignore_shape_mismatch=True)
    assert report.skipped == ["conv_hw"] and report.initialised == ["conv_hw", "fresh"]
    assert torch.equal(net.layer_by_name("conv_hw").blobs[0], before)


def test_mapping_source_and_snapshot_roundtrip(tmp_path: Path) -> None:
    net = fixture_net("scale")
    net.copy_from(load_weights(LAYERS / "scale" / "weights.caffemodel"))
    with torch.no_grad():
        for entry in net.param_specs():
            entry.param.add_(1.5)
    path = tmp_path / "snap.caffemodel"
    write_caffemodel(path, net.to_net_parameter())
    again = fixture_net("scale")
    again.copy_from(path)
    for a, b in zip(net.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_write_diff_stores_gradients() -> None:
    net = fixture_net("innerproduct")
    out = net({"data": torch.ones(2, 3, 4, 5)})
    out["ip_axis1"].sum().backward()
    proto = net.to_net_parameter(write_diff=True)
    layer = next(lp for lp in proto.layer if lp.name == "ip_axis1")
    grad = net.layer_by_name("ip_axis1").blobs[1].grad
    assert list(layer.blobs[1].diff) == pytest.approx(grad.tolist())
    assert not net.to_net_parameter().layer[2].blobs[0].diff


def test_train_net_with_data_layers_saves_like_caffe(monkeypatch) -> None:
    """solver/init.caffemodel is pycaffe's save of the TRAIN net (Data layers, BatchNorm zeros)."""
    from caffe_compat.net.builder import load_net

    monkeypatch.chdir(FIXTURES / "solver")  # the Data layer's LMDB path is relative to it
    net = load_net("lenet_train_val.prototxt", phase=TRAIN, weights="init.caffemodel")
    assert net.to_net_parameter().SerializeToString() == Path("init.caffemodel").read_bytes()
    assert net.input_names == ["data", "label"] and net.output_names == ["loss"]
    specs = {(e.layer_name, e.blob_index): (e.lr_mult, e.decay_mult) for e in net.param_specs()}
    assert specs[("conv1", 0)] == (1, 1) and specs[("conv1", 1)] == (2, 0)
    assert specs[("bn1", 2)][0] == 0 and specs[("scale1", 1)] == (1, 1)
    with torch.no_grad():
        loss = net.loss(net())
    assert loss.item() == pytest.approx(2.34716, abs=1e-5)  # iteration 0 of every solver run
