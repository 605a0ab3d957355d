"""The rest of pycaffe's surface: ``caffe.draw`` and ``caffe-compat draw-net``, ``caffe.coord_map``,
``Timer``, NCCL and the multi-GPU globals, ``solver.add_callback`` / ``share_weights``,
``get_solver_from_string``, and pycaffe's mode winning over a solver's default ``solver_mode``."""

from __future__ import annotations

import logging
import shutil
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import caffe_compat.pycaffe as caffe
from caffe_compat.cli import main
from caffe_compat.cli.busybox import busybox_args
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.pycaffe import coord_map as cm
from caffe_compat.pycaffe import layers as L
from caffe_compat.pycaffe import params as P

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed")

DRAWN = """name: "drawn"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "nowhere" batch_size: 64 } }
layer { name: "input" type: "Input" top: "data" include { phase: TEST } input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 2 } param { lr_mult: 0 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip" inner_product_param { num_output: 10 } }
layer { name: "py" type: "Python" bottom: "ip" top: "out" python_param { module: "surface_never_imported" layer: "L" } }
"""


def _nodes(graph) -> dict[str, dict]:
    return {n.get_name(): n.get_attributes() for n in graph.get_nodes()}


def _edges(graph) -> set[tuple[str, str, str]]:
    return {(e.get_source(), e.get_destination(), e.get("label")) for e in graph.get_edges()}


# ---------------------------------------------------------------------------- caffe.draw


def test_pydot_graph_has_caffes_labels_styles_and_edges():
    net = parse_net_text(DRAWN)
    graph = caffe.draw.get_pydot_graph(net, "LR")
    nodes = _nodes(graph)
    conv = r'"conv1\n(Convolution)\nkernel size: 5\nstride: 2\npad: 1"'
    pool = r'"pool1\n(Pooling AVE)\nkernel size: 3\nstride: 2\npad: 0"'
    assert nodes[conv]["fillcolor"] == "#FF5050" and nodes[conv]["shape"] == "record"
    assert nodes[pool]["fillcolor"] == "#FF9900"
    assert nodes[r'"relu1\n(ReLU)"']["fillcolor"] == "#90EE90"  # in place: a neuron layer
    assert nodes[r'"ip\n(InnerProduct)"']["fillcolor"] == "#CC33FF"
    assert nodes[r'"py\n(Python)"']["fillcolor"] == "#6495ED"
    assert nodes["pool1"]["shape"] == "octagon"  # a blob read by a later layer
    edges = _edges(graph)
    assert (r'"data\n(Data)"', "data", "Batch 64") in edges
    assert (conv, "conv1", "20") in edges and (r'"ip\n(InnerProduct)"', "ip", "10") in edges
    assert ("conv1", r'"relu1\n(ReLU)"', '""') in edges
    assert {label for *_, label in _edges(caffe.draw.get_pydot_graph(net, "LR", label_edges=False))} == {'""'}
    vertical = _nodes(caffe.draw.get_pydot_graph(net, "TB", display_lrm=True))
    assert '"conv1 (Convolution) kernel size: 5 stride: 2 pad: 1 lr mult: 2.0, 0.0"' in vertical


def test_phase_filter_is_caffes_include_exclude_rule():
    net = parse_net_text(DRAWN)
    names = lambda phase: {n.strip('"').split("\\n")[0] for n in _nodes(caffe.draw.get_pydot_graph(net, "LR", phase=phase))}
    assert "data" in names(caffe.TRAIN) and "input" not in names(caffe.TRAIN)
    assert "input" in names(caffe.TEST) and {"conv1", "py"} <= names(caffe.TEST)
    assert {"data", "input"} <= names(None)
    both = parse_net_text('layer { name: "x" type: "ReLU" include { phase: TEST } exclude { phase: TRAIN } }')
    with pytest.raises(ValueError, match="layer x has both include and exclude"):
        caffe.draw.get_pydot_graph(both, "LR", phase=caffe.TEST)
    with pytest.raises(ValueError, match="ReLU layers do not have a learning rate multiplier"):
        caffe.draw.get_layer_lr_mult(both.layer[0])


