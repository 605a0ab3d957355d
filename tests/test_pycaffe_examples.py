"""pycaffe code from BVLC Caffe's notebooks and examples, ported by changing only the import line.

Each test is written the way the examples are (00-classification, net_surgery, 01-learning-lenet,
pycaffe/layers/pyloss.py with linreg.prototxt) with ``import caffe_compat.pycaffe as caffe``, then
checks its numbers against the library (``load_net``, ``Solver``) or against real Caffe's dumps.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_compat.pycaffe as caffe
from caffe_compat.io.blob import read_binaryproto
from caffe_compat.io.caffemodel import load_weights
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet, load_net
from caffe_compat.net.registry import TEST, TRAIN
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.solver import Solver, TrainOptions
from solver_util import lenet_workdir


# ---------------------------------------------------------------------------- 00-classification


def test_classification_with_transformer_equals_the_library_and_real_caffe(nsfw_dir, fixtures, tmp_path):
    model_def = str(nsfw_dir / "deploy.prototxt")
    model_weights = str(nsfw_dir / "resnet_50_1by2_nsfw.caffemodel")
    image_file = str(fixtures / "nsfw" / "img" / "synth_300x260.jpg")

    # --- the notebook, unchanged but for the import line
    caffe.set_mode_cpu()
    net = caffe.Net(model_def, model_weights, caffe.TEST)
    mu = np.array([104, 117, 123])
    transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})
    transformer.set_transpose('data', (2, 0, 1))
    transformer.set_mean('data', mu)
    transformer.set_raw_scale('data', 255)
    transformer.set_channel_swap('data', (2, 1, 0))
    net.blobs['data'].reshape(2, 3, 224, 224)
    image = caffe.io.load_image(image_file)
    transformed_image = transformer.preprocess('data', image)
    net.blobs['data'].data[...] = transformed_image
    output = net.forward()
    output_prob = output['prob'][0]
    shapes = [(layer_name, blob.data.shape) for layer_name, blob in net.blobs.items()]
    param_shapes = [(layer_name, param[0].data.shape) for layer_name, param in net.params.items()]
    feat = net.blobs['pool1'].data[0, :36]
    # ---

    import cv2
    bgr = cv2.imread(image_file).astype(np.float32) / np.float32(255)
    resized = np.stack([cv2.resize(np.ascontiguousarray(bgr[:, :, 2 - k]), (224, 224)) for k in range(3)], -1)
    expected = resized.transpose(2, 0, 1)[[2, 1, 0]] * np.float32(255) - mu[:, None, None]
    np.testing.assert_allclose(transformed_image, expected, rtol=1e-6, atol=1e-4)
    assert transformed_image.dtype == np.float32

    ours = net.torch_net  # the library's own forward on the same weights
    with torch.no_grad():
        want = ours.forward({"data": torch.from_numpy(np.stack([transformed_image] * 2))}, blobs=["prob", "pool1"])
    np.testing.assert_array_equal(output_prob, want["prob"][0].numpy())
    np.testing.assert_array_equal(feat, want["pool1"][0, :36].numpy())
    assert output_prob.argmax() == 0 and abs(output_prob.sum() - 1) < 1e-6
    assert shapes[0] == ("data", (2, 3, 224, 224)) and ("prob", (2, 2)) in shapes
    assert param_shapes[0] == ("conv_1", (64, 3, 7, 7))

    # real Caffe's blobs for its own input (pycaffe dumped them)
    x = np.load(fixtures / "nsfw" / "input.npy")
    out = net.forward(data=x)
    np.testing.assert_allclose(out["prob"], np.load(fixtures / "nsfw" / "prob.npy"), atol=1e-5)
    np.testing.assert_allclose(net.blobs["pool1"].data, np.load(fixtures / "nsfw" / "pool1.npy"), atol=1e-4)


TINY_RGB = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_classifier_predicts_like_the_library(fixtures, tmp_path):
    (tmp_path / "deploy.prototxt").write_text(TINY_RGB)
    caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST).save(str(tmp_path / "w.caffemodel"))
    image = caffe.io.load_image(str(fixtures / "images" / "a" / "grad_001.jpg"))
    classifier = caffe.Classifier(str(tmp_path / "deploy.prototxt"), str(tmp_path / "w.caffemodel"),
                                  image_dims=(10, 12), mean=np.array([104, 117, 123]), raw_scale=255,
                                  channel_swap=(2, 1, 0))
    centre = classifier.predict([image, image[::-1]], oversample=False)
    ten = classifier.predict([image, image[::-1]])
    assert centre.shape == (2, 3) and ten.shape == (2, 3)

    net = load_net(tmp_path / "deploy.prototxt", TEST, weights=tmp_path / "w.caffemodel")
    big = caffe.io.resize_image(image, (10, 12))
    crops = caffe.io.oversample([big], (8, 8))
    assert crops.shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(crops[0], big[:8, :8])
    np.testing.assert_array_equal(crops[4], big[1:9, 2:10])
    np.testing.assert_array_equal(crops[9], big[1:9, 2:10][:, ::-1])
    batch = np.stack([classifier.transformer.preprocess("data", c) for c in crops])
    with torch.no_grad():
        probs = np.concatenate([net.forward({"data": torch.from_numpy(b[None])})["prob"].numpy() for b in batch])
    np.testing.assert_array_equal(ten[0], probs.mean(0))  # the net's batch size is 1, as pycaffe feeds it
    np.testing.assert_array_equal(centre[0], probs[4])


# ---------------------------------------------------------------------------- net_surgery

FC_NET = """name: "fc"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 5 } }
"""

FULL_CONV_NET = FC_NET.replace('name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 5 }',
                               'name: "fc-conv" type: "Convolution" bottom: "conv" top: "fc-conv" '
                               'convolution_param { num_output: 5 kernel_size: 4 }')


def test_net_surgery_edits_params_through_numpy(tmp_path):
    (tmp_path / "fc.prototxt").write_text(FC_NET)
    (tmp_path / "conv.prototxt").write_text(FULL_CONV_NET)
    im_input = np.random.default_rng(0).normal(size=(1, 2, 6, 6)).astype(np.float32)

    # --- the notebook: set a filter by hand, forward, then cast the fc layer to a convolution
    net = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST)
    net.blobs['data'].reshape(*im_input.shape)
    net.blobs['data'].data[...] = im_input
    net.params['conv'][0].data[...] = 0
    net.params['conv'][0].data[0, 0, 1, 1] = 1  # the first filter copies channel 0
    net.params['conv'][1].data[...] = 0.5
    net.params['fc'][0].data[...] = np.arange(5 * 48).reshape(5, 48) / 100.0
    net.params['fc'][1].data[...] = [1, 2, 3, 4, 5]
    net.forward()
    conv_out = net.blobs['conv'].data.copy()
    fc_out = net.blobs['fc'].data.copy()
    net.save(str(tmp_path / "fc.caffemodel"))

    net_full_conv = caffe.Net(str(tmp_path / "conv.prototxt"), str(tmp_path / "fc.caffemodel"), caffe.TEST)
    params = ['fc']
    fc_params = {pr: (net.params[pr][0].data, net.params[pr][1].data) for pr in params}
    params_full_conv = ['fc-conv']
    conv_params = {pr: (net_full_conv.params[pr][0].data, net_full_conv.params[pr][1].data) for pr in params_full_conv}
    for pr, pr_conv in zip(params, params_full_conv):
        conv_params[pr_conv][0].flat = fc_params[pr][0].flat  # flat unrolls the arrays
        conv_params[pr_conv][1][...] = fc_params[pr][1]
    out = net_full_conv.forward(data=im_input)
    net_full_conv.save(str(tmp_path / "full_conv.caffemodel"))
    # ---

    np.testing.assert_array_equal(conv_out[0, 0], im_input[0, 0, 1:5, 1:5] + np.float32(0.5))
    np.testing.assert_allclose(out["fc-conv"].reshape(1, 5), fc_out, rtol=1e-5)
    saved = load_weights(tmp_path / "full_conv.caffemodel")
    np.testing.assert_array_equal(saved["fc-conv"][0].reshape(5, 48), (np.arange(5 * 48).reshape(5, 48) / 100.0).astype(np.float32))
    ours = load_net(tmp_path / "conv.prototxt", TEST, weights=tmp_path / "full_conv.caffemodel")
    with torch.no_grad():
        np.testing.assert_array_equal(ours.forward({"data": torch.from_numpy(im_input)})["fc-conv"].numpy(), out["fc-conv"])


def test_blob_arrays_are_views_of_the_torch_tensors(tmp_path):
    (tmp_path / "fc.prototxt").write_text(FC_NET)
    net = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST)
    weights = net.params["fc"][0].data
    layer = net.torch_net.layer_by_name("fc")
    with torch.no_grad():
        layer.blobs[0].mul_(0).add_(2.0)
    assert (weights == 2.0).all()  # torch -> numpy
    weights[...] = 0
    net.params["fc"][1].data[...] = 7
    out = net.forward(data=np.ones((1, 2, 6, 6), np.float32))
    np.testing.assert_array_equal(out["fc"], np.full((1, 5), 7, np.float32))  # numpy -> torch
    x = np.ones((1, 2, 6, 6), np.float64) * 0.5  # float64, as numpy mean subtraction gives
    net.blobs["data"].data[...] = x
    assert net.blobs["data"].data.dtype == np.float32
    assert net.forward()["fc"].dtype == np.float32


# ---------------------------------------------------------------------------- 01-learning-lenet

SOLVER = """net: "{net}"
test_iter: 2
test_interval: {interval}
test_initialization: {init}
display: 1
max_iter: 12
snapshot: 0
snapshot_prefix: "snap"
random_seed: 1701
type: "SGD"
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "step"
gamma: 0.5
stepsize: 4
"""


def test_solver_loop_reads_losses_and_accuracy_like_the_library(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(lenet_workdir(fixtures, tmp_path))
    Path("library.prototxt").write_text(SOLVER.format(net="net.prototxt", interval=6, init="true"))
    Path("notebook.prototxt").write_text(SOLVER.format(net="net.prototxt", interval=1000, init="false"))
    library = Solver("library.prototxt", TrainOptions(weights=["init.caffemodel"], progress=False),
                     log=CaffeLog(io.StringIO()))
    want = library.solve()

    # --- the notebook: the test loop is written by hand and the solver never tests by itself
    solver = caffe.SGDSolver('notebook.prototxt')
    solver.net.copy_from('init.caffemodel')
    assert [(k, v.data.shape) for k, v in solver.net.blobs.items()][:2] == [('data', (8, 1, 28, 28)), ('label', (8,))]
    assert [(k, v[0].data.shape) for k, v in solver.net.params.items()][0] == ('conv1', (8, 1, 5, 5))
    niter = 12
    test_interval = 6
    train_loss = np.zeros(niter)
    test_acc = np.zeros(int(np.ceil(niter / test_interval)) + 1)
    output = np.zeros((niter, 8, 10))
    for it in range(niter):
        if it % test_interval == 0:
            acc = np.float32(0)
            for test_it in range(2):
                solver.test_nets[0].forward()
                acc += solver.test_nets[0].blobs['accuracy'].data
                correct = sum(solver.test_nets[0].blobs['ip2'].data.argmax(1) == solver.test_nets[0].blobs['label'].data)
                assert correct / 8 == solver.test_nets[0].blobs['accuracy'].data
            test_acc[it // test_interval] = acc / np.float32(2)
        solver.step(1)
        train_loss[it] = solver.net.blobs['loss'].data
        solver.test_nets[0].forward(start='conv1')
        output[it] = solver.test_nets[0].blobs['ip2'].data[:8]
    # ---

    assert solver.iter == 12
    np.testing.assert_array_equal(train_loss, [loss for _, loss in want.losses])
    library_acc = [means["accuracy"][0] for it, _, means in want.tests if it < niter]
    np.testing.assert_array_equal(test_acc[:2], library_acc)
    assert len(set(train_loss)) > 1 and output.any()


def test_solver_snapshot_restore_and_manual_updates(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(lenet_workdir(fixtures, tmp_path))
    Path("solver.prototxt").write_text(SOLVER.format(net="net.prototxt", interval=6, init="false"))
    solver = caffe.get_solver("solver.prototxt")
    assert isinstance(solver, caffe.SGDSolver) and solver.param.base_lr == np.float32(0.01)
    solver.step(4)
    solver.snapshot()
    assert Path("snap_iter_4.caffemodel").is_file() and Path("snap_iter_4.solverstate").is_file()
    solver.step(2)
    after = solver.net.params["ip2"][0].data.copy()
    again = caffe.SGDSolver("solver.prototxt")
    again.restore("snap_iter_4.solverstate")
    assert again.iter == 4
    again.step(2)
    np.testing.assert_array_equal(again.net.params["ip2"][0].data, after)

    # a hand-written iteration: forward, backward, apply_update changes the weights by the gradient
    before = again.net.params["ip2"][0].data.copy()
    again.net.clear_param_diffs()
    again.net.forward()
    again.net.backward()
    grad = again.net.params["ip2"][0].diff.copy()
    assert np.abs(grad).max() > 0
    again.apply_update()
    assert not np.array_equal(again.net.params["ip2"][0].data, before)


def test_adam_solver_class_overrides_the_file_type(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(lenet_workdir(fixtures, tmp_path))
    Path("solver.prototxt").write_text(SOLVER.format(net="net.prototxt", interval=6, init="false"))
    solver = caffe.AdamSolver("solver.prototxt")
    assert solver.param.type == "Adam"
    solver.step(1)
    assert np.isfinite(solver.net.blobs["loss"].data)


# ---------------------------------------------------------------------------- pycaffe Python loss layer

PYLOSS = '''
import numpy as np
import caffe_compat.pycaffe as caffe


class EuclideanLossLayer(caffe.Layer):
    """Compute the Euclidean Loss in the same manner as the C++ EuclideanLossLayer."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class ScaleByLearned(caffe.Layer):
    """y = w * x with one learned w (a Python layer with its own blob)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = float(self.param_str or 1.0)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff
'''

LINREG = """name: "LinReg"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 10 dim: 3 } shape { dim: 10 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "{loss}" bottom: "ip" bottom: "label" top: "loss" {python} loss_weight: 1 }
"""
PYTHON_PARAM = 'python_param { module: "pyloss_example" layer: "EuclideanLossLayer" }'


@pytest.fixture
def pyloss_module(tmp_path, monkeypatch):
    (tmp_path / "pyloss_example.py").write_text(PYLOSS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("pyloss_example", None)


def test_python_loss_layer_equals_the_builtin_euclidean_loss(pyloss_module):
    work = pyloss_module
    (work / "py.prototxt").write_text(LINREG.replace("{loss}", "Python").replace("{python}", PYTHON_PARAM))
    (work / "cpp.prototxt").write_text(LINREG.replace("{loss}", "EuclideanLoss").replace("{python}", ""))
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 3)).astype(np.float32), rng.normal(size=(10, 1)).astype(np.float32)

    caffe.set_random_seed(5)
    net = caffe.Net(str(work / "py.prototxt"), caffe.TRAIN)
    net.forward(data=x, label=y)
    net.backward()
    py_loss, py_grad = net.blobs["loss"].data.copy(), net.params["ip"][0].diff.copy()
    assert type(net.layer_dict["loss"]).__name__ == "EuclideanLossLayer"  # pycaffe gives the Python object

    builtin = CaffeNet(parse_net_text((work / "cpp.prototxt").read_text()), TRAIN)
    builtin.load_state_dict(net.torch_net.state_dict())
    out = builtin.forward({"data": torch.from_numpy(x), "label": torch.from_numpy(y)})
    builtin.loss(out).backward()
    np.testing.assert_allclose(py_loss, out["loss"].detach().numpy().reshape(py_loss.shape), rtol=1e-6)
    np.testing.assert_allclose(py_grad, builtin.layer_by_name("ip").blobs[0].grad.numpy(), rtol=1e-5)


def test_python_layer_with_learned_blob_trains_in_the_library_solver(pyloss_module, monkeypatch):
    work = pyloss_module
    net_text = """name: "py"
