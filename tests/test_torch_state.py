"""caffemodel <-> name-keyed PyTorch state dicts: byte-identical round trips, the torchvision
ResNet-50 mapping onto prototxt/resnet50, and clear errors for states that do not fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import parse_net_text, read_net
from caffe_compat.net.builder import CaffeNet, load_net
from caffe_compat.net.torch_state import (
    export_torch, import_torch, load_named_state_dict, named_state_dict, read_mapping, read_state)
from tests.torchvision_layout import randomise, resnet50

ROOT = Path(__file__).parents[1]
LAYERS = Path(__file__).parent / "fixtures" / "layers"
NETS = sorted(d.name for d in LAYERS.iterdir() if (d / "net.prototxt").is_file())


def _phase(name: str) -> str:
    return json.loads((LAYERS / name / "meta.json").read_text())["phase"]


def _with_blobs() -> list[str]:
    return [n for n in NETS if (LAYERS / n / "params.npz").is_file()]


@pytest.mark.parametrize("keys", ["index", "torch"])
@pytest.mark.parametrize("name", _with_blobs())
def test_caffemodel_safetensors_caffemodel_is_byte_identical(name: str, keys: str, tmp_path: Path):
    """pycaffe's net.save() file -> export-torch -> import-torch gives the same bytes (phase as saved)."""
    folder = LAYERS / name
    runner = CliRunner()
    phase = ["--phase", _phase(name)]
    result = runner.invoke(main, ["export-torch", "--model", str(folder / "net.prototxt"), "--weights",
                                  str(folder / "weights.caffemodel"), "-o", str(tmp_path / "w.safetensors"),
                                  "--keys", keys, *phase])
    assert result.exit_code == 0, result.output
    params = np.load(folder / "params.npz")
    state = read_state(tmp_path / "w.safetensors")
    assert len(state) == len(params.files)
    for key in params.files:  # params.npz: "<layer>/<index>", what pycaffe's net.params holds
        layer, index = key.split("/")
        if keys == "index":
            np.testing.assert_array_equal(state[f"{layer}.{index}"], params[key])
    with safe_open(tmp_path / "w.safetensors", "np") as handle:
        assert handle.metadata()["keys"] == keys
    result = runner.invoke(main, ["import-torch", "--model", str(folder / "net.prototxt"), "--state",
                                  str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "back.caffemodel"), *phase])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "back.caffemodel").read_bytes() == (folder / "weights.caffemodel").read_bytes()


def test_torch_key_names(tmp_path: Path):
    net = load_net(LAYERS / "scale" / "net.prototxt", weights=LAYERS / "scale" / "weights.caffemodel")
    keys = list(named_state_dict(net, "torch"))
    assert "scale_cb.weight" in keys and "scale_cb.bias" in keys and "scale_2b.bias" in keys  # 2-bottom Scale
    net = load_net(LAYERS / "batchnorm_test" / "net.prototxt")
    assert [k for k in named_state_dict(net, "torch") if k.startswith("bn_global")] == [f"bn_global.{i}" for i in range(3)]
    conv = load_net(LAYERS / "conv" / "net.prototxt")
    assert {"conv_1x1.weight", "conv_1x1.bias", "conv_dil.weight"} <= set(named_state_dict(conv, "torch"))


def test_real_resnet_round_trip_through_its_own_layout(nsfw_dir: Path, tmp_path: Path):
    """The nsfw caffemodel was saved from another net (MemoryData, phase TRAIN): --template
    writes the blobs into its own layout, byte for byte; without it, Net::ToProto of the deploy
    prototxt (the same blobs)."""
    model, weights = nsfw_dir / "deploy.prototxt", nsfw_dir / "resnet_50_1by2_nsfw.caffemodel"
    export_torch(model, weights, tmp_path / "n.safetensors", keys="torch")
    import_torch(model, tmp_path / "n.safetensors", tmp_path / "same.caffemodel", template=weights)
    assert (tmp_path / "same.caffemodel").read_bytes() == weights.read_bytes()
    import_torch(model, tmp_path / "n.safetensors", tmp_path / "deploy.caffemodel")
    reference = load_net(model, weights=weights)
    assert (tmp_path / "deploy.caffemodel").read_bytes() == reference.to_net_parameter().SerializeToString()


def _resnet50_prototxt(narrow: int) -> str:
    """prototxt/resnet50 at a 64x64 input (global pooling takes any size) with every convolution
    ``narrow`` times narrower (same layers, names and depth; fc40 unchanged), to keep tests quick."""
    text = (ROOT / "prototxt" / "resnet50" / "deploy.prototxt").read_text().replace("dim: 224", "dim: 64", 2)
    return re.sub(r"num_output: (\d+)", lambda m: f"num_output: {int(m.group(1)) // narrow if m.group(1) != '40' else 40}",
                  text)


