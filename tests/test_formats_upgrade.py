"""Legacy nets upgrade exactly as Caffe's upgrade_proto does (checked against real tool output)."""

from __future__ import annotations

import numpy as np
import pytest

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.caffemodel import load_caffemodel, read_caffemodel, read_caffemodel_raw
from caffe_compat.io.prototxt import parse_text, read_net, read_net_text_raw
from caffe_compat.io.upgrade import net_needs_upgrade, upgrade_net_as_needed
from caffe_compat.proto import caffe_pb2


def _net(text: str) -> caffe_pb2.NetParameter:
    return parse_text(text, caffe_pb2.NetParameter())


@pytest.mark.parametrize("legacy, upgraded", [("v1_train_val.prototxt", "train_val_upgraded.prototxt"),
                                              ("v1_deploy.prototxt", "deploy_upgraded.prototxt")])
def test_v1_prototxts_upgrade_to_the_real_tools_output(fixtures, legacy, upgraded):
    net = read_net_text_raw(fixtures / "upgrade" / legacy)
    assert net_needs_upgrade(net)
    assert upgrade_net_as_needed(net, legacy) == []
    assert net == read_net_text_raw(fixtures / "upgrade" / upgraded)
    assert not net_needs_upgrade(net)


def test_v1_caffemodel_upgrades_to_the_real_tools_output(fixtures):
    upgraded = read_caffemodel(fixtures / "upgrade" / "v1_weights.caffemodel")
    assert upgraded.SerializeToString() == (fixtures / "upgrade" / "weights_upgraded.caffemodel").read_bytes()


def test_v1_caffemodel_loads_the_right_arrays(fixtures):
    net, weights = load_caffemodel(fixtures / "upgrade" / "v1_weights.caffemodel")
    assert [layer.type for layer in net.layer] == ["Data", "Convolution", "ReLU", "Pooling", "InnerProduct",
                                                   "SoftmaxWithLoss"]
    assert {k: [a.shape for a in v] for k, v in weights.items()} == {
        "conv1": [(4, 3, 5, 5), (1, 1, 1, 4)], "ip1": [(1, 1, 40, 324), (1, 1, 1, 40)]}
    # MANIFEST: values are RandomState(4242).standard_normal(n) * 0.1 as float32, in layer/blob order.
    draws = np.random.RandomState(4242)
    for name in ("conv1", "ip1"):
        for array in weights[name]:
            expected = (draws.standard_normal(array.size) * 0.1).astype(np.float32)
            np.testing.assert_array_equal(array.ravel(), expected)


def test_data_transform_fields_move_to_transform_param():
    net = _net("""layers { name: "d" type: DATA top: "data"
                 data_param { source: "db" batch_size: 4 scale: 0.5 mean_file: "m" crop_size: 7 mirror: true } }
               layers { name: "i" type: IMAGE_DATA top: "x" image_data_param { source: "l" scale: 2 } }""")
    upgrade_net_as_needed(net)
    data, images = net.layer
    assert (data.type, images.type) == ("Data", "ImageData")
    assert str(data.data_param) == str(caffe_pb2.DataParameter(source="db", batch_size=4))
    assert data.transform_param == caffe_pb2.TransformationParameter(scale=0.5, mean_file="m", crop_size=7, mirror=True)
    assert images.transform_param.scale == 2 and not images.image_data_param.HasField("scale")


def test_v1_param_fields_become_param_specs():
    net = _net("""layers { name: "c" type: CONVOLUTION bottom: "a" top: "b" param: "w" param: "bias"
                 blob_share_mode: PERMISSIVE blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
                 loss_weight: 0.5 include { phase: TRAIN } convolution_param { num_output: 3 kernel_size: 1 } }""")
    upgrade_net_as_needed(net)
    (layer,) = net.layer
    assert [(p.name, p.lr_mult, p.decay_mult) for p in layer.param] == [("w", 1, 1), ("bias", 2, 0)]
    assert layer.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE and not layer.param[1].HasField("share_mode")
    assert list(layer.loss_weight) == [0.5] and layer.include[0].phase == caffe_pb2.TRAIN
    assert layer.convolution_param.num_output == 3


def test_all_v1_types_map_to_registered_names():
    from caffe_compat.io.upgrade import _V1_TYPES

    enum = caffe_pb2.V1LayerParameter.LayerType
    assert set(_V1_TYPES) == set(enum.values())
    assert _V1_TYPES[enum.Value("SOFTMAX_LOSS")] == "SoftmaxWithLoss" and _V1_TYPES[enum.Value("NONE")] == ""