@needs_dot
def test_draw_net_renders_through_graphviz(tmp_path):
    net = parse_net_text(DRAWN)
    dot_source = caffe.draw.draw_net(net, "LR", ext="dot").decode()
    assert dot_source.startswith("digraph drawn {") and "kernel size: 5" in dot_source
    caffe.draw.draw_net_to_file(net, str(tmp_path / "net.png"), "TB", caffe.TEST)
    assert (tmp_path / "net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    caffe.draw.draw_net_to_file(net, str(tmp_path / "net.svg"))
    assert b"<svg" in (tmp_path / "net.svg").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.png", "net.svg"]  # no temporary left


def test_missing_graphviz_is_one_error_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on it
    with pytest.raises(FileNotFoundError, match="apt-get install graphviz"):
        caffe.draw.draw_net(parse_net_text(DRAWN), "LR")
    (tmp_path / "net.prototxt").write_text(DRAWN)
    done = CliRunner().invoke(main, ["draw-net", str(tmp_path / "net.prototxt"), str(tmp_path / "net.png")])
    assert done.exit_code == 1
    assert "caffe-compat: error: drawing nets needs Graphviz's 'dot'" in done.output
    assert "apt-get install graphviz" in done.output and "Traceback" not in done.output
    assert not (tmp_path / "net.png").exists()


@needs_dot
def test_draw_net_command_as_caffes_draw_net_py(tmp_path):
    (tmp_path / "net.prototxt").write_text(DRAWN)
    out = tmp_path / "net.png"
    done = CliRunner().invoke(main, ["draw-net", str(tmp_path / "net.prototxt"), str(out), "--rankdir", "TB",
                                     "--phase", "TRAIN", "--display_lrm"])
    assert done.exit_code == 0, done.output
    assert f"Drawing net to {out}" in done.output and out.read_bytes()[:4] == b"\x89PNG"
    raw = tmp_path / "net.raw"
    assert CliRunner().invoke(main, ["draw_net", str(tmp_path / "net.prototxt"), str(raw), "-phase", "TEST"]).exit_code == 0
    text = raw.read_text()
    assert "input" in text and "Batch 64" not in text and "lr mult" not in text
    assert "surface_never_imported" not in sys.modules  # a Python layer is drawn, never imported
    bad = CliRunner().invoke(main, ["draw-net", str(tmp_path / "net.prototxt"), str(tmp_path / "net.nosuchformat")])
    assert bad.exit_code == 1 and "format 'nosuchformat'" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "net.nosuchformat").exists()
    assert busybox_args(["/opt/caffe/python/draw_net.py", "a.prototxt", "a.png"]) == (
        ["draw-net", "a.prototxt", "a.png"], "draw_net.py")


# ---------------------------------------------------------------------------- caffe.coord_map


