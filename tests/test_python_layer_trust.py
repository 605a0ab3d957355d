"""The Python-layer trust boundary (caffe_compat.net.user_code): commands that read never import
user code; commands that run a net import ``python_param.module`` from ``sys.path`` and
instantiate only ``caffe.Layer`` subclasses; a layer module's own ``import caffe`` gets
caffe-compat there, without shadowing a ``caffe`` the process imported itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST
from caffe_compat.net.summary import inspect_lines
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.proto import caffe_pb2

EXE = Path(sys.executable).with_name("caffe-compat")

NET = """name: "trust"
layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ name: "py" type: "Python" bottom: "x" top: "y" python_param {{ module: "{module}" layer: "{layer}" }} }}
"""

# A layer module written as every pycaffe layer file is: it starts with ``import caffe``.
CAFFE_LAYER = '''
import caffe
from caffe.proto import caffe_pb2
import caffe.io

SEEN = {"caffe": caffe, "Layer": caffe.Layer, "pb2": caffe_pb2}


class Triple(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 3 * bottom[0].data
'''

# Importing it leaves a trace: the proof that a command imported user code.
MARKING = '''
import pathlib
pathlib.Path({marker!r}).write_text("imported")
import caffe_compat.pycaffe as caffe


class Marked(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
'''


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def layers(tmp_path, monkeypatch):
    """A folder on sys.path for layer modules; the modules are forgotten afterwards."""
    folder = tmp_path / "layers"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith(("trust_", "caffe")) and not name.startswith("caffe_compat"):
            sys.modules.pop(name, None)


def _net(tmp_path: Path, module: str, layer: str) -> Path:
    path = tmp_path / f"net_{abs(hash((module, layer)))}.prototxt"
    path.write_text(NET.format(module=module, layer=layer))
    return path


# ---------------------------------------------------------------- commands that read import nothing


def test_inspect_names_python_layers_without_importing_them(tmp_path, layers):
    marker = tmp_path / "imported.txt"
    (layers / "trust_marked.py").write_text(MARKING.format(marker=str(marker)))
    net = _run("inspect", _net(tmp_path, "trust_marked", "Marked"))
    assert net.exit_code == 0, net.output
    assert "Python (trust_marked.Marked)" in net.output
    assert "inspect never runs user code" in net.output
    assert not marker.exists() and "trust_marked" not in sys.modules
    lines = inspect_lines(_net(tmp_path, "subprocess", "Popen"))  # the library's inspect too
    assert any("Python (subprocess.Popen)" in line for line in lines)


def test_export_onnx_refuses_python_layers_without_importing_them(tmp_path, layers):
    marker = tmp_path / "imported.txt"
    (layers / "trust_marked2.py").write_text(MARKING.format(marker=str(marker)))
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(caffe_pb2.NetParameter(name="trust").SerializeToString())
    done = _run("export-onnx", "-model", _net(tmp_path, "trust_marked2", "Marked"), "-weights", weights,
                "-o", tmp_path / "m.onnx")
    assert done.exit_code == 1
    assert "trust_marked2.Marked not imported: export-onnx never runs user code" in done.output
    assert "bug in caffe-compat" not in done.output and "Traceback" not in done.output
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------- commands that run: caffe.Layer only


@pytest.mark.parametrize("module, layer", [("subprocess", "Popen"), ("builtins", "str"), ("os", "system"),
                                           ("collections", "OrderedDict")])
def test_only_caffe_layer_subclasses_are_instantiated(tmp_path, module, layer):
    done = _run("time", "-model", _net(tmp_path, module, layer), "-iterations", "1")
    assert done.exit_code == 1
    assert f"{module}.{layer}" in done.output and "not a class derived from caffe.Layer" in done.output
    assert "bug in caffe-compat" not in done.output and "Traceback" not in done.output
    with pytest.raises(CaffeCompatError, match=f"{module}.{layer}.*caffe.Layer"):
        CaffeNet(parse_net_text(NET.format(module=module, layer=layer)), phase=TEST)


@pytest.mark.parametrize("module", ["..evil", ".evil", "evil..x", "os/path", "a b", "1x"])
def test_relative_or_invalid_module_names_are_one_clear_error(tmp_path, module):
    done = _run("time", "-model", _net(tmp_path, module, "L"), "-iterations", "1")
    assert done.exit_code == 1
    assert f"python_param.module '{module}' is not an absolute module name" in done.output
    assert "bug in caffe-compat" not in done.output and "Traceback" not in done.output


def test_a_layer_modules_own_import_error_is_named_as_such(tmp_path, layers):
    (layers / "trust_broken.py").write_text("import caffe\nimport trust_no_such_dependency\n")
    (layers / "trust_raises.py").write_text("raise ValueError('bad config in my layer file')\n")
    broken = _run("time", "-model", _net(tmp_path, "trust_broken", "L"), "-iterations", "1")
    assert broken.exit_code == 1
    assert "'trust_broken' failed inside the module" in broken.output and "trust_no_such_dependency" in broken.output
    assert "PYTHONPATH" not in broken.output  # the module was found: its path is not the problem
    raises = _run("time", "-model", _net(tmp_path, "trust_raises", "L"), "-iterations", "1")
    assert raises.exit_code == 1 and "ValueError: bad config in my layer file" in raises.output
    assert "bug in caffe-compat" not in raises.output
    missing = _run("time", "-model", _net(tmp_path, "trust_not_there", "L"), "-iterations", "1")
    assert missing.exit_code == 1 and "put its folder on PYTHONPATH" in missing.output


# ---------------------------------------------------------------- ``import caffe`` in layer modules


def test_import_caffe_in_a_layer_module_is_caffe_compat_under_the_one_line_port(tmp_path, layers, monkeypatch):
    import caffe_compat.pycaffe as caffe

    for name in [k for k in sys.modules if k == "caffe" or k.startswith("caffe.")]:
        monkeypatch.delitem(sys.modules, name)
    (layers / "trust_triple.py").write_text(CAFFE_LAYER)
    net = caffe.Net(str(_net(tmp_path, "trust_triple", "Triple")), caffe.TEST)
    net.blobs["x"].data[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(net.forward()["y"], 3 * np.arange(6).reshape(2, 3))
    seen = sys.modules["trust_triple"].SEEN
    assert seen["caffe"] is caffe and seen["Layer"] is caffe.Layer
    assert seen["pb2"] is caffe.proto.caffe_pb2
    assert "caffe" not in sys.modules  # the process's own ``import caffe`` is left as it was


def test_a_real_caffe_the_process_imported_is_not_shadowed(tmp_path, layers, monkeypatch):
    import caffe_compat.pycaffe as caffe

    real = types.ModuleType("caffe")  # stands for BVLC's pycaffe, imported by the user's own program
    real_io = types.ModuleType("caffe.io")
    monkeypatch.setitem(sys.modules, "caffe", real)
    monkeypatch.setitem(sys.modules, "caffe.io", real_io)
    (layers / "trust_triple2.py").write_text(CAFFE_LAYER)
    net = caffe.Net(str(_net(tmp_path, "trust_triple2", "Triple")), caffe.TEST)
    net.blobs["x"].data[...] = 1
    np.testing.assert_allclose(net.forward()["y"], 3)
    assert sys.modules["trust_triple2"].SEEN["caffe"] is caffe
    assert sys.modules["caffe"] is real and sys.modules["caffe.io"] is real_io
    assert not any(k.startswith("caffe.") and k != "caffe.io" for k in sys.modules)


@pytest.mark.skipif(not EXE.exists(), reason="caffe-compat is not installed in this environment")
@pytest.mark.parametrize("command", ["time", "train", "forward"])
def test_import_caffe_in_a_layer_module_works_in_the_cli(tmp_path, command):
    folder = tmp_path / "mylayers"
    folder.mkdir()
    (folder / "trust_cli_triple.py").write_text(CAFFE_LAYER)
    model = _net(tmp_path, "trust_cli_triple", "Triple")
    (tmp_path / "train.prototxt").write_text(TRAIN_NET)
    (tmp_path / "solver.prototxt").write_text('net: "train.prototxt" base_lr: 0.01 lr_policy: "fixed" '
                                              'max_iter: 1 display: 1 solver_mode: CPU')
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    args = {"time": ["time", "-model", model, "-iterations", "1"],
            "train": ["train", "-solver", "solver.prototxt"],
            "forward": ["forward", "-model", model, "-input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "y.npz"]}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([str(EXE), *map(str, args[command])], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "PYTHONPATH" not in done.stderr and "error" not in done.stderr.lower()
    if command == "forward":
        np.testing.assert_allclose(np.load(tmp_path / "y.npz")["y"], 3)


TRAIN_NET = """name: "trust_train"
layer { name: "d" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 }
                           data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 3 } }
layer { name: "py" type: "Python" bottom: "h" top: "y" python_param { module: "trust_cli_triple" layer: "Triple" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def test_import_caffe_in_a_layer_module_works_from_the_library_alone(tmp_path):
    """No pycaffe imported by the program: the library's load_net still gives the layer module caffe."""
    folder = tmp_path / "mylayers"
    folder.mkdir()
    (folder / "trust_lib_triple.py").write_text(CAFFE_LAYER)
    model = _net(tmp_path, "trust_lib_triple", "Triple")
    script = textwrap.dedent(f"""
        import sys
        import torch
        from caffe_compat.net.builder import load_net
        assert "caffe_compat.pycaffe" not in sys.modules
        net = load_net({str(model)!r}, 1)
        y = net({{"x": torch.ones(2, 3)}})["y"]
        assert torch.equal(y, torch.full((2, 3), 3.0)), y
        assert "caffe" not in sys.modules
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
