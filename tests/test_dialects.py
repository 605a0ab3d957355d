"""Dialects: forks' fields read from prototxt and from binary files in the fork's own numbering.

A "fork-written" caffemodel is made here with the fork's schema (caffe.proto's descriptor with
the fork's numbers put back), independently of caffe_compat's wire rewriting; it must be read
with the right meaning and round-trip (read, export-torch, import-torch --template, write) to
the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.caffemodel import caffemodel_dialect, read_caffemodel, write_caffemodel
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST
from caffe_compat.net.torch_state import export_torch, import_torch
from caffe_compat.proto import caffe_pb2, dialects

# (message, caffe_compat's field name, the fork's number); field 13 of PoolingParameter is
# round_mode for BVLC, ceil_mode for OpenCV: the fork schema drops round_mode.
ENET_OPENCV = [("LayerParameter", "upsample_param", 147), ("PoolingParameter", "ceil_mode", 13)]
SEGNET = [("LayerParameter", "upsample_param", 137)]
PSPNET = [("LayerParameter", "interp_param", 143)]


def fork_net_class(moves):
    """NetParameter of a fork: caffe.proto with the given fields renumbered (colliders dropped)."""
    proto = descriptor_pb2.FileDescriptorProto()
    caffe_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "fork_caffe.proto"
    for message_name, field_name, number in moves:
        message = next(m for m in proto.message_type if m.name == message_name)
        keep = [f for f in message.field if f.number != number or f.name == field_name]
        del message.field[:]
        message.field.extend(keep)
        next(f for f in message.field if f.name == field_name).number = number
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


DEPLOY = """
name: "seg"
input: "data"
input_shape { dim: 1 dim: 4 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn" type: "BN" bottom: "conv" top: "bn" bn_param { bn_mode: INFERENCE
  scale_filler { type: "constant" value: 2 } shift_filler { type: "constant" value: 0.5 } } }