def _fcn(pad: int):
    """FCN's pattern: padded conv, pool, upsampling deconv, crop back onto the input."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=3, pad=pad)
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=2, kernel_size=4, stride=2))
    return n


def test_coord_map_composes_each_layers_scale_and_shift(tmp_path):
    n = _fcn(pad=100)
    # up -> pool: deconv (s 2, k 4): x2, +1.5; pool (s 2, k 2): /2, -0.25; conv (k 3, pad 100): +99
    ax, a, b = cm.coord_map_from_to(n.up, n.data)
    assert ax == 1 and np.all(a == 1) and np.all(b == -100)
    ax, a, b = cm.coord_map_from_to(n.pool, n.data)  # pool -> data: /2, 0.5 * 99 - 0.25; inverted
    assert ax == 1 and np.all(a == 2) and np.all(b == -98.5)
    n.score = cm.crop(n.up, n.data)
    layer = {l.name: l for l in n.to_proto().layer}["score"]
    assert layer.type == "Crop" and list(layer.bottom) == ["up", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [100]
    (tmp_path / "fcn.prototxt").write_text(str(n.to_proto()))
    net = caffe.Net(str(tmp_path / "fcn.prototxt"), caffe.TEST)
    assert net.blobs["up"].data.shape[2:] == (220, 220) and net.blobs["score"].data.shape == (1, 2, 20, 20)


def test_coord_map_refuses_what_crop_cannot_do():
    n = _fcn(pad=100)
    with pytest.raises(AssertionError, match="scale mismatch"):
        cm.crop(n.pool, n.data)  # pooled: half the resolution
    with pytest.raises(AssertionError, match="cannot crop negative offset"):
        cm.crop(n.data, n.up)  # the input is inside the upsampled frame, not around it
    small = _fcn(pad=0)  # 20 -> conv 18 -> pool 9 -> deconv 20: aligned, offset 0
    assert np.all(cm.coord_map_from_to(small.up, small.data)[2] == 0)
    other = caffe.NetSpec()
    other.x = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    with pytest.raises(RuntimeError, match="connected by spatial layers"):
        cm.coord_map_from_to(n.up, other.x)
    with pytest.raises(cm.AxisMismatchException):
        cm.compose((1, 1, 0), (2, 1, 0))
    assert cm.inverse((1, 2.0, 3.0)) == (1, 0.5, -1.5)


# ---------------------------------------------------------------------------- NCCL, globals, Timer


def test_no_nccl_and_an_honest_error_naming_the_route():
    assert caffe.has_nccl() is False
    with pytest.raises(RuntimeError, match="torchrun") as err:
        caffe.NCCL(None, b"uid")
    assert isinstance(err.value, CaffeCompatError) and "-gpu 0,1" in str(err.value)
    with pytest.raises(RuntimeError, match="has_nccl"):
        caffe.NCCL.new_uid()


def test_solver_count_rank_and_multiprocess_are_caffes_globals(monkeypatch):
    from caffe_compat.pycaffe import parallel

    monkeypatch.setattr(parallel, "_state", dict(parallel._state))
    assert (caffe.solver_count(), caffe.solver_rank(), parallel.multiprocess()) == (1, 0, False)
    caffe.set_solver_count(4)
    caffe.set_solver_rank(3)
    caffe.set_multiprocess(True)
    assert (caffe.solver_count(), caffe.solver_rank(), parallel.multiprocess()) == (4, 3, True)


def test_timer_measures_from_start_to_stop():
    timer = caffe.Timer()
    assert timer.ms == 0.0  # never run
    timer.start()
    time.sleep(0.02)
    timer.stop()
    first = timer.ms
    assert first >= 20.0
    assert timer.ms == first  # stopped: reading does not move it
    timer.start()
    assert timer.ms < first + 1000.0 and timer.ms >= 0.0  # reading a running timer stops it


# ---------------------------------------------------------------------------- solvers

TRAIN_NET = """name: "tiny"
layer { name: "d" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""
SOLVER = 'net: "train.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 10 display: 0 random_seed: 3 snapshot_after_train: false'


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.prototxt").write_text(TRAIN_NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    caffe.set_mode_cpu()
    return tmp_path


def test_add_callback_runs_around_each_iteration(work):
    solver = caffe.SGDSolver("solver.prototxt")
    events = []
    weights = lambda: solver.net.params["ip"][0].data.copy()
    solver.add_callback(lambda: events.append(("start", solver.iter)),
                        lambda: events.append(("gradients", solver.iter, weights())))
    before = weights()
    solver.step(2)
    assert [e[:2] for e in events] == [("start", 0), ("gradients", 0), ("start", 1), ("gradients", 1)]
    np.testing.assert_array_equal(events[1][2], before)  # gradients ready, not yet applied
    assert not np.array_equal(events[3][2], before)  # the first update happened after its callback


def test_share_weights_makes_a_net_see_what_the_solver_learns(work):
    solver = caffe.SGDSolver("solver.prototxt")
    net = caffe.Net("train.prototxt", caffe.TEST)
    assert not np.array_equal(net.params["ip"][0].data, solver.net.params["ip"][0].data)
    solver.share_weights(net)
    solver.step(3)
    np.testing.assert_array_equal(net.params["ip"][0].data, solver.net.params["ip"][0].data)
    np.testing.assert_array_equal(net.params["ip"][1].data, solver.net.params["ip"][1].data)


def test_get_solver_from_string_is_get_solver_on_text(work):
    solver = caffe.get_solver_from_string(SOLVER + ' type: "Adam"')
    assert isinstance(solver, caffe.AdamSolver) and solver.param.type == "Adam"
    solver.step(2)
    learned = solver.net.params["ip"][0].data.copy()
    from_file = caffe.AdamSolver("solver.prototxt")  # the same seed: the same run
    from_file.step(2)
    np.testing.assert_array_equal(learned, from_file.net.params["ip"][0].data)
    with pytest.raises(CaffeCompatError, match="<string>"):
        caffe.get_solver_from_string("base_lr: [")


def test_pycaffe_cpu_mode_wins_over_the_default_solver_mode(work, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    solver = caffe.SGDSolver("solver.prototxt")  # no solver_mode: Caffe's default is GPU
    solver.step(1)
    said = capfd.readouterr().err + caplog.text
    assert "solver_mode is GPU" not in said
    assert solver.iter == 1
