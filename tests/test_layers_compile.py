"""Every layer of this package's neuron/shape/loss modules traces as ONE torch.compile graph
(fullgraph=True fails on any graph break), forward and backward."""

from __future__ import annotations

import pytest
import torch
from layers_util import make_layer

CASES = [
    ('type: "ReLU"', [(2, 3, 4, 5)]),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', [(2, 3, 4, 5)]),
    ('type: "PReLU"', [(2, 3, 4, 5)]),
    ('type: "ELU"', [(2, 3, 4, 5)]),
    ('type: "Sigmoid"', [(2, 3, 4, 5)]),
    ('type: "TanH"', [(2, 3, 4, 5)]),
    ('type: "AbsVal"', [(2, 3, 4, 5)]),
    ('type: "BNLL"', [(2, 3, 4, 5)]),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', [(2, 3, 4, 5)]),
    ('type: "Power" power_param { power: 0 }', [(2, 3, 4, 5)]),
    ('type: "Exp" exp_param { base: 2 shift: 1 }', [(2, 3, 4, 5)]),
    ('type: "Log" log_param { shift: 10 }', [(2, 3, 4, 5)]),
    ('type: "Threshold"', [(2, 3, 4, 5)]),
    ('type: "Dropout"', [(2, 3, 4, 5)]),
    ('type: "LRN" lrn_param { local_size: 5 }', [(2, 3, 4, 5)]),
    ('type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 }', [(2, 3, 4, 5)]),
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', [(2, 3, 4, 5)]),
    ('type: "Slice" top: "a" top: "b" slice_param { slice_point: 1 }', [(2, 3, 4, 5)]),
    ('type: "Crop" crop_param { offset: 1 }', [(2, 3, 4, 5), (2, 3, 2, 3)]),
    ('type: "Tile" tile_param { tiles: 2 }', [(2, 3, 4, 5)]),
    ('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', [(2, 3, 4, 5)]),
    ('type: "SoftmaxWithLoss" loss_param { ignore_label: 1 }', [(4, 5), (4,)]),
    ('type: "SigmoidCrossEntropyLoss"', [(4, 5), (4, 5)]),
    ('type: "EuclideanLoss"', [(4, 5), (4, 5)]),
    ('type: "Accuracy" top: "a" top: "b" accuracy_param { top_k: 2 }', [(4, 5), (4,)]),
    ('type: "Clip" clip_param { min: -1 max: 1 }', [(2, 3, 4, 5)]),
    ('type: "Swish"', [(2, 3, 4, 5)]),
    ('type: "Reduction" reduction_param { operation: ASUM axis: 1 }', [(2, 3, 4, 5)]),
    ('type: "HingeLoss" hinge_loss_param { norm: L2 }', [(4, 5), (4,)]),
    ('type: "MultinomialLogisticLoss"', [(4, 5), (4,)]),
    ('type: "InfogainLoss" top: "l" top: "p"', [(4, 5), (4,), (5, 5)]),
    ('type: "ContrastiveLoss"', [(4, 5), (4, 5), (4,)]),
    ('type: "MVN"', [(2, 3, 4, 5)]),
    ('type: "Silence"', [(2, 3)]),
]


@pytest.mark.parametrize("text, shapes", CASES, ids=[c[0].split('"')[1] + str(i) for i, c in enumerate(CASES)])
def test_layer_compiles_without_graph_breaks(text, shapes):
    torch._dynamo.reset()
    layer = make_layer(text, *shapes)
    bottoms = [torch.randn(s, requires_grad=True) for s in shapes]
    if "Multinomial" in text:
        bottoms[0] = torch.rand(shapes[0], requires_grad=True)
    if "Contrastive" in text:
        bottoms[2] = (torch.rand(shapes[2]) > 0.5).float()
    elif "Loss" in text or "Accuracy" in text:  # second bottom: labels / targets
        bottoms[1] = torch.randint(0, 4, shapes[1]).float() if "Sigmoid" not in text else torch.rand(shapes[1])
    if "Log" in text:
        bottoms[0] = bottoms[0].detach().abs().requires_grad_(True)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    tops = compiled(*bottoms)
    eager = layer(*bottoms)
    for got, ref in zip(tops, eager):
        torch.testing.assert_close(got, ref, equal_nan=True)
    differentiable = [t for t in tops if t.requires_grad]
    if differentiable:
        sum(t.float().sum() for t in differentiable).backward()