layer { name: "pool" type: "Pooling" bottom: "bn" top: "pool" top: "mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false } }
layer { name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up" upsample_param { scale: 2 } }
"""


def _fork_caffemodel(path: Path, fork_class) -> bytes:
    """A caffemodel as the fork's Caffe writes it: the deploy net's layers with filled blobs."""
    net = CaffeNet(parse_net_text(DEPLOY), phase=TEST)
    ours = net.to_net_parameter()
    fork = fork_class()
    for layer in ours.layer:
        fork_layer = fork.layer.add()
        fork_layer.name, fork_layer.type = layer.name, layer.type
        fork_layer.bottom.extend(layer.bottom)
        fork_layer.top.extend(layer.top)
        for blob in layer.blobs:
            fork_layer.blobs.add().ParseFromString(blob.SerializeToString())
        if layer.type == "BN":
            fork_layer.bn_param.ParseFromString(layer.bn_param.SerializeToString())
        if layer.type == "Convolution":
            fork_layer.convolution_param.ParseFromString(layer.convolution_param.SerializeToString())
        if layer.type == "Pooling":
            fork_layer.pooling_param.pool = layer.pooling_param.pool
            fork_layer.pooling_param.kernel_size = 2
            fork_layer.pooling_param.stride = 2
            fork_layer.pooling_param.ceil_mode = False
        if layer.type == "Upsample":
            fork_layer.upsample_param.scale = 2
    raw = fork.SerializeToString()
    path.write_bytes(raw)
    return raw


@pytest.mark.parametrize("moves, name", [(ENET_OPENCV, "enet"), (SEGNET, "segnet")])
def test_fork_caffemodel_round_trips_byte_identically(tmp_path: Path, moves, name: str):
    """The Upsample layer's number tells the fork; a Pooling field 13 keeps its wire value
    whichever meaning it is read with, so the bytes come back without --dialect."""
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(DEPLOY)
    raw = _fork_caffemodel(tmp_path / "fork.caffemodel", fork_net_class(moves))
    assert caffemodel_dialect(tmp_path / "fork.caffemodel") == name
    up = next(layer for layer in read_caffemodel(tmp_path / "fork.caffemodel").layer if layer.type == "Upsample")
    assert up.HasField("upsample_param") and up.upsample_param.scale == 2
    export_torch(prototxt, tmp_path / "fork.caffemodel", tmp_path / "w.safetensors")
    import_torch(prototxt, tmp_path / "w.safetensors", tmp_path / "back.caffemodel",
                 template=tmp_path / "fork.caffemodel")
    assert (tmp_path / "back.caffemodel").read_bytes() == raw


def test_ceil_mode_in_binary_is_told_by_dialect(tmp_path: Path):
    """Wire value 0 at PoolingParameter 13: BVLC's round_mode CEIL, OpenCV's ceil_mode false."""
    fork_class = fork_net_class([("PoolingParameter", "ceil_mode", 13)])
    fork = fork_class()
    layer = fork.layer.add(name="pool", type="Pooling")
    layer.pooling_param.ceil_mode = False
    path = tmp_path / "p.caffemodel"
    path.write_bytes(fork.SerializeToString())
    as_bvlc = read_caffemodel(path).layer[0].pooling_param
    assert as_bvlc.HasField("round_mode") and as_bvlc.round_mode == caffe_pb2.PoolingParameter.CEIL
    dialects.select("opencv")
    try:
        as_opencv = read_caffemodel(path).layer[0].pooling_param
        write_caffemodel(tmp_path / "back.caffemodel", read_caffemodel(path))
    finally:
        dialects.select(None)
    assert as_opencv.HasField("ceil_mode") and not as_opencv.ceil_mode and not as_opencv.HasField("round_mode")
    assert (tmp_path / "back.caffemodel").read_bytes() == path.read_bytes()


def test_interp_number_is_told_by_layer_type(tmp_path: Path):
    """143 is BVLC's input_param in an Input layer and PSPNet's interp_param in an Interp layer."""
    fork = fork_net_class(PSPNET)()
    fork.layer.add(name="data", type="Input")
    fork.layer.add(name="zoom", type="Interp").interp_param.zoom_factor = 8
    path = tmp_path / "psp.caffemodel"
    path.write_bytes(fork.SerializeToString())
    assert caffemodel_dialect(path) == "pspnet"
    net = read_caffemodel(path)
    assert net.layer[1].interp_param.zoom_factor == 8
    write_caffemodel(tmp_path / "back.caffemodel", net)  # interp_param -> 143 again
    assert (tmp_path / "back.caffemodel").read_bytes() == path.read_bytes()


def test_two_forks_in_one_file_need_dialect(tmp_path: Path):
    fork = fork_net_class([("LayerParameter", "upsample_param", 147)])()
    fork.layer.add(name="a", type="Upsample").upsample_param.scale = 2
    raw = fork.SerializeToString()
    segnet = fork_net_class(SEGNET)()
    segnet.layer.add(name="b", type="Upsample").upsample_param.scale = 2
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(raw + segnet.SerializeToString())
    with pytest.raises(CaffeCompatError, match=r"mixed\.caffemodel: the file fits dialects segnet, enet; "
                                              r"choose one with --dialect"):
        read_caffemodel(path)


def test_prototxt_names_tell_round_mode_from_ceil_mode():
    text = 'layer { name: "p" type: "Pooling" pooling_param { round_mode: FLOOR ceil_mode: true } }'
    net = parse_net_text(text)
    assert net.layer[0].pooling_param.ceil_mode and net.layer[0].pooling_param.round_mode == 1
    both = 'input: "d" input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }\n' + text.replace('name: "p"', 'name: "p" bottom: "d" top: "p"').replace(
        "pooling_param {", "pooling_param { kernel_size: 2")
    with pytest.raises(CaffeCompatError, match="give round_mode .BVLC. or ceil_mode"):
        CaffeNet(parse_net_text(both), phase=TEST)


def test_unknown_field_names_file_line_column_and_dialects(tmp_path: Path):
    path = tmp_path / "ssd.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "loss" type: "MultiBoxLoss"\n  multibox_loss_param { }\n}\n')
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1
    assert lines[0].startswith(f"caffe-compat: error: {path}:4:3: ")
    assert '"multibox_loss_param"' in lines[0] and "known to dialect ssd (ssd: weiliu89/caffe" in lines[0]
    path.write_text('layer {\n  name: "p" type: "Pooling"\n  pooling_param { ceil_modes: true }\n}\n')
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert f"{path}:3:19: " in result.output and "no known Caffe fork has it either" in result.output


def test_dialect_option_rejects_unknown_names(tmp_path: Path):
    result = CliRunner().invoke(main, ["--dialect", "nope", "inspect", str(tmp_path / "x.prototxt")])
    assert result.exit_code != 0
    assert "unknown dialect 'nope'; known: bvlc," in result.output
    dialects.select(None)


def test_every_dialect_names_its_source():
    for dialect in dialects.DIALECTS.values():
        assert "@" in dialect.source or "README" in dialect.source, dialect.name
    assert dialects.knowing("LayerParameter", "norm_param") == ["ssd"]
    assert dialects.defining("Upsample") == ["segnet", "enet"]


def test_forks_of_different_layer_types_share_one_file(tmp_path: Path):
    """SegNet's Upsample (137) and PSPNet's Interp (143) in one net: both moves, no --dialect."""
    net = caffe_pb2.NetParameter()
    net.layer.add(name="up", type="Upsample").upsample_param.scale = 2
    net.layer.add(name="zoom", type="Interp").interp_param.zoom_factor = 2
    write_caffemodel(tmp_path / "both.caffemodel", net)
    assert caffemodel_dialect(tmp_path / "both.caffemodel") == "segnet+pspnet"
    segnet_psp = fork_net_class(SEGNET + PSPNET)()
    segnet_psp.ParseFromString((tmp_path / "both.caffemodel").read_bytes())
    assert segnet_psp.layer[0].upsample_param.scale == 2 and segnet_psp.layer[1].interp_param.zoom_factor == 2
    assert read_caffemodel(tmp_path / "both.caffemodel") == net


def test_opencvs_face_detector_field_is_named():
    """OpenCV's res10 face detector sets DetectionOutputParameter.clip, an OpenCV-only field."""
    assert dialects.knowing("DetectionOutputParameter", "clip") == ["opencv"]
    assert dialects.knowing("DetectionOutputParameter", "keep_top_k") == ["ssd"]


# PSPNet's own BN: bn_param at 152, its BNParameter's slope_filler, bias_filler, momentum at
# 1, 2, 3 (SegNet's scale_filler, shift_filler, bn_mode there).
PSPNET_BN = PSPNET + [("LayerParameter", "bn_param", 152), ("BNParameter", "slope_filler", 1),
                      ("BNParameter", "bias_filler", 2), ("BNParameter", "momentum", 3)]

PSP_DEPLOY = """
name: "psp"
input: "data"
input_shape { dim: 1 dim: 3 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "conv/bn" type: "BN" bottom: "conv" top: "conv" bn_param {
  slope_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 0.5 }
  momentum: 0.95 eps: 0.001 frozen: true } }
layer { name: "zoom" type: "Interp" bottom: "conv" top: "zoom" interp_param { zoom_factor: 2 } }
"""


def _pspnet_caffemodel(path: Path) -> bytes:
    """A caffemodel as PSPNet's Caffe writes it (its own schema, fields copied by name)."""
    from google.protobuf import text_format

    net = CaffeNet(parse_net_text(PSP_DEPLOY), phase=TEST)
    bn = next(s.layer for s in net.steps if s.type == "BN")
    with torch.no_grad():
        bn.blobs[2].copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]).reshape(1, 4, 1, 1))
        bn.blobs[3].copy_(torch.tensor([1.0, 2.0, 0.25, 4.0]).reshape(1, 4, 1, 1))
    ours = net.to_net_parameter()
    fork = fork_net_class(PSPNET_BN)()
    for layer in ours.layer:
        fork_layer = fork.layer.add()
        if layer.type == "Input":  # input_param's 143 is interp_param in PSPNet's schema
            fork_layer.name, fork_layer.type = layer.name, layer.type
            fork_layer.top.extend(layer.top)
            continue
        text_format.Parse(text_format.MessageToString(layer), fork_layer)
    raw = fork.SerializeToString()
    path.write_bytes(raw)
    return raw