layer { name: "data" type: "DummyData" top: "x" dummy_data_param { shape { dim: 4 dim: 2 }
        data_filler { type: "gaussian" } } }
layer { name: "target" type: "Scale" bottom: "x" top: "t" param { lr_mult: 0 }
        scale_param { filler { type: "constant" value: 3 } } }
layer { name: "scaled" type: "Python" bottom: "x" top: "y" param { lr_mult: 1 }
        python_param { module: "pyloss_example" layer: "ScaleByLearned" param_str: "0.5" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""
    (work / "net.prototxt").write_text(net_text)
    (work / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.05\nlr_policy: "fixed"\nmax_iter: 60\n'
                                          'display: 0\nsnapshot_after_train: true\nsnapshot_prefix: "py"\nrandom_seed: 2\n')
    monkeypatch.chdir(work)
    result = Solver("solver.prototxt", TrainOptions(progress=False), log=CaffeLog(io.StringIO())).solve()
    learned = load_weights("py_iter_60.caffemodel")["scaled"][0]
    assert abs(float(learned[0]) - 3.0) < 0.1  # the Python layer's blob learned the target scale
    assert result.losses[-1][1] < 0.01 * result.losses[0][1]


def test_python_layer_module_missing_is_one_clear_error(tmp_path):
    from caffe_compat.errors import CaffeCompatError

    (tmp_path / "net.prototxt").write_text(LINREG.replace("{loss}", "Python").replace(
        "{python}", 'python_param { module: "no_such_module_xyz" layer: "L" }'))
    with pytest.raises(CaffeCompatError, match="cannot import python_param.module 'no_such_module_xyz'.*PYTHONPATH"):
        caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)


# ---------------------------------------------------------------------------- more of the API


def test_backward_gives_input_gradients_and_deep_dream_style_partial_passes(tmp_path):
    (tmp_path / "fc.prototxt").write_text("force_backward: true\n" + FC_NET)
    net = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST)
    x = np.random.default_rng(1).normal(size=(1, 2, 6, 6)).astype(np.float32)
    net.forward(data=x)
    diffs = net.backward(fc=np.ones((1, 5), np.float32))
    ours = CaffeNet(parse_net_text((tmp_path / "fc.prototxt").read_text()), TEST)
    ours.load_state_dict(net.torch_net.state_dict())
    xt = torch.from_numpy(x).requires_grad_()
    ours.forward({"data": xt})["fc"].sum().backward()
    np.testing.assert_allclose(diffs["data"], xt.grad.numpy(), rtol=1e-5)

    # deep dream: forward to a layer, set its top's diff, backward from there
    net.forward(end="conv")
    dst = net.blobs["conv"]
    dst.diff[:] = dst.data
    net.backward(start="conv")
    xt.grad = None
    conv = ours.forward({"data": xt}, blobs=["conv"])["conv"]
    (conv * conv.detach()).sum().backward()
    np.testing.assert_allclose(net.blobs["data"].diff, xt.grad.numpy(), rtol=1e-5)


