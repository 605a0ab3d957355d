"""pycaffe's memory, backward and exception rules, as BVLC Caffe's notebooks and python tests use them.

Blobs keep one data/diff buffer (net_surgery holds a view across a forward), ``backward`` is
Caffe's BackwardFromTo from the diffs stored in the tops (no forward needed; param diffs
accumulate), Deep Dream's ``forward(end=)`` / ``backward(start=)``, a pascal-multilabel style
Python data layer under a solver, 02-fine-tuning's frozen layers, and user exceptions passing as
themselves. Every expected number is computed here by hand (numpy or torch.nn.functional).
"""

from __future__ import annotations

import sys
import traceback

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import caffe_compat.pycaffe as caffe
from caffe_compat.cli import main
from caffe_compat.proto import caffe_pb2

CONV_NET = """name: "surgery" {force}
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 2 dim: 7 dim: 7 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 3 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool" top: "conv2"
        convolution_param {{ num_output: 4 kernel_size: 2 weight_filler {{ type: "gaussian" std: 0.5 }}
                             bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "conv2" top: "ip"
        inner_product_param {{ num_output: 5 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
"""


def _net(tmp_path, force_backward: bool = True) -> caffe.Net:
    path = tmp_path / "net.prototxt"
    path.write_text(CONV_NET.format(force="force_backward: true" if force_backward else ""))
    caffe.set_random_seed(7)
    return caffe.Net(str(path), caffe.TEST)


def _reference(net: caffe.Net, x: np.ndarray, end: str = "ip") -> dict[str, torch.Tensor]:
    """The same net in torch.nn.functional, from the pycaffe params."""
    p = {name: [torch.from_numpy(b.data.copy()) for b in blobs] for name, blobs in net.params.items()}
    out = {"data": torch.from_numpy(x).requires_grad_()}
    out["conv"] = F.relu(F.conv2d(out["data"], *p["conv"]))
    out["pool"] = F.max_pool2d(out["conv"], 2, 2, ceil_mode=True)
    out["conv2"] = F.conv2d(out["pool"], *p["conv2"])
    if end == "ip":
        out["ip"] = F.linear(out["conv2"].flatten(1), *p["ip"])
    return out


# ---------------------------------------------------------------------------- blob memory


@pytest.fixture(autouse=True, params=["cpu views", "host arrays"])
def memory(request, monkeypatch):
    """Every test twice: with numpy views of CPU tensors, and as on a GPU, where no tensor can be
    viewed and pycaffe keeps a host array per blob (Caffe's SyncedMemory CPU copy)."""
    if request.param == "host arrays":
        monkeypatch.setattr(caffe.Net, "_numpy_views", staticmethod(lambda tensor: False))
    return request.param



