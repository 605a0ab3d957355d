"""GPU readiness, checked on CPU: bf16 autocast, channels_last, and torch.compile without breaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_compat.io.prototxt import read_net
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST, TRAIN

LAYERS = Path(__file__).parent / "fixtures" / "layers"
NETS = sorted(d.name for d in LAYERS.iterdir() if (d / "net.prototxt").is_file())
BF16_TOL = 3e-2  # bf16 keeps ~3 significant digits; relative to each blob's scale


def fixture_net(name: str) -> tuple[CaffeNet, dict[str, torch.Tensor], bool]:
    meta = json.loads((LAYERS / name / "meta.json").read_text())
    net = CaffeNet(read_net(LAYERS / name / "net.prototxt"), TRAIN if meta["phase"] == "TRAIN" else TEST)
    net.copy_from(LAYERS / name / "weights.caffemodel")
    inputs = {b: torch.from_numpy(np.load(LAYERS / name / f"input_{b}.npy")) for b in net.input_names}
    return net, inputs, meta["backward"]


def low_precision(x: torch.Tensor) -> torch.Tensor:
    """bf16, channels_last where 4-d: what a GPU pipeline hands every layer."""
    x = x.to(torch.bfloat16)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@pytest.mark.parametrize("name", NETS)
def test_every_layer_runs_in_bf16_autocast_channels_last(name: str) -> None:
    net, inputs, has_backward = fixture_net(name)
    with torch.no_grad():
        reference = net(inputs, blobs="all")
    net.copy_from(LAYERS / name / "weights.caffemodel")  # undo BatchNorm TRAIN stat updates
    fed = {k: low_precision(v).requires_grad_(has_backward) for k, v in inputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(fed, blobs="all")
        objective = net.loss(out) + sum(
            out[o].float().sum() for o in net.output_names if o not in net.loss_weights
        )
    for blob, ref in reference.items():
        got = out[blob].float()
        assert torch.isfinite(got).all(), blob
        scale = 1.0 + ref.abs().max().item() if ref.numel() else 1.0
        assert (got - ref).abs().max().item() <= BF16_TOL * scale, blob
    if has_backward:
        objective.backward()
        for k, v in fed.items():
            if v.grad is not None:
                assert torch.isfinite(v.grad.float()).all(), k


@pytest.fixture(scope="module")
def resnet(nsfw_dir: Path) -> CaffeNet:
    net = CaffeNet(read_net(nsfw_dir / "deploy.prototxt"))
    net.copy_from(nsfw_dir / "resnet_50_1by2_nsfw.caffemodel")
    return net


def test_resnet_bf16_channels_last_keeps_the_prediction(resnet: CaffeNet) -> None:
    x = torch.from_numpy(np.load(Path(__file__).parent / "fixtures" / "nsfw" / "input.npy"))
    resnet_cl = resnet.to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        prob = resnet_cl({"data": x.contiguous(memory_format=torch.channels_last)})["prob"]
    expected = np.load(Path(__file__).parent / "fixtures" / "nsfw" / "prob.npy")
    np.testing.assert_allclose(prob.float().numpy(), expected, atol=2e-3)


@pytest.mark.slow
def test_resnet_compiles_as_one_graph(resnet: CaffeNet) -> None:
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward graphs."""
    x = torch.from_numpy(np.load(Path(__file__).parent / "fixtures" / "nsfw" / "input.npy"))
    compiled = torch.compile(resnet, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        expected = resnet({"data": x})["prob"]
    got = compiled({"data": x.requires_grad_()})["prob"]
    got[:, 1].sum().backward()
    assert torch.allclose(got, expected, atol=1e-6)
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(resnet)({"data": low_precision(x.detach())})
    assert explained.graph_break_count == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["conv", "pool", "batchnorm_test", "batchnorm_train", "scale", "bias", "eltwise",
             "innerproduct", "softmax", "concat", "split", "deconv"],
)
def test_core_layer_nets_trace_without_graph_breaks(name: str) -> None:
    """Includes BatchNorm's TRAIN statistics update and force_backward nets."""
    net, inputs, _ = fixture_net(name)
    assert torch._dynamo.explain(net)(inputs).graph_break_count == 0