def test_forward_all_pads_the_last_batch_and_memory_data_reads_arrays(tmp_path):
    (tmp_path / "fc.prototxt").write_text(FC_NET)
    net = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST)
    x = np.random.default_rng(2).normal(size=(3, 2, 6, 6)).astype(np.float32)
    out = net.forward_all(data=x)
    assert out["fc"].shape == (3, 5)
    np.testing.assert_allclose(out["fc"][1], net.forward(data=x[1:2])["fc"][0], rtol=1e-6)

    mem = FC_NET.replace('name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } }',
                         'name: "data" type: "MemoryData" top: "data" top: "label" '
                         'memory_data_param { batch_size: 1 channels: 2 height: 6 width: 6 }')
    (tmp_path / "mem.prototxt").write_text(mem)
    mnet = caffe.Net(str(tmp_path / "mem.prototxt"), caffe.TEST)
    mnet.share_with(net)
    mnet.set_input_arrays(x, np.arange(3, dtype=np.float32))
    firsts = [mnet.forward()["fc"][0].copy() for _ in range(4)]
    np.testing.assert_allclose(firsts[3], firsts[0])  # wraps around after 3
    np.testing.assert_allclose(np.stack(firsts[:3]), out["fc"], rtol=1e-6)
    assert mnet.blobs["label"].data.tolist() == [0.0]


