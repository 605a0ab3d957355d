"""CaffeNet's Net::Init rules: NetState filtering, splits, in-place, outputs, losses, params, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST, TRAIN

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }\n'


def net_of(body: str, phase: int = TEST, **kwargs) -> CaffeNet:
    return CaffeNet(parse_net_text(INPUT + body), phase=phase, **kwargs)


def names(net: CaffeNet) -> list[str]:
    return [step.name for step in net.steps]


def power(name: str, bottom: str, top: str, extra: str = "") -> str:
    return (f'layer {{ name: "{name}" type: "Power" bottom: "{bottom}" top: "{top}" '
            f"power_param {{ scale: 2 }} {extra} }}\n")


# ---------------------------------------------------------------- NetState filtering

FILTERED = (
    power("train_only", "data", "a", "include { phase: TRAIN }")
    + power("test_only", "data", "b", "include { phase: TEST }")
    + power("no_deploy", "data", "c", 'exclude { stage: "deploy" }')
    + power("deploy_only", "data", "d", 'include { stage: "deploy" }')
    + power("levels", "data", "e", "include { min_level: 1 max_level: 2 }")
    + power("not_stage", "data", "f", 'include { not_stage: "fast" }')
    + power("either", "data", "g", 'include { phase: TRAIN } include { stage: "x" stage: "y" }')
)


@pytest.mark.parametrize(
    "phase, stages, level, expected",
    [
        (TEST, (), 0, ["test_only", "no_deploy", "not_stage"]),
        (TRAIN, (), 0, ["train_only", "no_deploy", "not_stage", "either"]),
        (TEST, ("deploy",), 1, ["test_only", "deploy_only", "levels", "not_stage"]),
        (TEST, ("fast", "x"), 3, ["test_only", "no_deploy"]),
        (TEST, ("x", "y"), 2, ["test_only", "no_deploy", "levels", "not_stage", "either"]),
    ],
)
def test_netstate_rules(phase, stages, level, expected) -> None:
    net = net_of(FILTERED, phase=phase, stages=stages, level=level)
    kept = [n for n in names(net) if n != "data" and not n.endswith("_split")]
    assert kept == expected


def test_prototxt_state_stages_are_kept_and_extended() -> None:
    text = 'state { stage: "x" }\n' + INPUT + power("both", "data", "a", 'include { stage: "x" stage: "y" }')
    assert "both" not in names(CaffeNet(parse_net_text(text)))
    assert "both" in names(CaffeNet(parse_net_text(text), stages=["y"]))


def test_include_and_exclude_together_is_an_error() -> None:
    with pytest.raises(CaffeCompatError, match="'p'.*either include rules or exclude"):
        net_of(power("p", "data", "a", "include { phase: TEST } exclude { phase: TRAIN }"))


# ---------------------------------------------------------------- splits, in-place, outputs

def test_implicit_splits_get_caffes_names_and_their_own_gradients() -> None:
    net = net_of(power("p1", "data", "a") + power("p2", "data", "b") + power("p3", "a", "c")
                 + power("p4", "a", "d"))
    assert names(net) == ["data", "data_data_0_split", "p1", "a_p1_0_split", "p2", "p3", "p4"]
    assert net.steps[2].bottoms == ("data_data_0_split_0",)
    assert net.steps[5].bottoms == ("a_p1_0_split_0",)
    assert net.output_names == ["b", "c", "d"]
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    run = net.run({"data": x}, record=True)
    copies = [run.first[f"data_data_0_split_{k}"] for k in range(2)]
    for copy in copies:
        copy.retain_grad()
    (run.blobs["b"].sum() + 3 * run.blobs["c"].sum()).backward()
    assert torch.equal(copies[1].grad, torch.full_like(x, 2.0))  # only p2's path
    assert torch.equal(copies[0].grad, torch.full_like(x, 12.0))  # p1 -> p3
    assert torch.equal(x.grad, torch.full_like(x, 14.0))  # Caffe's split sums its copies


def test_in_place_layers_rebind_the_blob() -> None:
    net = net_of(power("p1", "data", "a") + power("twice", "a", "a") + power("after", "a", "b"))
    x = torch.ones(2, 3, 4, 5)
    run = net.run({"data": x}, record=True)
    assert torch.equal(run.first["a"], 2 * x) and torch.equal(run.blobs["a"], 4 * x)
    assert torch.equal(run.blobs["b"], 8 * x)
    assert list(net.blob_shapes) == ["data", "a", "b"]


def test_in_place_top_of_a_split_blob_is_produced_by_multiple_sources() -> None:
    # MANIFEST behaviour 13: the split renames the in-place layer's bottom.
    with pytest.raises(CaffeCompatError, match="'a' is produced by multiple sources"):
        net_of(power("p1", "data", "a") + power("other", "a", "b") + power("inplace", "a", "a"))


def test_outputs_are_unconsumed_blobs_in_name_order() -> None:
    net = net_of(power("z", "data", "zz") + power("a", "data", "aa") + power("m", "zz", "mm"))
    assert net.output_names == ["aa", "mm"]
    assert list(net(torch_inputs())) == ["aa", "mm"]
    assert net.input_names == ["data"]


def torch_inputs() -> dict[str, torch.Tensor]:
    return {"data": torch.randn(2, 3, 4, 5)}


def test_blob_selection() -> None:
    net = net_of(power("p1", "data", "a") + power("p2", "a", "b"))
    assert list(net(torch_inputs(), blobs="all")) == ["data", "a", "b"]
    assert list(net(torch_inputs(), blobs=["a"])) == ["a"]
    with pytest.raises(CaffeCompatError, match="no blob.*'nope'"):
        net(torch_inputs(), blobs=["nope"])


# ---------------------------------------------------------------- losses

LOSS_NET = (
    'layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }\n'
    'layer { name: "l2" type: "EuclideanLoss" bottom: "data" bottom: "t" top: "l2" }\n'
)


def test_loss_layers_default_to_weight_one_and_net_loss_sums() -> None:
    net = net_of(LOSS_NET + power("aux", "data", "aux", "loss_weight: 0.5"))
    assert net.loss_weights == {"l2": 1.0, "aux": 0.5}
    assert list(net.layer_by_name("l2").param.loss_weight) == [1.0]
    x, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    out = net({"data": x, "t": t})
    expected = ((x - t) ** 2).sum() / 4 + 0.5 * (2 * x).sum()
    assert torch.allclose(net.loss(out), expected, rtol=1e-5)


def test_loss_layer_without_top_gets_an_anonymous_loss() -> None:
    text = LOSS_NET.replace(' top: "l2"', "")
    net = net_of(text)
    assert net.output_names == []
    out = net({"data": torch.ones(2, 3, 4, 5), "t": torch.zeros(2, 3, 4, 5)})
    assert net.loss(out).item() == pytest.approx(120 / (2 * 2))  # sum(d^2) / 2N


def test_loss_weight_on_a_consumed_top_moves_to_the_split() -> None:
    net = net_of(power("p", "data", "a", "loss_weight: 2") + power("q", "a", "b"))
    split = net.steps[2]
    assert split.name == "a_p_0_split" and split.loss_weights == (2.0, 0.0)
    assert net.steps[3].bottoms == ("a_p_0_split_1",)
    assert net.loss_weights == {"a_p_0_split_0": 2.0}


def test_wrong_number_of_loss_weights() -> None:
    with pytest.raises(CaffeCompatError, match="loss_weight must be unspecified or given once per top"):
        net_of(power("p", "data", "a", "loss_weight: 1 loss_weight: 2"))


# ---------------------------------------------------------------- parameters

CONV = (
    'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" {params} '
    "convolution_param {{ num_output: 3 kernel_size: 1 weight_filler {{ type: 'gaussian' }} }} }}\n"
)


def test_param_specs_defaults_batchnorm_and_sharing() -> None:
    body = (
        CONV.format(name="c1", bottom="data", params='param { name: "w" lr_mult: 3 } param { decay_mult: 0 }')
        + CONV.format(name="c2", bottom="data", params='param { name: "w" }')
        + CONV.format(name="c3", bottom="c1", params="")
        + 'layer { name: "bn" type: "BatchNorm" bottom: "c3" top: "c3" }\n'
    )
    net = net_of(body)
    specs = [(e.layer_name, e.blob_index, e.lr_mult, e.decay_mult) for e in net.param_specs()]
    assert specs == [("c1", 0, 3.0, 1.0), ("c1", 1, 1.0, 0.0), ("c2", 1, 1.0, 1.0),
                     ("c3", 0, 1.0, 1.0), ("c3", 1, 1.0, 1.0),
                     ("bn", 0, 0.0, 1.0), ("bn", 1, 0.0, 1.0), ("bn", 2, 0.0, 1.0)]
    assert net.layer_by_name("c1").blobs[0] is net.layer_by_name("c2").blobs[0]
    assert [len(net.layer_by_name("bn").param.param)] == [3]
    assert not any(b.requires_grad for b in net.layer_by_name("bn").blobs)


def test_lr_mult_zero_freezes_unless_force_backward() -> None:
    body = CONV.format(name="c", bottom="data", params="param { lr_mult: 0 } param { lr_mult: 1 }")
    frozen = net_of(body)
    assert [b.requires_grad for b in frozen.layer_by_name("c").blobs] == [False, True]
    forced = CaffeNet(parse_net_text("force_backward: true\n" + INPUT + body))
    assert [b.requires_grad for b in forced.layer_by_name("c").blobs] == [True, True]


def test_shared_param_shape_mismatch_names_both_layers() -> None:
    body = CONV.format(name="c1", bottom="data", params='param { name: "w" }') + CONV.replace(
        "num_output: 3", "num_output: 4").format(name="c2", bottom="data", params='param { name: "w" }')
    with pytest.raises(CaffeCompatError, match=r"'c2'.*shared param 'w'.*\(4, 3, 1, 1\).*\(3, 3, 1, 1\).*'c1'"):
        net_of(body)


def test_too_many_param_specs() -> None:
    with pytest.raises(CaffeCompatError, match="'c'.*too many param specs"):
        net_of(CONV.format(name="c", bottom="data", params="param {} param {} param {}"))


# ---------------------------------------------------------------- clear errors

def test_unknown_layer_type_names_layer_type_and_supported() -> None:
    with pytest.raises(CaffeCompatError, match=r"layer 'weird': unknown type 'Frobnicate'\. Supported: .*Convolution"):
        net_of('layer { name: "weird" type: "Frobnicate" bottom: "data" top: "x" }')


def test_bottom_never_produced() -> None:
    with pytest.raises(CaffeCompatError, match="layer 'p' \\(type Power\\): bottom blob 'ghost' is never produced"):
        net_of(power("p", "ghost", "x"))


def test_bottom_produced_only_in_another_phase() -> None:
    body = power("train", "data", "a", "include { phase: TRAIN }") + power("user", "a", "b")
    with pytest.raises(CaffeCompatError, match="'a' is never produced.*'train' is excluded in phase TEST"):
        net_of(body)
    with pytest.raises(CaffeCompatError, match="'later' is never produced.*only later, by layer 'maker'"):
        net_of(power("user", "later", "b") + power("maker", "data", "later"))


def test_shape_mismatch_names_both_layers_and_shapes() -> None:
    body = (
        CONV.format(name="conv_a", bottom="data", params="")
        + CONV.replace("kernel_size: 1", "kernel_size: 3").format(name="conv_b", bottom="data", params="")
        + 'layer { name: "sum" type: "Eltwise" bottom: "conv_a" bottom: "conv_b" top: "s" }\n'
    )
    with pytest.raises(CaffeCompatError) as err:
        net_of(body)
    message = str(err.value)
    for part in ("layer 'sum'", "(2, 3, 4, 5)", "(2, 3, 2, 3)", "layer 'conv_a'", "layer 'conv_b'"):
        assert part in message
    assert "\n" not in message


def test_bad_layer_parameter_is_a_clear_error() -> None:
    with pytest.raises(CaffeCompatError, match="layer 'pool'.*output size"):
        net_of('layer { name: "pool" type: "Pooling" bottom: "data" top: "p" '
               "pooling_param { kernel_size: 9 stride: 1 round_mode: FLOOR } }")


def test_inputs_errors() -> None:
    net = net_of(power("p", "data", "a"))
    with pytest.raises(CaffeCompatError, match="'nope' is not a top of an input or data layer; inputs are data"):
        net({"data": torch.zeros(2, 3, 4, 5), "nope": torch.zeros(1)})
    with pytest.raises(CaffeCompatError, match=r"layer 'data'.*no value given for its top\(s\) \['data'\]"):
        net()


def test_forward_failure_names_the_layer() -> None:
    net = net_of('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "y" '
                 "inner_product_param { num_output: 2 } }")
    with pytest.raises(CaffeCompatError, match=r"layer 'ip'.*forward failed on bottoms 'data' \(2, 3, 4, 6\)"):
        net({"data": torch.zeros(2, 3, 4, 6)})


def test_legacy_input_fields_are_upgraded() -> None:
    text = 'input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4\n' + power("p", "data", "a")
    from caffe_compat.proto import caffe_pb2
    from google.protobuf import text_format

    raw = text_format.Parse(text, caffe_pb2.NetParameter())
    net = CaffeNet(raw)
    assert names(net) == ["input", "p"] and net.blob_shapes["data"] == (1, 3, 4, 4)


def test_force_backward_gives_inputs_a_diff() -> None:
    net = CaffeNet(parse_net_text("force_backward: true\n" + INPUT + power("p", "data", "a")))
    run = net.run({"data": torch.ones(2, 3, 4, 5)}, record=True)
    run.blobs["a"].sum().backward()
    assert torch.equal(run.first["data"].grad, torch.full((2, 3, 4, 5), 2.0))
    plain = net_of(power("p", "data", "a"))
    assert not plain.run({"data": torch.ones(2, 3, 4, 5)}).blobs["a"].requires_grad


@pytest.mark.parametrize("force", [False, True])
def test_propagate_down_false_stops_the_gradient_unless_force_backward(force: bool) -> None:
    text = ("force_backward: true\n" if force else "") + INPUT + power(
        "p", "data", "a", "propagate_down: false") + power("q", "data", "b")
    net = CaffeNet(parse_net_text(text))
    x = torch.ones(2, 3, 4, 5, requires_grad=True)
    run = net.run({"data": x})
    (run.blobs["a"].sum() + run.blobs["b"].sum()).backward()
    assert torch.equal(x.grad, torch.full_like(x, 4.0 if force else 2.0))


def test_propagate_down_count_must_match_bottoms() -> None:
    with pytest.raises(CaffeCompatError, match="'p': propagate_down must be given 0 or 1 times"):
        net_of(power("p", "data", "a", "propagate_down: false propagate_down: true"))


def test_run_with_keep_releases_dead_blobs() -> None:
    net = net_of(power("p1", "data", "a") + power("p2", "a", "b") + power("p3", "b", "c"))
    run = net.run(torch_inputs(), keep={"c"})
    assert set(run.blobs) == {"c"}
    run = net.run(torch_inputs(), keep={"a", "c"})
    assert set(run.blobs) == {"a", "c"}
    assert set(net.run(torch_inputs()).blobs) == {"data", "a", "b", "c"}


def test_float64_inputs_run_as_float32() -> None:
    """torch.from_numpy(image - mean) is float64; Caffe's blobs are float32 (issue 14)."""
    net = CaffeNet(parse_net_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }\n'
        'layer { name: "c" type: "Convolution" bottom: "x" top: "c" '
        'convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "constant" value: 1 } } }'))
    x = np.arange(18, dtype=np.float64).reshape(1, 2, 3, 3) / 7
    out = net({"x": torch.from_numpy(x)})["c"]
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.detach().numpy()[0, 0], (x[0, 0] + x[0, 1]).astype(np.float32), rtol=1e-6)