def test_pspnet_bn_caffemodel_is_read_with_its_meaning_and_round_trips(tmp_path: Path):
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(PSP_DEPLOY)
    raw = _pspnet_caffemodel(tmp_path / "psp.caffemodel")
    fork = fork_net_class(PSPNET_BN)()
    fork.ParseFromString(raw)
    assert next(x for x in fork.layer if x.type == "BN").bn_param.momentum == pytest.approx(0.95)  # PSPNet numbers
    assert caffemodel_dialect(tmp_path / "psp.caffemodel") == "pspnet"
    bn = next(layer for layer in read_caffemodel(tmp_path / "psp.caffemodel").layer if layer.type == "BN")
    p = bn.bn_param
    assert p.slope_filler.value == 1 and p.bias_filler.value == 0.5 and p.frozen
    assert p.momentum == pytest.approx(0.95) and p.eps == pytest.approx(1e-3)
    assert not p.HasField("bn_mode") and not p.HasField("scale_filler") and len(bn.blobs) == 4
    assert list(bn.blobs[3].data) == [1.0, 2.0, 0.25, 4.0]
    export_torch(prototxt, tmp_path / "psp.caffemodel", tmp_path / "w.safetensors")
    import_torch(prototxt, tmp_path / "w.safetensors", tmp_path / "back.caffemodel",
                 template=tmp_path / "psp.caffemodel")
    assert (tmp_path / "back.caffemodel").read_bytes() == raw
    # Written without a template: PSPNet's numbers too (its BN fields choose the dialect).
    write_caffemodel(tmp_path / "plain.caffemodel", read_caffemodel(tmp_path / "psp.caffemodel"))
    assert (tmp_path / "plain.caffemodel").read_bytes() == raw