def _through_mapping(suffix: str, narrow: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = randomise(resnet50(num_classes=40, caffe_style=True, width=64 // narrow))
    state = module.state_dict()
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": state}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    (tmp_path / "deploy.prototxt").write_text(_resnet50_prototxt(narrow))
    result = CliRunner().invoke(main, ["import-torch", "--model", str(tmp_path / "deploy.prototxt"), "--state",
                                       str(path), "--map", "torchvision-resnet50", "-o", str(tmp_path / "r.caffemodel")])
    assert result.exit_code == 0, result.output
    net = load_net(tmp_path / "deploy.prototxt", weights=tmp_path / "r.caffemodel")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        want = module(x)
        got = net({"data": x}, blobs=["fc40", "prob"])
    scale = want.abs().max().item()
    assert scale > 1e-3
    np.testing.assert_allclose(got["fc40"].numpy(), want.numpy(), rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(got["prob"].numpy(), torch.softmax(want, 1).numpy(), atol=1e-5)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_torchvision_layout_resnet50_through_the_shipped_mapping(suffix: str, tmp_path: Path):
    """A torchvision-named (Caffe-style) ResNet-50 -> import-torch --map torchvision-resnet50 ->
    a caffemodel for prototxt/resnet50 whose CaffeNet gives the PyTorch model's outputs (all 53
    convolutions and BatchNorms at an 8x narrower width; full width in the slow suite)."""
    _through_mapping(suffix, 8, tmp_path)


@pytest.mark.slow
def test_full_width_torchvision_layout_resnet50(tmp_path: Path):
    _through_mapping(".pt", 1, tmp_path)


def test_shipped_mapping_covers_every_blob_and_parameter():
    mapping = read_mapping("torchvision-resnet50")
    net = CaffeNet(read_net(ROOT / "prototxt" / "resnet50" / "deploy.prototxt"))
    blobs = {f"{s.name}.{i}" for s in net.steps for i in range(len(s.layer.blobs))}
    assert set(mapping["blobs"]) | set(mapping["constants"]) == blobs
    assert not set(mapping["blobs"]) & set(mapping["constants"])
    params = {k for k in resnet50(num_classes=40).state_dict() if not k.endswith("num_batches_tracked")}
    assert set(mapping["blobs"].values()) == params


TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "conv.a" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 3 kernel_size: 1 } }
"""


def test_layer_names_with_dots_and_bad_states(tmp_path: Path):
    net = CaffeNet(parse_net_text(TINY))
    weight, bias = np.ones((3, 2, 1, 1), np.float32), np.arange(3, dtype=np.float32)
    assert load_named_state_dict(net, {"conv.a.weight": weight, "conv.a.1": bias}) == []
    assert torch.equal(net.layer_by_name("conv.a").blobs[1], torch.arange(3.0))
    with pytest.raises(CaffeCompatError, match=r"'conv\.b\.0'.*no blob of net 'tiny'"):
        load_named_state_dict(net, {"conv.b.0": weight, "conv.a.1": bias})
    with pytest.raises(CaffeCompatError, match=r"no value for blob\(s\) conv\.a\.1.*--allow-missing"):
        load_named_state_dict(net, {"conv.a.0": weight})
    assert load_named_state_dict(net, {"conv.a.0": weight}, allow_missing=True) == ["conv.a.1"]
    with pytest.raises(CaffeCompatError, match=r"'conv\.a\.0' has shape \(3, 2\) but layer 'conv\.a' blob 0 is"):
        load_named_state_dict(net, {"conv.a.0": weight[:, :, 0, 0], "conv.a.1": bias})
    with pytest.raises(CaffeCompatError, match="'conv.a.0' and 'conv.a.weight' both name"):
        load_named_state_dict(net, {"conv.a.0": weight, "conv.a.weight": weight, "conv.a.1": bias})


def test_pt_files_load_weights_only(tmp_path: Path):
    """A pickled module is refused (torch.load(weights_only=True)); a DDP 'module.' prefix is dropped."""
    torch.save(torch.nn.Linear(2, 3), tmp_path / "module.pt")
    with pytest.raises(CaffeCompatError, match=r"module\.pt: cannot load it with torch\.load\(weights_only=True\)"):
        read_state(tmp_path / "module.pt")
    torch.save({"module.fc.weight": torch.ones(3, 2)}, tmp_path / "ddp.pt")
    assert list(read_state(tmp_path / "ddp.pt")) == ["fc.weight"]
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CaffeCompatError, match="not a valid safetensors file"):
        read_state(tmp_path / "bad.safetensors")


def test_mapping_errors_name_the_keys(tmp_path: Path):
    state = {"fc.weight": np.ones((3, 2), np.float32), "extra": np.ones(1, np.float32)}
    (tmp_path / "m.json").write_text(json.dumps({"blobs": {"conv.a.0": "fc.weight"}}))
    (tmp_path / "tiny.prototxt").write_text(TINY)
    save_file({k: torch.from_numpy(v) for k, v in state.items()}, str(tmp_path / "s.safetensors"))
    runner = CliRunner()
    args = ["import-torch", "--model", str(tmp_path / "tiny.prototxt"), "--state", str(tmp_path / "s.safetensors"),
            "-o", str(tmp_path / "o.caffemodel")]
    result = runner.invoke(main, [*args, "--map", str(tmp_path / "m.json")])
    assert result.exit_code == 1 and "1 key(s) not in the mapping" in result.output and "extra" in result.output
    result = runner.invoke(main, [*args, "--map", "no-such-mapping"])
    assert result.exit_code == 1 and "torchvision-resnet50" in result.output
    assert not (tmp_path / "o.caffemodel").exists()
