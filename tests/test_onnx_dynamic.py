"""Dynamic batch follows Caffe's reshape semantics, layer by layer (or is refused by name).

Each net is exported with a dynamic batch, run by onnxruntime with the batched inputs at 2x and
3x their prototxt batch, and compared with CaffeNet built at those shapes with the same weights
(Caffe's own Reshape rules: a Slice on axis 0 keeps its slice points and the last top takes the
rest, a Crop on axis 0 takes the reference's size, ...). Also: the converters for MVN,
Reduction, Embed, BatchReindex and Parameter, ``--batch prototxt`` / ``--batch N``,
``--dynamic-inputs`` and the node-count summary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.caffemodel import write_caffemodel
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST
from caffe_compat.onnx.export import deploy_net_param, export_onnx, net_to_onnx
from tests.test_onnx_layers import TOL, run_onnx


def _input(name: str, *dims: int) -> str:
    shape = " ".join(f"dim: {d}" for d in dims)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {shape} }} }} }}\n'


def _feeds(net: CaffeNet, graph_inputs, factor: int, rng: np.random.Generator, ints: dict[str, int]) -> dict:
    feeds = {}
    for blob, dims in graph_inputs:
        shape = [factor * d if i == 0 and isinstance(dims[0], str) else d
                 for i, d in enumerate(net.blob_shapes[blob])]
        if blob in ints:  # indices: valid for the fed batch
            bound = ints[blob] if ints[blob] > 0 else factor * net.blob_shapes["data"][0]
            feeds[blob] = rng.integers(0, bound, shape).astype(np.float32)
        else:
            feeds[blob] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def check_dynamic(text: str, ints: dict[str, int] | None = None, seed: int = 0,
                  dynamic_inputs: list[str] | None = None) -> list[tuple[str, tuple]]:
    """Export ``text`` (random weights) with a dynamic batch; compare at 1x, 2x and 3x the batch."""
    torch.manual_seed(seed)
    net = CaffeNet(parse_net_text(text), phase=TEST)
    model, _, graph_inputs = net_to_onnx(net, dynamic_inputs=dynamic_inputs)
    weights = {s.name: [b.detach().numpy() for b in s.layer.blobs] for s in net.steps if len(s.layer.blobs)}
    rng = np.random.default_rng(seed)
    for factor in (1, 2, 3):
        feeds = _feeds(net, graph_inputs, factor, rng, ints or {})
        big = CaffeNet(deploy_net_param(net.name, net.steps, {k: v.shape for k, v in feeds.items()}), phase=TEST)
        big.copy_from(weights)
        got = run_onnx(model, feeds)
        with torch.no_grad():
            want = big({k: torch.from_numpy(v) for k, v in feeds.items()})
        for blob, value in want.items():
            assert got[blob].shape == tuple(value.shape), (blob, factor)
            np.testing.assert_allclose(got[blob], value.detach().numpy(), rtol=TOL, atol=TOL, err_msg=f"{blob} at {factor}x")
    return graph_inputs


def test_slice_on_the_batch_axis_keeps_caffes_points():
    check_dynamic(_input("data", 4, 3, 2) + '''
layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" slice_param { axis: 0 slice_point: 1 slice_point: 3 } }
''')


def test_slice_on_the_batch_axis_in_equal_parts():
    check_dynamic(_input("data", 4, 3) + '''
layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 0 } }
''')


def test_crop_on_the_batch_axis_takes_the_references_size():
    """Caffe crops every axis from ``axis`` on to the reference: at twice the batch, twice the rows."""
    graph_inputs = check_dynamic(_input("data", 4, 3, 5, 5) + _input("ref", 4, 3, 3, 3) + '''
layer { name: "c" type: "Crop" bottom: "data" bottom: "ref" top: "c" crop_param { axis: 0 offset: 0 offset: 0 offset: 1 offset: 2 } }
''')
    assert dict(graph_inputs)["ref"][0] == "N"
    graph_inputs = check_dynamic(_input("data", 6, 3, 5, 5) + _input("ref", 2, 3, 3, 3) + '''
layer { name: "c" type: "Crop" bottom: "data" bottom: "ref" top: "c" crop_param { axis: 0 offset: 1 offset: 0 offset: 1 offset: 2 } }
''', dynamic_inputs=["data", "ref"])
    assert dict(graph_inputs)["ref"][0] == "N_ref"  # its own batch, independent of data's


def test_concat_tile_and_softmax_over_the_batch():
    check_dynamic(_input("data", 2, 3, 4) + _input("other", 2, 3, 4) + '''
layer { name: "cat" type: "Concat" bottom: "data" bottom: "other" top: "cat" concat_param { axis: 0 } }
layer { name: "t" type: "Tile" bottom: "cat" top: "t" tile_param { axis: 0 tiles: 2 } }
layer { name: "sm" type: "Softmax" bottom: "t" top: "sm" softmax_param { axis: 0 } }
''')


def test_reshape_and_flatten_that_move_the_batch():
    """The batch moves into axis 1 (r), is kept behind a new leading axis (r3), and sits after a
    Flatten's range (f0): those sizes are read from the tensor at run time."""
    check_dynamic(_input("data", 2, 3, 4, 5) + '''
layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: 3 dim: -1 } axis: 0 num_axes: 2 } }
layer { name: "f" type: "Flatten" bottom: "r" top: "f" flatten_param { axis: 0 end_axis: 1 } }
layer { name: "f0" type: "Flatten" bottom: "r" top: "f0" flatten_param { axis: 0 end_axis: 0 } }
layer { name: "r2" type: "Reshape" bottom: "data" top: "r2" reshape_param { shape { dim: 12 } axis: 1 num_axes: 2 } }
layer { name: "r3" type: "Reshape" bottom: "data" top: "r3" reshape_param { shape { dim: 1 } axis: 0 num_axes: 0 } }
''')