def test_segnet_bn_keeps_its_fields_beside_a_pspnet_interp(tmp_path: Path):
    """A file with PSPNet's Interp (143) is read as pspnet; a SegNet BN at 45 in it keeps
    scale_filler / bn_mode at 1 / 3 (PSPNet's BNParameter moves apply to field 152 only)."""
    fork = fork_net_class(PSPNET)()
    fork.layer.add(name="zoom", type="Interp").interp_param.zoom_factor = 2
    bn = fork.layer.add(name="bn", type="BN").bn_param
    bn.bn_mode = caffe_pb2.BNParameter.INFERENCE
    bn.scale_filler.value = 2
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(fork.SerializeToString())
    assert caffemodel_dialect(path) == "pspnet"
    read = read_caffemodel(path).layer[1].bn_param
    assert read.bn_mode == caffe_pb2.BNParameter.INFERENCE and read.scale_filler.value == 2
    assert not dialects.is_pspnet_bn(read)


# soeaver's caffe-priv: interp_param at 20001 (143 is BVLC's input_param there); selu_param 1001
# and selu_dropout_param 1002 are free in BVLC and keep their numbers.
PRIV = [("LayerParameter", "interp_param", 20001)]


def test_priv_caffemodel_is_read_with_its_meaning_and_round_trips(tmp_path: Path):
    fork = fork_net_class(PRIV)()
    fork.layer.add(name="data", type="Input").input_param.shape.add(dim=[1, 2, 4, 4])
    selu = fork.layer.add(name="selu", type="SeLu")
    setattr(selu.selu_param, "lambda", 2.0)
    fork.layer.add(name="drop", type="SeLuDropout").selu_dropout_param.dropout_ratio = 0.05
    up = fork.layer.add(name="up", type="Interp")
    up.interp_param.use_blob_size = True
    up.interp_param.pad_beg = -1
    path = tmp_path / "priv.caffemodel"
    raw = fork.SerializeToString()
    path.write_bytes(raw)
    assert caffemodel_dialect(path) == "priv"
    net = read_caffemodel(path)
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 2, 4, 4]
    assert getattr(net.layer[1].selu_param, "lambda") == 2.0
    assert net.layer[2].selu_dropout_param.dropout_ratio == pytest.approx(0.05)
    assert net.layer[3].interp_param.use_blob_size and net.layer[3].interp_param.pad_beg == -1
    # written without a template: its SeLu layers and use_blob_size choose caffe-priv's numbers
    write_caffemodel(tmp_path / "back.caffemodel", net)
    assert (tmp_path / "back.caffemodel").read_bytes() == raw
    # a PSPNet-style Interp alone still goes to 143, where PSPNet's Caffe reads it
    psp = caffe_pb2.NetParameter()
    psp.layer.add(name="zoom", type="Interp").interp_param.zoom_factor = 2
    write_caffemodel(tmp_path / "psp.caffemodel", psp)
    assert caffemodel_dialect(tmp_path / "psp.caffemodel") == "pspnet"


