"""Folding Convolution -> BatchNorm -> Scale for inference keeps the outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from caffe_compat.io.prototxt import parse_net_text, read_net
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.fold import fold_batchnorm

NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 bias_term: false weight_filler { type: "msra" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv"
        scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 2 } bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "conv2" type: "Convolution" bottom: "conv" top: "conv2"
        convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }
"""


def test_fold_matches_unfolded() -> None:
    torch.manual_seed(0)
    net = CaffeNet(parse_net_text(NET))
    with torch.no_grad():
        for name, factor in (("bn", 4.0), ("bn2", 0.5)):
            blobs = net.layer_by_name(name).blobs
            blobs[0].normal_()
            blobs[1].uniform_(0.5, 2.0)
            blobs[2].fill_(factor)
        x = torch.randn(2, 3, 8, 8)
        expected = net({"data": x})["conv2"]
        assert fold_batchnorm(net) == ["bn", "sc", "bn2"]
        assert [s.name for s in net.steps] == ["data", "conv", "relu", "conv2"]
        assert torch.allclose(net({"data": x})["conv2"], expected, atol=1e-5)


def test_folded_resnet_keeps_caffes_prob(nsfw_dir: Path) -> None:
    net = CaffeNet(read_net(nsfw_dir / "deploy.prototxt"))
    net.copy_from(nsfw_dir / "resnet_50_1by2_nsfw.caffemodel")
    assert len(fold_batchnorm(net)) == 106
    fixtures = Path(__file__).parent / "fixtures" / "nsfw"
    with torch.inference_mode():
        prob = net({"data": np.load(fixtures / "input.npy")})["prob"]
    np.testing.assert_allclose(prob.numpy(), np.load(fixtures / "prob.npy"), atol=1e-5)