V0_NET = """
name: "old"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1 biasterm: false
                 weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 blobs_lr: 2 weight_decay: 1 }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 pad: 1 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.25 k: 2 } bottom: "pool1" top: "norm1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "norm1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10 bias_filler { type: "constant" value: 0.5 } }
         bottom: "norm1" top: "fc" }
layers { layer { name: "relu" type: "relu" num_output: 7 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""


def test_v0_net_upgrades_all_the_way():
    net = _net(V0_NET)
    problems = upgrade_net_as_needed(net, "old.prototxt")
    assert problems == ["old.prototxt: layer 'relu': unknown parameter num_output for layer type relu"]
    expected = _net("""
name: "old"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 4 bias_term: false pad: 2 kernel_size: 3 group: 1 stride: 2
                            weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.25 k: 2 } }
layer { name: "drop" type: "Dropout" bottom: "norm1" top: "norm1" dropout_param { dropout_ratio: 0.3 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
        inner_product_param { num_output: 10 bias_filler { type: "constant" value: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""")
    assert net == expected


def test_v0_data_layer_fields():
    net = _net("""layers { layer { name: "d" type: "data" source: "db" meanfile: "m.binaryproto" batchsize: 8
                                   cropsize: 5 mirror: true scale: 0.25 rand_skip: 3 } top: "data" top: "label" }
                  layers { layer { name: "w" type: "window_data" det_fg_threshold: 0.6 det_context_pad: 4
                                   det_crop_mode: "square" } top: "x" }
                  layers { layer { name: "c" type: "concat" concat_dim: 2 } bottom: "x" bottom: "data" top: "y" }""")
    assert upgrade_net_as_needed(net) == []
    data, window, concat = net.layer
    assert data.data_param == caffe_pb2.DataParameter(source="db", batch_size=8, rand_skip=3)
    assert data.transform_param == caffe_pb2.TransformationParameter(
        mean_file="m.binaryproto", crop_size=5, mirror=True, scale=0.25)
    assert window.window_data_param == caffe_pb2.WindowDataParameter(fg_threshold=0.6, context_pad=4, crop_mode="square")
    assert concat.concat_param.concat_dim == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ('layer { name: "a" } layers { name: "b" type: RELU }', "both 'layer' and 'layers'"),
        ('layers { layer { name: "x" type: "mystery" } }', "unknown V0 layer type 'mystery'"),
        ('input: "d" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "d" top: "p" }'
         ' layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }', "only conv and pool"),
        ('layers { layer { name: "c" type: "conv" } bottom: "nowhere" top: "c" }', "unknown bottom blob 'nowhere'"),
        ('input: "a" input: "b" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1', "four input_dim"),
    ],
)
def test_fatal_upgrade_problems_are_one_line(text, message):
    with pytest.raises(CaffeCompatError, match=message):
        upgrade_net_as_needed(_net(text), "net.prototxt")


def test_input_shape_and_shapeless_inputs():
    net = _net('input: "a" input: "b" input_shape { dim: 1 dim: 2 } input_shape { dim: 3 } '
               'layer { name: "r" type: "ReLU" bottom: "a" top: "a" }')
    upgrade_net_as_needed(net)
    assert [layer.name for layer in net.layer] == ["input", "r"]
    assert list(net.layer[0].top) == ["a", "b"]
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 2], [3]]
    legacy_model = _net('input: "data" layer { name: "r" type: "ReLU" }')  # old caffemodels: just dropped
    upgrade_net_as_needed(legacy_model)
    assert [layer.name for layer in legacy_model.layer] == ["r"] and not legacy_model.input


def test_batch_norm_with_three_param_specs_is_frozen():
    net = _net('layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 } param { name: "s" } }'
               'layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }')
    upgrade_net_as_needed(net)
    assert [(p.name, p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [("", 0, 0), ("", 0, 0), ("s", 0, 0)]
    assert net.layer[1].param[0].lr_mult == 1


def test_current_nets_are_left_alone(fixtures):
    net = read_net(fixtures / "solver" / "lenet_train_val.prototxt")
    before = net.SerializeToString()
    assert upgrade_net_as_needed(net) == [] and net.SerializeToString() == before


def test_raw_read_does_not_upgrade(fixtures):
    assert len(read_caffemodel_raw(fixtures / "upgrade" / "v1_weights.caffemodel").layers) == 6
