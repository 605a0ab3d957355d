"""The fast training path keeps Caffe's numerics: fused BatchNorm + Scale (+ ReLU), running
statistics applied once per net, no float32 round trips of activations under bf16 autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.io.prototxt import parse_net_text as parse_net
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.layers.normalization import NormalizeScale
from caffe_compat.net.opcount import OpCounter
from caffe_compat.net.registry import TEST, TRAIN


def block(global_stats: bool, bn_in_place: bool = True, relu: bool = True, maf: float = 0.999) -> str:
    """conv -> BatchNorm -> Scale -> ReLU, twice, with a residual sum, global pooling and an IP + loss head."""
    bn_top = "c1" if bn_in_place else "n1"
    stats = f"use_global_stats: {'true' if global_stats else 'false'} moving_average_fraction: {maf}"
    relu_layer = f'layer {{ name: "r1" type: "ReLU" bottom: "{bn_top}" top: "{bn_top}" }}' if relu else ""
    return f"""
name: "fusion"
force_backward: true
layer {{ name: "data" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: 4 dim: 3 dim: 8 dim: 8 }} shape {{ dim: 4 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bn1" type: "BatchNorm" bottom: "c1" top: "{bn_top}" batch_norm_param {{ {stats} }} }}
layer {{ name: "sc1" type: "Scale" bottom: "{bn_top}" top: "{bn_top}"
  scale_param {{ bias_term: true filler {{ type: "uniform" min: 0.5 max: 1.5 }}
                bias_filler {{ type: "uniform" min: -0.5 max: 0.5 }} }} }}
{relu_layer}
layer {{ name: "conv2" type: "Convolution" bottom: "{bn_top}" top: "c2"
  convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bn2" type: "BatchNorm" bottom: "c2" top: "c2" batch_norm_param {{ {stats} }} }}
layer {{ name: "sc2" type: "Scale" bottom: "c2" top: "c2" scale_param {{ bias_term: false }} }}
layer {{ name: "sum" type: "Eltwise" bottom: "{bn_top}" bottom: "c2" top: "sum" }}
layer {{ name: "relu2" type: "ReLU" bottom: "sum" top: "sum" }}
layer {{ name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  inner_product_param {{ num_output: 5 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


def build(text: str, phase: int = TRAIN) -> CaffeNet:
    torch.manual_seed(0)
    net = CaffeNet(parse_net(text), phase)
    with torch.no_grad():  # stored statistics that are not trivially 0 / 1
        for step in net.steps:
            if step.type == "BatchNorm":
                channels = step.layer.blobs[0].numel()
                step.layer.blobs[0].copy_(torch.linspace(-2, 2, channels) * 7.0)
                step.layer.blobs[1].copy_(torch.linspace(0.5, 3, channels) * 7.0)
                step.layer.blobs[2].fill_(7.0)
    return net


def inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"data": torch.randn(4, 3, 8, 8, generator=g) * 3 + 1,
            "label": torch.randint(0, 5, (4,), generator=g).float()}


def step_once(net: CaffeNet, feed: dict[str, torch.Tensor], record: bool):
    """Forward (fused plan, or Caffe's layer by layer with ``record``), backward; returns the
    loss, every param's grad and every blob after the step."""
    net.zero_grad(set_to_none=True)
    run = net.run(feed, record=record)
    loss = sum(w * v.sum() for _, w, v in run.losses)
    loss.backward()
    loss = loss.detach()
    grads = [None if e.param.grad is None else e.param.grad.clone() for e in net.param_specs()]
    blobs = [b.detach().clone() for s in net.steps for b in s.layer.blobs]
    return float(loss), grads, blobs


@pytest.mark.parametrize("global_stats", [False, True])
@pytest.mark.parametrize("bn_in_place", [True, False])
def test_fused_plan_equals_layer_by_layer(global_stats: bool, bn_in_place: bool) -> None:
    text = block(global_stats, bn_in_place)
    fused, plain = build(text), build(text)
    assert any(isinstance(s.layer, NormalizeScale) for s in fused.plan)
    assert len(fused.plan) < len(fused.steps)
    for seed in (1, 2, 3):  # several steps: the running statistics accumulate
        got = step_once(fused, inputs(seed), record=False)
        want = step_once(plain, inputs(seed), record=True)
        assert got[0] == pytest.approx(want[0], rel=1e-6)
        for a, b in zip(got[1], want[1]):
            assert (a is None) == (b is None)
            if a is not None:
                # float rounding differs (one kernel vs several); conv biases before BatchNorm get noise only
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 + 1e-5 * float(b.abs().max()))
        for a, b in zip(got[2], want[2]):  # weights untouched, statistics moved the same way
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_fusion_takes_the_relu_only_when_it_is_in_place_and_plain() -> None:
    types = [s.type for s in build(block(False)).plan]
    assert "BatchNorm+Scale+ReLU" in types and "BatchNorm+Scale" in types  # block 2 has no ReLU after its Scale
    assert "BatchNorm+Scale" in [s.type for s in build(block(False, relu=False)).plan]
    leaky = block(False).replace('type: "ReLU" bottom: "c1" top: "c1" }',
                                 'type: "ReLU" bottom: "c1" top: "c1" relu_param { negative_slope: 0.1 } }')
    assert "BatchNorm+Scale+ReLU" not in [s.type for s in build(leaky).plan]


@settings(max_examples=25, deadline=None)
@given(maf=st.floats(0.0, 1.0), steps=st.integers(1, 4), m_one=st.booleans())
def test_running_statistics_follow_caffes_update(maf: float, steps: int, m_one: bool) -> None:
    """factor' = maf * factor + 1, mean' = maf * mean + batch mean,
    var' = maf * var + m / (m - 1) * batch var (correction 1 for m == 1), applied per forward."""
    shape = (1, 3, 1, 1) if m_one else (4, 3, 2, 2)
    text = f"""layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {' '.join(f'dim: {d}' for d in shape)} }} }} }}
    layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "x"
      batch_norm_param {{ use_global_stats: false moving_average_fraction: {maf!r} }} }}"""
    net = CaffeNet(parse_net(text), TRAIN)
    factor, mean, var = np.float32(0), np.zeros(3, np.float32), np.zeros(3, np.float32)
    rng = np.random.default_rng(steps)
    for _ in range(steps):
        x = rng.normal(2.0, 3.0, shape).astype(np.float32)
        net({"x": torch.from_numpy(x)})
        m = x.size // 3
        batch_mean = x.mean((0, 2, 3), dtype=np.float64)
        batch_var = x.var((0, 2, 3), dtype=np.float64) * (m / (m - 1) if m > 1 else 1.0)
        factor = np.float32(maf) * factor + 1
        mean = np.float32(maf) * mean + batch_mean
        var = np.float32(maf) * var + batch_var
    blobs = [b.detach().numpy() for b in net.steps[1].layer.blobs]
    np.testing.assert_allclose(blobs[2], [factor], rtol=1e-6)
    np.testing.assert_allclose(blobs[0], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(blobs[1], var, rtol=1e-5, atol=1e-5)


def test_running_updates_are_batched_for_the_whole_net() -> None:
    net = build(block(False))
    assert len(net._deferred) == 2 and all(layer.defer_running_updates for layer in net._deferred)
    with OpCounter() as counter:
        with torch.no_grad():
            net(inputs())
    # Two BatchNorm layers of one moving_average_fraction: one mul_ and one add_ for all six blobs.
    assert counter.counts.ops["_foreach_mul_"] == 1 and counter.counts.ops["_foreach_add_"] == 1
    assert counter.counts.ops["native_batch_norm"] == 2


def test_a_blob_shared_inside_the_net_is_updated_by_its_layer() -> None:
    text = """layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 2 } } }
    layer { name: "a" type: "BatchNorm" bottom: "x" top: "a" batch_norm_param { use_global_stats: false }
      param { name: "m" lr_mult: 0 } param { name: "v" lr_mult: 0 } param { name: "f" lr_mult: 0 } }
    layer { name: "b" type: "BatchNorm" bottom: "a" top: "b" batch_norm_param { use_global_stats: true }
      param { name: "m" lr_mult: 0 } param { name: "v" lr_mult: 0 } param { name: "f" lr_mult: 0 } }"""
    net = CaffeNet(parse_net(text), TRAIN)
    assert not net._deferred  # layer b reads what layer a wrote in the same forward, as in Caffe
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0], [0.0, -1.0], [2.0, 2.0]])
    top = net({"x": x}, blobs=["a", "b"])
    # b normalises a's output with the statistics a has just stored (factor 1: the batch's own).
    var = x.var(0, unbiased=True)
    expected = (top["a"] - x.mean(0)) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(top["b"], expected, rtol=1e-5, atol=1e-5)


def test_global_statistics_are_reused_until_the_blobs_change() -> None:
    net = build(block(True), TEST)
    bn = net.steps[2].layer
    first = bn.global_stats()
    assert bn.global_stats()[0] is first[0]
    with torch.no_grad():
        bn.blobs[2].fill_(14.0)  # halves mean and variance
    again = bn.global_stats()
    assert again[0] is not first[0]
    torch.testing.assert_close(again[0], first[0] / 2)


def test_bf16_channels_last_step_casts_no_activation_to_float32() -> None:
    net = build(block(False)).to(memory_format=torch.channels_last)
    feed = inputs()
    feed["data"] = feed["data"].contiguous(memory_format=torch.channels_last)
    smallest_activation = 4 * 6 * 8 * 8
    with OpCounter() as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(feed)
            loss = net.loss(out)
        loss.backward()
    casts = counter.counts.largest_cast
    to_float = [n for kind, n in casts.items() if kind.startswith("bfloat16->float32")]
    assert to_float and max(to_float) < smallest_activation, casts  # weights' grads only
    assert counter.counts.ops["native_batch_norm"] == 2
    assert counter.counts.bytes["mul"] < smallest_activation * 2  # Scale runs inside BatchNorm's kernel


def test_bf16_fused_training_stays_close_to_float32() -> None:
    text = block(False)
    ref, low = build(text), build(text).to(memory_format=torch.channels_last)
    feed = inputs()
    want = ref(feed)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = low({k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                   for k, v in feed.items()})["loss"]
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=3e-2)