def test_reductions_mvn_and_parameter():
    check_dynamic(_input("data", 2, 3, 4, 5) + '''
layer { name: "sum0" type: "Reduction" bottom: "data" top: "sum0" reduction_param { axis: 0 } }
layer { name: "asum" type: "Reduction" bottom: "data" top: "asum" reduction_param { operation: ASUM axis: 1 coeff: 0.5 } }
layer { name: "sumsq" type: "Reduction" bottom: "data" top: "sumsq" reduction_param { operation: SUMSQ axis: 2 } }
layer { name: "mean" type: "Reduction" bottom: "data" top: "mean" reduction_param { operation: MEAN axis: -1 coeff: 3 } }
layer { name: "mean0" type: "Reduction" bottom: "data" top: "mean0" reduction_param { operation: MEAN axis: 0 } }
layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" }
layer { name: "mvn_ac" type: "MVN" bottom: "data" top: "mvn_ac" mvn_param { across_channels: true eps: 0.01 } }
layer { name: "mvn_mean" type: "MVN" bottom: "data" top: "mvn_mean" mvn_param { normalize_variance: false } }
layer { name: "par" type: "Parameter" top: "par" parameter_param { shape { dim: 2 dim: 3 } } }
''')


def test_embed_and_batch_reindex():
    check_dynamic(_input("data", 4, 3) + _input("words", 4, 5) + _input("perm", 4) + '''
layer { name: "emb" type: "Embed" bottom: "words" top: "emb"
        embed_param { num_output: 6 input_dim: 10 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "emb_nb" type: "Embed" bottom: "words" top: "emb_nb"
        embed_param { num_output: 2 input_dim: 10 bias_term: false weight_filler { type: "gaussian" } } }
layer { name: "re" type: "BatchReindex" bottom: "data" bottom: "perm" top: "re" }
''', ints={"words": 10, "perm": 0})