def test_priv_fields_name_their_dialect_when_unknown():
    assert dialects.knowing("InterpParameter", "use_blob_size") == ["priv"]
    assert dialects.knowing("LayerParameter", "selu_dropout_param") == ["priv"]
    assert dialects.defining("SeLuDropout") == ["priv"]
    assert dialects.knowing("LayerParameter", "roi_pooling_param") == ["priv", "fast-rcnn", "rfcn"]


# soeaver/py-RFCN-priv's caffe-priv numbers roi_pooling_param 147 and psroi_pooling_param 148
# (BVLC's swish_param and clip_param; caffe-fast-rcnn's and caffe-rfcn's 8266711 and 10001).
RFCN_PRIV = [("LayerParameter", "roi_pooling_param", 147), ("LayerParameter", "psroi_pooling_param", 148)]
RFCN = [("LayerParameter", "psroi_pooling_param", 10001)]

RCNN_DEPLOY = """
name: "rcnn"
input: "features" input_shape { dim: 1 dim: 8 dim: 6 dim: 6 }
input: "rois" input_shape { dim: 3 dim: 5 }
layer { name: "roi_pool" type: "ROIPooling" bottom: "features" bottom: "rois" top: "pooled"
  roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 0.0625 } }
layer { name: "fc" type: "InnerProduct" bottom: "pooled" top: "fc"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "psroi" type: "PSROIPooling" bottom: "features" bottom: "rois" top: "ps"
  psroi_pooling_param { spatial_scale: 0.0625 output_dim: 2 group_size: 2 } }
layer { name: "clip" type: "Clip" bottom: "fc" top: "clipped" clip_param { min: -1 max: 1 } }
"""


def _fork_rcnn_caffemodel(path: Path, moves) -> bytes:
    """The R-CNN net's caffemodel in a fork's own schema (fields copied by name)."""
    from google.protobuf import text_format

    net = CaffeNet(parse_net_text(RCNN_DEPLOY), phase=TEST)
    fork = fork_net_class(moves)()
    for layer in net.to_net_parameter().layer:
        if layer.type != "Clip":  # clip_param's 148 is psroi_pooling_param in caffe-priv's schema
            text_format.Parse(text_format.MessageToString(layer), fork.layer.add())
    raw = fork.SerializeToString()
    path.write_bytes(raw)
    return raw