def test_hdf5_save_and_copy_from(tmp_path):
    (tmp_path / "fc.prototxt").write_text(FC_NET)
    net = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST)
    net.save_hdf5(str(tmp_path / "w.caffemodel.h5"))
    other = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST, weights=str(tmp_path / "w.caffemodel.h5"))
    for name in net.params:
        for a, b in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)


def test_io_conversions_and_mode_switches(fixtures, caplog):
    mean = caffe.proto.caffe_pb2.BlobProto()
    mean.ParseFromString((fixtures / "mean" / "train_raw32_mean.binaryproto").read_bytes())
    arr = caffe.io.blobproto_to_array(mean)
    np.testing.assert_array_equal(arr, read_binaryproto(fixtures / "mean" / "train_raw32_mean.binaryproto"))
    back = caffe.io.blobproto_to_array(caffe.io.array_to_blobproto(arr))
    np.testing.assert_array_equal(back, arr)
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(pixels, label=3)
    assert datum.label == 3 and caffe.io.datum_to_array(datum).tolist() == pixels.tolist()
    floats = caffe.io.array_to_datum(pixels.astype(np.float32) / 2)
    np.testing.assert_array_equal(caffe.io.datum_to_array(floats), pixels / 2)
    listed = caffe.io.blobprotovector_str_to_arraylist(caffe.io.arraylist_to_blobprotovector_str([arr, arr[0]]))
    assert [a.shape for a in listed] == [arr.shape, arr[0].shape]
    grey = caffe.io.load_image(str(fixtures / "images" / "b" / "grey_013.png"), color=False)
    colour = caffe.io.load_image(str(fixtures / "images" / "b" / "grey_013.png"))
    assert grey.shape == (32, 32, 1) and colour.shape == (32, 32, 3) and grey.dtype == np.float32
    np.testing.assert_array_equal(colour[:, :, 0], grey[:, :, 0])
    assert 0 <= grey.min() and grey.max() <= 1

    if not torch.cuda.is_available():
        with caplog.at_level("WARNING"):
            caffe.set_mode_gpu()
            caffe.set_device(0)
        assert "no CUDA device is available; running on the CPU" in caplog.text
    caffe.set_mode_cpu()


