"""The schema: caffe_pb2 matches caffe.proto, speaks BVLC's names, and reads Caffe's files exactly."""

from __future__ import annotations

import lmdb
import pytest

from caffe_compat.proto import caffe_pb2, regen
from conftest import nsfw_model_dir


def test_committed_module_matches_proto():
    pytest.importorskip("grpc_tools")
    expected = regen.render_module(regen.compile_descriptor())
    assert regen.MODULE_PATH.read_text() == expected, "run: python -m caffe_compat.proto.regen"


def test_regen_check_mode_reports_fresh_module():
    pytest.importorskip("grpc_tools")
    assert regen.main(["--check"]) == 0


def test_embedded_descriptor_is_the_proto_file():
    assert caffe_pb2.DESCRIPTOR.package == "caffe"
    names = set(caffe_pb2.DESCRIPTOR.message_types_by_name)
    for required in ("NetParameter", "LayerParameter", "V1LayerParameter", "V0LayerParameter", "BlobProto",
                     "BlobShape", "BlobProtoVector", "Datum", "FillerParameter", "SolverParameter",
                     "SolverState", "NetState", "NetStateRule", "ParamSpec", "TransformationParameter",
                     "LossParameter", "InputParameter", "PReLUParameter", "SwishParameter"):
        assert required in names


def test_bvlc_style_names_work():
    """Code written for BVLC's caffe_pb2 keeps working."""
    assert (caffe_pb2.TRAIN, caffe_pb2.TEST) == (0, 1)
    assert caffe_pb2.Phase.Name(caffe_pb2.TEST) == "TEST"
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4
    assert caffe_pb2.V1LayerParameter.LayerType.Name(35) == "ABSVAL"
    assert caffe_pb2.PoolingParameter.MAX == 0 and caffe_pb2.PoolingParameter.PoolMethod.Value("AVE") == 1
    assert caffe_pb2.SolverParameter.GPU == 1 and caffe_pb2.SolverParameter.ADAM == 5
    assert caffe_pb2.FillerParameter.AVERAGE == 2
    assert caffe_pb2.EltwiseParameter.SUM == 1 and caffe_pb2.LossParameter.VALID == 1
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="c", type="Convolution")
    layer.convolution_param.num_output = 3
    assert caffe_pb2.NetParameter.FromString(net.SerializeToString()) == net


@pytest.mark.parametrize(
    "message, field, default",
    [
        ("SolverParameter", "solver_mode", caffe_pb2.SolverParameter.GPU),
        ("SolverParameter", "random_seed", -1),
        ("SolverParameter", "delta", pytest.approx(1e-8)),
        ("SolverParameter", "type", "SGD"),
        ("SolverParameter", "clip_gradients", -1.0),
        ("NetState", "phase", caffe_pb2.TEST),
        ("ParamSpec", "lr_mult", 1.0),
        ("ConvolutionParameter", "bias_term", True),
        ("PoolingParameter", "round_mode", caffe_pb2.PoolingParameter.CEIL),
        ("BatchNormParameter", "moving_average_fraction", pytest.approx(0.999)),
        ("LRNParameter", "local_size", 5),
        ("DataParameter", "backend", caffe_pb2.DataParameter.LEVELDB),
        ("DataParameter", "prefetch", 4),
        ("ImageDataParameter", "is_color", True),
        ("WindowDataParameter", "crop_mode", "warp"),
        ("LossParameter", "normalization", caffe_pb2.LossParameter.VALID),
        ("ExpParameter", "base", -1.0),
        ("FillerParameter", "type", "constant"),
        ("FillerParameter", "std", 1.0),
    ],
)
def test_defaults_are_caffes(message, field, default):
    assert getattr(getattr(caffe_pb2, message)(), field) == default


def test_field_numbers_match_caffe():
    by_number = {f.name: f.number for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields}
    assert by_number["transform_param"] == 100
    assert by_number["convolution_param"] == 106 and by_number["swish_param"] == 147
    assert by_number["clip_param"] == 148 and by_number["batch_norm_param"] == 139
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number == 100
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layers"].number == 2
    assert caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["double_data"].number == 8
    assert caffe_pb2.V0LayerParameter.DESCRIPTOR.fields_by_name["hdf5_output_param"].number == 1001


_BINARY_TYPES = {".caffemodel": caffe_pb2.NetParameter, ".solverstate": caffe_pb2.SolverState,
                 ".binaryproto": caffe_pb2.BlobProto}


def _binary_fixtures(root):
    return sorted(p for p in root.rglob("*") if p.suffix in _BINARY_TYPES)


def test_every_binary_fixture_reserialises_byte_identically(fixtures):
    nsfw = nsfw_model_dir()
    paths = _binary_fixtures(fixtures) + ([nsfw / "resnet_50_1by2_nsfw.caffemodel"] if nsfw else [])
    assert len(paths) > 30
    for path in paths:
        raw = path.read_bytes()
        message = _BINARY_TYPES[path.suffix].FromString(raw)
        assert message.SerializeToString() == raw, path


def test_every_lmdb_datum_reserialises_byte_identically(fixtures):
    count = 0
    for data in sorted(fixtures.rglob("data.mdb")):
        with lmdb.open(str(data.parent), readonly=True, lock=False) as env, env.begin() as txn:
            for _, value in txn.cursor():
                assert caffe_pb2.Datum.FromString(value).SerializeToString() == value
                count += 1
    assert count > 100
