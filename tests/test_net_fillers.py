"""Caffe's fillers: exact deterministic fillers, distribution parameters of the random ones."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import read_net
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.fillers import fill
from caffe_compat.proto import caffe_pb2

LAYERS = Path(__file__).parent / "fixtures" / "layers"


def filler(text: str):
    return text_format.Parse(text, caffe_pb2.FillerParameter())


def filled(text: str, *shape: int) -> torch.Tensor:
    return fill(torch.empty(shape), filler(text), "test")


def test_bilinear_matches_caffes_deconv_fixture() -> None:
    torch.manual_seed(0)
    net = CaffeNet(read_net(LAYERS / "deconv" / "net.prototxt"))
    expected = np.load(LAYERS / "deconv" / "params.npz")["deconv_up/0"]
    assert np.array_equal(net.layer_by_name("deconv_up").blobs[0].detach().numpy(), expected)


def test_bilinear_odd_kernel_and_shape_check() -> None:
    kernel = filled('type: "bilinear"', 1, 1, 3, 3)[0, 0]
    ramp = torch.tensor([0.5, 1.0, 0.5])
    assert torch.allclose(kernel, ramp[:, None] * ramp[None, :])
    with pytest.raises(CaffeCompatError, match="layer 'test'.*bilinear.*square"):
        filled('type: "bilinear"', 1, 1, 3, 2)


def test_constant_and_default() -> None:
    assert torch.all(filled('type: "constant" value: -0.25', 3, 4) == -0.25)
    assert torch.all(filled("", 5) == 0)  # FillerParameter defaults to constant 0


def test_uniform_and_gaussian_parameters() -> None:
    torch.manual_seed(1)
    u = filled('type: "uniform" min: -2 max: 3', 200, 500)
    assert u.min() >= -2 and u.max() < 3 and abs(u.mean().item() - 0.5) < 0.02
    g = filled('type: "gaussian" mean: 1.5 std: 0.5', 200, 500)
    assert abs(g.mean().item() - 1.5) < 0.01 and abs(g.std().item() - 0.5) < 0.01


def test_sparse_gaussian_keeps_sparse_over_outputs() -> None:
    torch.manual_seed(2)
    g = filled('type: "gaussian" std: 1 sparse: 5', 20, 10000)
    assert abs((g != 0).float().mean().item() - 5 / 20) < 0.01
    with pytest.raises(CaffeCompatError, match="sparsity"):
        filled('type: "uniform" sparse: 3', 4, 4)


def test_positive_unitball_rows_sum_to_one() -> None:
    x = filled('type: "positive_unitball"', 6, 2, 3, 3)
    assert torch.all(x >= 0)
    assert torch.allclose(x.reshape(6, -1).sum(1), torch.ones(6))


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    norm=st.sampled_from(["FAN_IN", "FAN_OUT", "AVERAGE"]),
)
def test_xavier_and_msra_scale_with_caffes_fans(shape: list[int], norm: str) -> None:
    count = math.prod(shape)
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    n = {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[norm]
    x = filled(f'type: "xavier" variance_norm: {norm}', *shape)
    assert x.abs().max().item() <= math.sqrt(3 / n) * (1 + 1e-6)


@pytest.mark.parametrize("norm, n", [("FAN_IN", 32 * 9), ("FAN_OUT", 64 * 9), ("AVERAGE", 48 * 9)])
def test_msra_and_xavier_spread(norm: str, n: int) -> None:
    torch.manual_seed(3)
    msra = filled(f'type: "msra" variance_norm: {norm}', 64, 32, 3, 3)
    assert abs(msra.std().item() / math.sqrt(2 / n) - 1) < 0.03
    xavier = filled(f'type: "xavier" variance_norm: {norm}', 64, 32, 3, 3)
    assert abs(xavier.abs().max().item() / math.sqrt(3 / n) - 1) < 0.01


def test_seeded_fills_repeat() -> None:
    torch.manual_seed(7)
    a = filled('type: "xavier"', 8, 3, 3, 3)
    torch.manual_seed(7)
    assert torch.equal(a, filled('type: "xavier"', 8, 3, 3, 3))


def test_unknown_filler_names_layer_and_known_types() -> None:
    with pytest.raises(CaffeCompatError, match="layer 'test': filler 'glorot'.*xavier, msra, bilinear"):
        filled('type: "glorot"', 2, 2)