@pytest.mark.parametrize("moves, name", [(RFCN_PRIV, "priv"), (RFCN, "rfcn")])
def test_rcnn_caffemodel_is_read_in_its_forks_numbers_and_round_trips(tmp_path: Path, moves, name: str):
    """caffe-fast-rcnn's roi_pooling_param number is ours, caffe-rfcn's psroi_pooling_param
    10001 is 11001 here; caffe-priv's 147 / 148 are told by the ROIPooling / PSROIPooling layers
    holding them."""
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(RCNN_DEPLOY.replace(RCNN_DEPLOY[RCNN_DEPLOY.index('layer { name: "clip"'):], ""))
    raw = _fork_rcnn_caffemodel(tmp_path / "fork.caffemodel", moves)
    assert caffemodel_dialect(tmp_path / "fork.caffemodel") == name
    layers = {layer.name: layer for layer in read_caffemodel(tmp_path / "fork.caffemodel").layer}
    assert layers["roi_pool"].roi_pooling_param.pooled_w == 3
    assert layers["psroi"].psroi_pooling_param.group_size == 2
    export_torch(prototxt, tmp_path / "fork.caffemodel", tmp_path / "w.safetensors")
    import_torch(prototxt, tmp_path / "w.safetensors", tmp_path / "back.caffemodel",
                 template=tmp_path / "fork.caffemodel")
    assert (tmp_path / "back.caffemodel").read_bytes() == raw
    if name == "rfcn":  # written without a template: R-FCN's 10001 again
        write_caffemodel(tmp_path / "plain.caffemodel", read_caffemodel(tmp_path / "fork.caffemodel"))
        assert (tmp_path / "plain.caffemodel").read_bytes() == raw


def test_a_memorydata_field_10001_is_not_psroi_pooling_param(tmp_path: Path):
    """Yahoo's open_nsfw caffemodel has a field 10001 (another type) in its MemoryData layer:
    only a PSROIPooling layer's 10001 is R-FCN's psroi_pooling_param, the other is kept as is."""
    fork = fork_net_class(RFCN)()
    fork.layer.add(name="data", type="MemoryData").psroi_pooling_param.output_dim = 3
    raw = fork.SerializeToString()
    path = tmp_path / "nsfw_like.caffemodel"
    path.write_bytes(raw)
    assert caffemodel_dialect(path) == "bvlc"
    layer = read_caffemodel(path).layer[0]
    assert not layer.HasField("psroi_pooling_param")
    write_caffemodel(tmp_path / "back.caffemodel", read_caffemodel(path))
    assert (tmp_path / "back.caffemodel").read_bytes() == raw


def test_swish_and_clip_numbers_stay_bvlcs_beside_rcnn_layers(tmp_path: Path):
    """147 / 148 in Swish / Clip layers are BVLC's, even in a file caffe-priv's ROIPooling
    makes priv."""
    fork = fork_net_class(RFCN_PRIV)()
    fork.layer.add(name="roi_pool", type="ROIPooling").roi_pooling_param.pooled_h = 7
    raw = fork.SerializeToString()
    bvlc = caffe_pb2.NetParameter()
    clip = bvlc.layer.add(name="clip", type="Clip").clip_param
    clip.min, clip.max = 0, 6
    bvlc.layer.add(name="swish", type="Swish").swish_param.beta = 2
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(raw + bvlc.SerializeToString())
    assert caffemodel_dialect(path) == "priv"
    layers = read_caffemodel(path).layer
    assert layers[0].roi_pooling_param.pooled_h == 7
    assert layers[1].clip_param.max == 6 and layers[2].swish_param.beta == 2


def test_rcnn_fields_we_do_not_read_name_their_forks():
    assert dialects.knowing("LayerParameter", "smooth_l1_loss_param") == ["priv", "fast-rcnn", "rfcn"]
    assert dialects.knowing("LayerParameter", "box_annotator_ohem_param") == ["priv", "rfcn"]
    assert dialects.defining("PSROIPooling") == ["priv", "rfcn"]