def test_held_views_see_later_forwards_and_param_edits(tmp_path):
    """net_surgery cell 3: a view taken before a param edit shows the next forward's values."""
    net = _net(tmp_path, force_backward=False)
    x = np.random.default_rng(0).normal(size=(2, 2, 7, 7)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    conv0 = net.blobs["conv"].data[0, 0]
    out = net.forward()  # pycaffe returns views of the output blobs too
    before = conv0.copy()
    net.params["conv"][1].data[0] = 1.0 + net.params["conv"][1].data[0]
    net.forward()
    np.testing.assert_allclose(conv0, np.maximum(_reference(net, x)["conv"][0, 0].detach().numpy(), 0), rtol=1e-5)
    assert (conv0 >= before).all() and (conv0 > before).any()
    np.testing.assert_array_equal(out["ip"], net.blobs["ip"].data)


def test_reshape_keeps_the_buffer_when_the_size_is_kept(tmp_path):
    net = _net(tmp_path)
    data = net.blobs["data"].data
    net.blobs["data"].reshape(1, 4, 7, 7)  # same count: the same memory, as Blob::Reshape
    net.blobs["data"].data[...] = 3.0
    assert (data == 3.0).all()
    net.blobs["data"].reshape(1, 2, 9, 9)  # a new size: new zeroed memory
    assert net.blobs["data"].data.shape == (1, 2, 9, 9) and not net.blobs["data"].data.any()
    assert (data == 3.0).all()


# ---------------------------------------------------------------------------- backward


def test_backward_without_forward_uses_stored_diffs_and_current_data(tmp_path):
    """BVLC test_net::test_backward_start_end: no forward, a diff set on a top, one layer back."""
    net = _net(tmp_path)
    x = np.random.default_rng(1).normal(size=(2, 2, 7, 7)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    rng = np.random.default_rng(2)
    again = _net(tmp_path)  # a fresh net: nothing ran, conv2's data are zeros
    for name in net.params:
        for mine, theirs in zip(again.params[name], net.params[name]):
            mine.data[...] = theirs.data
    again.blobs["conv2"].data[...] = net.blobs["conv2"].data
    top = rng.normal(size=(2, 5)).astype(np.float32)
    again.blobs["ip"].diff[...] = top
    got = again.backward(start="ip", end="ip")
    assert set(got) == {"conv2"}
    np.testing.assert_allclose(got["conv2"].reshape(2, -1), top @ again.params["ip"][0].data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again.params["ip"][0].diff, top.T @ net.blobs["conv2"].data.reshape(2, -1), rtol=1e-5)
    assert not again.blobs["data"].diff.any()  # layers below `end` did not run

    # the whole way down from the stored diff, still without a forward in this net
    again.blobs["data"].data[...] = x
    again.forward(end="conv2")
    again.backward()
    ref = _reference(again, x)
    ref["ip"].backward(torch.from_numpy(top))
    np.testing.assert_allclose(again.blobs["data"].diff, ref["data"].grad.numpy(), rtol=1e-4, atol=1e-6)


def test_param_diffs_accumulate_until_cleared_and_bottom_diffs_are_overwritten(tmp_path):
    net = _net(tmp_path)
    x = np.random.default_rng(3).normal(size=(2, 2, 7, 7)).astype(np.float32)
    net.forward(data=x)
    held = net.params["conv"][0].diff
    net.backward(ip=np.ones((2, 5), np.float32))
    once, data_diff = held.copy(), net.blobs["data"].diff.copy()
    assert np.abs(once).max() > 0
    net.backward(ip=np.ones((2, 5), np.float32))
    np.testing.assert_allclose(held, 2 * once, rtol=1e-5)
    np.testing.assert_array_equal(net.blobs["data"].diff, data_diff)
    net.clear_param_diffs()
    assert not held.any()


def test_deep_dream_steps_give_the_gradient_of_the_l2_objective(tmp_path):
    """Deep Dream's make_step twice (the image is updated in place between steps)."""
    net = _net(tmp_path)
    x = np.random.default_rng(4).normal(size=(2, 2, 7, 7)).astype(np.float32)
    net.blobs["data"].data[...] = x
    src, dst, step_size = net.blobs["data"], net.blobs["conv2"], 1.5
    expected = x.copy()
    for _ in range(2):
        # --- the notebook's make_step with objective_L2
        net.forward(end="conv2")
        dst.diff[:] = dst.data
        net.backward(start="conv2")
        g = src.diff[0]
        src.data[:] += step_size / np.abs(g).mean() * g
        # ---
        ref = _reference(net, expected, end="conv2")
        (0.5 * ref["conv2"].pow(2).sum()).backward()
        want = ref["data"].grad.numpy()[0]
        expected[:] += step_size / np.abs(want).mean() * want
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(src.data, expected, rtol=1e-4, atol=1e-5)
    assert not net.blobs["ip"].data.any()  # forward(end=) stops at conv2


PY_LAYERS = '''
import ast
import numpy as np
from caffe_compat.pycaffe import Layer


class TimesTen(Layer):
    """pycaffe's test_python_layer SimpleLayer."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class Counter(Layer):
    """A layer with a learned blob whose backward sets its diff (test_parameter)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class Raising(Layer):
    def setup(self, bottom, top):
        params = ast.literal_eval(self.param_str)
        if params.get("when") == "setup":
            raise ValueError("bad param_str: " + self.param_str)
        self.when = params["when"]

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        if self.when == "forward":
            raise RuntimeError("forward refused")
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        raise KeyError("backward refused")


class MultilabelData(Layer):
    """pascal-multilabel's data layer: batches from param_str, reshaped once in setup."""

    def setup(self, bottom, top):
        params = ast.literal_eval(self.param_str)
        self.batch_size, self.rng = params["batch_size"], np.random.default_rng(params["seed"])
        top[0].reshape(self.batch_size, 2, 7, 7)
        top[1].reshape(self.batch_size, 5)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        top[0].data[...] = self.rng.normal(size=top[0].data.shape)
        top[1].data[...] = self.rng.integers(0, 2, size=top[1].data.shape)

    def backward(self, top, propagate_down, bottom):
        pass
'''


@pytest.fixture
def py_layers(tmp_path, monkeypatch):
    (tmp_path / "h19_layers.py").write_text(PY_LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("h19_layers", None)


def _py_net(tmp_path, layer: str, param_str: str = "", count: int = 1) -> str:
    layers = "".join(
        f"layer {{ type: 'Python' name: 'l{i}' bottom: '{'data' if i == 0 else f'x{i - 1}'}' top: 'x{i}' "
        f"python_param {{ module: 'h19_layers' layer: '{layer}' param_str: \"{param_str}\" }} }}\n"
        for i in range(count))
    path = tmp_path / f"{layer}.prototxt"
    path.write_text("name: 'py' force_backward: true\n"
                    "input: 'data' input_shape { dim: 4 dim: 3 dim: 2 }\n" + layers)
    return str(path)


def test_python_layers_backward_from_a_stored_diff_without_forward(py_layers):
    net = caffe.Net(_py_net(py_layers, "TimesTen", count=3), caffe.TRAIN)
    net.blobs["x2"].diff[...] = 7
    net.backward()
    assert (net.blobs["data"].diff == 7000).all()


def test_python_layer_backward_runs_under_force_backward_and_params_accumulate(py_layers):
    net = caffe.Net(_py_net(py_layers, "Counter"), caffe.TRAIN)
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("l0")]
    assert layer.blobs[0].data[0] == 0 and layer.blobs[0].diff[0] == 1
    assert net.params["l0"][0].diff[0] == 1
    net.backward()
    assert net.params["l0"][0].diff[0] == 2  # the solver's diff accumulates, as Caffe's blob diff


# ---------------------------------------------------------------------------- exceptions


def test_user_exceptions_pass_through_as_themselves(py_layers):
    with pytest.raises(ValueError, match="bad param_str") as info:
        caffe.Net(_py_net(py_layers, "Raising", "{'when': 'setup'}"), caffe.TEST)
    assert traceback.extract_tb(info.value.__traceback__)[-1].filename.endswith("h19_layers.py")
    net = caffe.Net(_py_net(py_layers, "Raising", "{'when': 'forward'}"), caffe.TEST)
    with pytest.raises(RuntimeError, match="^forward refused$"):
        net.forward()
    net = caffe.Net(_py_net(py_layers, "Raising", "{'when': 'never'}"), caffe.TEST)
    net.forward()
    with pytest.raises(KeyError, match="backward refused"):
        net.backward()


def test_the_cli_turns_user_exceptions_into_one_line(py_layers):
    result = CliRunner().invoke(main, ["time", "--model", _py_net(py_layers, "Raising", "{'when': 'setup'}"),
                                       "--iterations", "1"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1] == ("caffe-compat: error: layer 'l0' (type Python, h19_layers.Raising.setup) raised "
                         "ValueError: bad param_str: {'when': 'setup'}"), result.output
    assert "Traceback" not in result.output


def test_blobproto_without_shape_is_a_value_error():
    blob = caffe_pb2.BlobProto()
    blob.data.extend([1.0] * 6)
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(blob)
    blob.shape.dim.extend([2, 3])
    assert caffe.io.blobproto_to_array(blob).shape == (2, 3)


# ---------------------------------------------------------------------------- solvers


MULTILABEL_NET = """name: "multilabel"
layer {{ name: "data" type: "Python" top: "data" top: "label"
        python_param {{ module: "h19_layers" layer: "MultilabelData" param_str: "{{'batch_size': 3, 'seed': 11}}" }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param {{ lr_mult: {frozen} }} param {{ lr_mult: {frozen} }}
        convolution_param {{ num_output: 3 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "score" type: "InnerProduct" bottom: "conv" top: "score"
        inner_product_param {{ num_output: 5 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "score" bottom: "label" top: "loss" }}
"""

MULTILABEL_SOLVER = """net: "net.prototxt"
base_lr: 0.05
lr_policy: "fixed"
momentum: 0.9
max_iter: 100
display: 0
snapshot: 0
snapshot_prefix: "snap"
random_seed: 3
"""


def test_python_data_layer_fine_tuning_loop(py_layers, monkeypatch):
    """pascal-multilabel's data layer under 02-fine-tuning's loop: copy weights in, freeze the
    first layer (lr_mult 0), step, read loss and blobs after every step."""
    monkeypatch.chdir(py_layers)
    (py_layers / "net.prototxt").write_text(MULTILABEL_NET.format(frozen=1))
    source = caffe.Net(str(py_layers / "net.prototxt"), caffe.TEST)
    source.save(str(py_layers / "pretrained.caffemodel"))
    (py_layers / "net.prototxt").write_text(MULTILABEL_NET.format(frozen=0))
    (py_layers / "solver.prototxt").write_text(MULTILABEL_SOLVER)

    solver = caffe.SGDSolver(str(py_layers / "solver.prototxt"))
    solver.net.copy_from(str(py_layers / "pretrained.caffemodel"))
    frozen = solver.net.params["conv"][0].data
    score_diff = solver.net.params["score"][0].diff
    batches = np.random.default_rng(11)
    losses = []
    for _ in range(4):
        solver.step(1)
        losses.append(solver.net.blobs["loss"].data.copy())
        # the blobs hold this step's forward: its batch, and the loss of its scores
        data = batches.normal(size=(3, 2, 7, 7))
        label = batches.integers(0, 2, size=(3, 5))
        np.testing.assert_allclose(solver.net.blobs["data"].data, data, rtol=1e-6)
        np.testing.assert_array_equal(solver.net.blobs["label"].data, label)
        score = solver.net.blobs["score"].data
        np.testing.assert_allclose(losses[-1], ((score - label) ** 2).sum() / 6, rtol=1e-5)
        # the held diff view shows this step's gradient: d loss / d W = (score - label)^T conv / 3
        conv = solver.net.blobs["conv"].data.reshape(3, -1)
        np.testing.assert_allclose(score_diff, (score - label).T @ conv / 3, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(frozen, source.params["conv"][0].data)
    assert not np.array_equal(solver.net.params["score"][0].data, source.params["score"][0].data)


def test_backward_from_a_loss_without_a_top_name_uses_its_weight(tmp_path):
    """A loss layer with no top (Caffe's anonymous top) starts backward from its loss_weight."""
    (tmp_path / "loss.prototxt").write_text("""name: 'anon'
layer { name: 'data' type: 'Input' top: 'data' top: 'label' input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
        inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 1 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' loss_weight: 2 }
""")
    net = caffe.Net(str(tmp_path / "loss.prototxt"), caffe.TRAIN)
    x = np.random.default_rng(5).normal(size=(4, 3)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = [0, 1, 2, 4]
    net.forward()
    net.backward()
    ip = net.blobs["ip"].data
    prob = np.exp(ip - ip.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    prob[np.arange(4), [0, 1, 2, 4]] -= 1
    np.testing.assert_allclose(net.params["ip"][0].diff, 2 * prob.T @ x / 4, rtol=1e-4, atol=1e-6)
