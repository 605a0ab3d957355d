"""Prototxt reading/writing: round trips, Caffe's exact text output, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import parse_net_text, parse_text, read_net, read_solver, to_text, write_prototxt
from caffe_compat.proto import caffe_pb2
from conftest import nsfw_model_dir


def _message_type(path):
    return caffe_pb2.SolverParameter if "solver" in path.name else caffe_pb2.NetParameter


def test_every_fixture_prototxt_round_trips(fixtures, tmp_path):
    nsfw = nsfw_model_dir()
    paths = sorted(fixtures.rglob("*.prototxt")) + ([nsfw / "deploy.prototxt"] if nsfw else [])
    assert len(paths) > 30
    for path in paths:
        message = parse_text(path.read_bytes(), _message_type(path)(), path)
        out = tmp_path / "out.prototxt"
        write_prototxt(message, out)
        assert parse_text(out.read_bytes(), _message_type(path)(), out) == message, path


def test_text_output_is_protobuf_cpp_textformat(fixtures):
    """Caffe's tools wrote these files; our printer reproduces them byte for byte."""
    for name in ("train_val_upgraded.prototxt", "deploy_upgraded.prototxt"):
        path = fixtures / "upgrade" / name
        assert to_text(read_net(path)) == path.read_text()


@settings(max_examples=200, deadline=None)
@given(st.floats(width=32, allow_nan=False), st.floats(allow_nan=False))
def test_printed_numbers_parse_back_exactly(f32, f64):
    filler = caffe_pb2.FillerParameter(value=f32)
    solver = caffe_pb2.SolverParameter(base_lr=f32)
    text = to_text(filler) + to_text(solver)
    assert parse_text(to_text(filler), caffe_pb2.FillerParameter()) == filler
    assert parse_text(to_text(solver), caffe_pb2.SolverParameter()) == solver
    assert "\n" in text
    assert text_format.Parse(to_text(filler), caffe_pb2.FillerParameter()).value == np.float32(f32)


@pytest.mark.parametrize(
    "value, text",
    [(1.0, "1"), (0.1, "0.1"), (1e-8, "1e-08"), (0.999, "0.999"), (1.0 / 3, "0.333333343"), (float("inf"), "inf"),
     (-2.5, "-2.5"), (100000000.0, "1e+08")],
)
def test_floats_print_like_simple_ftoa(value, text):
    assert to_text(caffe_pb2.FillerParameter(value=value)) == f"value: {text}\n"


def test_strings_escape_like_cpp():
    layer = caffe_pb2.LayerParameter(name='a"b\\c\n颜')
    assert to_text(layer) == 'name: "a\\"b\\\\c\\n\\351\\242\\234"\n'
    assert parse_text(to_text(layer), caffe_pb2.LayerParameter()) == layer


def test_enums_and_bools_print_by_name():
    layer = caffe_pb2.LayerParameter(type="Pooling")
    layer.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
    layer.pooling_param.global_pooling = True
    assert to_text(layer) == 'type: "Pooling"\npooling_param {\n  pool: AVE\n  global_pooling: true\n}\n'


@pytest.mark.parametrize(
    "text, expected",
    [
        ('layer {\n  name: "a"\n  foo: 1\n}\n', r"net\.prototxt:3:3: .*no field named \"foo\""),
        ('layer {\n  name: "a"\n  bogus_param { }\n}\n', r"net\.prototxt:3:3: .*no field named \"bogus_param\""),
        ('layer {\n  name: "a"\n', r"net\.prototxt:\d+:\d+: Expected \"}\""),
        ('layer { name: a }', r"net\.prototxt:1:15: .*Expected string"),
        ('layer { convolution_param { num_output: -1 } }', r"net\.prototxt:1:\d+: .*out of range"),
        ('layer { pooling_param { pool: MEDIAN } }', r"net\.prototxt:1:\d+: .*MEDIAN"),
        ('name: "a"\nname: "b"\n', r"net\.prototxt:2:\d+: .*multiple"),
    ],
)
def test_errors_name_file_line_column(tmp_path, text, expected):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    with pytest.raises(CaffeCompatError, match=expected) as info:
        read_net(path)
    assert "\n" not in str(info.value)


def test_invalid_utf8_is_located(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_bytes(b'name: "ok"\nlayer { name: "\xff" }\n')
    with pytest.raises(CaffeCompatError, match=r"net\.prototxt:2:16: invalid UTF-8"):
        read_net(path)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(CaffeCompatError, match="cannot read"):
        read_net(tmp_path / "nope.prototxt")


def test_parse_net_text_upgrades_legacy_inputs():
    net = parse_net_text('input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 5\n')
    assert len(net.input) == 0 and net.layer[0].type == "Input"
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 4, 5]


def test_read_solver_upgrades_type_and_snapshot_prefix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    (tmp_path / "solver.prototxt").write_text('solver_type: ADAM\nbase_lr: 0.1\n')
    solver = read_solver("solver.prototxt")
    assert solver.type == "Adam" and not solver.HasField("solver_type")
    assert solver.snapshot_prefix == "solver"
    (tmp_path / "s2.prototxt").write_text('snapshot_prefix: "snaps"\n')
    assert read_solver("s2.prototxt").snapshot_prefix == "snaps/s2"
    (tmp_path / "s3.prototxt").write_text('type: "SGD"\nsolver_type: SGD\n')
    with pytest.raises(CaffeCompatError, match="cannot both be set"):
        read_solver("s3.prototxt")