@pytest.mark.parametrize("layer, name", [
    ('layer { name: "ip0" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 axis: 0 } }',
     "ip0"),
    ('layer { name: "sc0" type: "Scale" bottom: "data" top: "sc" scale_param { axis: 0 num_axes: 1 } }', "sc0"),
    ('layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 0 slice_point: 1 } }\n'
     'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "c" concat_param { axis: 1 } }', "cat"),
])
def test_layers_that_cannot_follow_the_batch_are_refused_by_name(layer: str, name: str, tmp_path: Path):
    text = _input("data", 2, 3, 4) + layer
    net = CaffeNet(parse_net_text(text), phase=TEST)
    with pytest.raises(CaffeCompatError, match=f"layer '{name}'.*--batch prototxt"):
        net_to_onnx(net)
    model, _, inputs = net_to_onnx(net, dynamic_batch=False)  # the file's shapes always export
    assert inputs == [("data", (2, 3, 4))]


def test_batch_modes_and_dynamic_inputs(tmp_path: Path):
    """--batch prototxt keeps every shape; --batch N sets only the batched inputs; --dynamic-inputs
    picks them; a Bias operand is never batched."""
    text = _input("data", 2, 3, 4, 5) + _input("bb", 3, 4) + '''
layer { name: "b" type: "Bias" bottom: "data" bottom: "bb" top: "b" }
layer { name: "conv" type: "Convolution" bottom: "b" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" } } }
'''
    (tmp_path / "net.prototxt").write_text(text)
    write_caffemodel(tmp_path / "w.caffemodel", CaffeNet(parse_net_text(text)).to_net_parameter())
    args = (tmp_path / "net.prototxt", tmp_path / "w.caffemodel", None)
    assert export_onnx(*args).inputs == [("data", ("N", 3, 4, 5)), ("bb", (3, 4))]
    assert export_onnx(*args, batch="prototxt").inputs == [("data", (2, 3, 4, 5)), ("bb", (3, 4))]
    assert export_onnx(*args, batch=7).inputs == [("data", (7, 3, 4, 5)), ("bb", (3, 4))]
    with pytest.raises(CaffeCompatError, match="layer 'b'.*--dynamic-inputs"):
        export_onnx(*args, dynamic_inputs=["data", "bb"])
    with pytest.raises(CaffeCompatError, match="--dynamic-inputs: 'label' is not an input"):
        export_onnx(*args, dynamic_inputs=["label"])
    result = CliRunner().invoke(main, ["export-onnx", "--model", str(args[0]), "--weights", str(args[1]), "-o",
                                       str(tmp_path / "o.onnx"), "--batch", "prototxt"])
    assert result.exit_code == 0, result.output
    assert "ONNX opset 17, 3 nodes (Add 1, Conv 1, Unsqueeze 1); inputs: data (2, 3, 4, 5), bb (3, 4)" in result.output


def test_split_layers_are_plain_edges(fixtures: Path):
    """Caffe's Split copies are no nodes, unless a copy is itself asked for as an output."""
    from caffe_compat.io.prototxt import read_net

    net = CaffeNet(read_net(fixtures / "layers" / "split" / "net.prototxt"), phase=TEST)
    net.copy_from(fixtures / "layers" / "split" / "weights.caffemodel")
    splits = [s for s in net.steps if s.type == "Split"]
    assert len(splits) >= 2
    model, _, _ = net_to_onnx(net)
    assert "Identity" not in {node.op_type for node in model.graph.node}
    copy = splits[-1].tops[0]
    model, _, _ = net_to_onnx(net, extra_outputs=[copy])
    assert [node.op_type for node in model.graph.node].count("Identity") == 1


def test_nothing_to_export_lists_what_was_left_out(fixtures: Path):
    from caffe_compat.io.prototxt import read_net

    net = CaffeNet(read_net(fixtures / "layers" / "accuracy" / "net.prototxt"), phase=TEST)
    with pytest.raises(CaffeCompatError, match=r"nothing to export.*left out: 'acc_top1' \(Accuracy\)"):
        net_to_onnx(net)