def test_net_spec_writes_lenet_as_pycaffe_does(tmp_path):
    from caffe_compat.pycaffe import layers as L, params as P

    def lenet(lmdb, batch_size):
        n = caffe.NetSpec()
        n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                                 transform_param=dict(scale=1. / 255), ntop=2)
        n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
        n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
        n.fc1 = L.InnerProduct(n.pool1, num_output=500, weight_filler=dict(type='xavier'))
        n.relu1 = L.ReLU(n.fc1, in_place=True)
        n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
        n.loss = L.SoftmaxWithLoss(n.score, n.label)
        return n.to_proto()

    proto = lenet("mnist_train_lmdb", 64)
    text = str(proto)
    assert [layer.name for layer in proto.layer] == ["data", "conv1", "pool1", "fc1", "relu1", "score", "loss"]
    assert 'source: "mnist_train_lmdb"' in text and "scale: 0.003921" in text and "pool: MAX" in text
    assert list(proto.layer[4].top) == ["fc1"]  # in place
    anonymous = caffe.to_proto(L.ReLU(L.Input(shape=dict(dim=[1, 2]))))
    assert [(lay.name, list(lay.top)) for lay in anonymous.layer] == [("Input1", ["Input1"]), ("ReLU1", ["ReLU1"])]
    (tmp_path / "net.prototxt").write_text(str(anonymous))
    assert caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST).blobs["ReLU1"].shape == (1, 2)


def test_arrays_of_tensors_numpy_cannot_view_are_written_back_before_the_next_run(tmp_path):
    """The GPU path on the CPU: a bf16 tensor (like a CUDA one) has no numpy view, so ``.data``
    is a host copy that the next forward / backward / step pushes back into the tensor."""
    (tmp_path / "fc.prototxt").write_text(FC_NET)
    net = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST)
    layer = net.torch_net.layer_by_name("fc")
    layer.blobs[1].data = layer.blobs[1].data.to(torch.bfloat16)
    bias = net.params["fc"][1].data
    assert bias.dtype == np.float32 and not np.shares_memory(bias, layer.blobs[1].detach().float().numpy())
    bias[...] = 3
    net._push_mirrors()
    assert layer.blobs[1].dtype == torch.bfloat16 and (layer.blobs[1] == 3).all()


def test_data_layer_nets_read_successive_batches_and_reshape_propagates(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(lenet_workdir(fixtures, tmp_path))
    net = caffe.Net("net.prototxt", "init.caffemodel", caffe.TEST)
    ours = load_net("net.prototxt", TEST, weights="init.caffemodel")
    for _ in range(3):
        out = net.forward()
        with torch.no_grad():
            want = ours.forward()
        np.testing.assert_array_equal(out["accuracy"], want["accuracy"].numpy())
        np.testing.assert_array_equal(out["loss"], want["loss"].numpy())

    (tmp_path / "fc.prototxt").write_text(FC_NET)
    small = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST)
    small.blobs["data"].reshape(4, 2, 6, 6)
    small.reshape()
    assert small.blobs["conv"].shape == (4, 3, 4, 4) and small.blobs["fc"].shape == (4, 5)
