"""The committed ResNet-50 / ResNet-50-1by2 definitions under prototxt/ (issue 6)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from caffe_compat.io.prototxt import parse_net_text, read_net, read_solver
from caffe_compat.net.registry import TEST, TRAIN
from caffe_compat.workflow import prototxt_defs

PROTOTXT = Path(__file__).resolve().parents[1] / "prototxt"
NETS = sorted(p for p in PROTOTXT.rglob("*.prototxt") if p.name != "solver.prototxt")
SOLVERS = sorted(PROTOTXT.rglob("solver.prototxt"))


def _generator():
    spec = importlib.util.spec_from_file_location("prototxt_generate", PROTOTXT / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_are_what_the_generator_writes():
    files = _generator().files()
    assert len(files) == 18
    for rel, text in files.items():
        assert (PROTOTXT / rel).read_text(encoding="utf-8") == text, f"prototxt/{rel} is stale: run prototxt/generate.py"


@pytest.mark.parametrize("path", NETS + SOLVERS, ids=lambda p: str(p.relative_to(PROTOTXT)))
def test_every_file_parses(path):
    if path.name == "solver.prototxt":
        solver = read_solver(path)
        if "scut_fbp5500" in path.parts:  # SGD with the squared loss diverged on real faces (issue 12)
            assert solver.type == "Adam" and solver.lr_policy == "poly" and solver.snapshot > 0
        else:
            assert solver.type == "SGD" and solver.lr_policy == "step" and solver.snapshot > 0
        assert (PROTOTXT.parent / solver.net).resolve() == path.with_name("train_val.prototxt")
    else:
        assert len(read_net(path).layer) > 200


def _names(net_param):
    return [layer.name for layer in net_param.layer]


def test_resnet50_uses_the_original_caffe_release_names():
    net = read_net(PROTOTXT / "resnet50" / "deploy.prototxt")
    names = _names(net)
    expected = ["data", "conv1", "bn_conv1", "scale_conv1", "conv1_relu", "pool1",
                "res2a_branch1", "bn2a_branch1", "scale2a_branch1",
                "res2a_branch2a", "bn2a_branch2a", "scale2a_branch2a", "res2a_branch2a_relu",
                "res2a_branch2b", "bn2a_branch2b", "scale2a_branch2b", "res2a_branch2b_relu",
                "res2a_branch2c", "bn2a_branch2c", "scale2a_branch2c", "res2a", "res2a_relu"]
    assert names[: len(expected)] == expected
    assert names[-4:] == ["res5c_relu", "pool5", "fc40", "prob"]
    blocks = {m.group(1) for n in names if (m := re.fullmatch(r"res(\d[a-f])", n))}
    assert blocks == {f"{s}{b}" for s, n in zip("2345", (3, 4, 6, 3)) for b in "abcdef"[:n]}
    convs = {layer.name: layer.convolution_param for layer in net.layer if layer.type == "Convolution"}
    assert len(convs) == 53
    assert [n for n, p in convs.items() if p.bias_term] == ["conv1"]
    assert convs["res3a_branch1"].stride == [2] and convs["res3a_branch2a"].stride == [2]
    assert convs["res3a_branch2b"].stride == [1] and convs["res5c_branch2c"].num_output == 2048


def test_resnet50_1by2_has_exactly_the_nsfw_layer_names(nsfw_dir):
    nsfw = read_net(nsfw_dir / "deploy.prototxt")
    ours = read_net(PROTOTXT / "resnet50_1by2" / "deploy.prototxt")
    assert _names(ours)[:-2] == _names(nsfw)[:-2]  # all but fc_nsfw / prob
    assert _names(nsfw)[-2:] == ["fc_nsfw", "prob"] and _names(ours)[-2:] == ["fc40", "prob"]
    for theirs, mine in zip(nsfw.layer[:-2], ours.layer[:-2]):
        assert (mine.type, list(mine.bottom), list(mine.top)) == (theirs.type, list(theirs.bottom), list(theirs.top))
        if mine.type == "Convolution":
            a, b = theirs.convolution_param, mine.convolution_param
            assert (a.num_output, a.kernel_size, a.stride, a.pad, a.bias_term) == \
                (b.num_output, b.kernel_size, b.stride, b.pad, b.bias_term), mine.name


def test_train_val_phases_heads_and_data():
    for backbone in ("resnet50", "resnet50_1by2"):
        net = read_net(PROTOTXT / backbone / "train_val.prototxt")
        data = [layer for layer in net.layer if layer.type == "Data"]
        assert [d.include[0].phase for d in data] == [TRAIN, TEST]
        assert [d.transform_param.mirror for d in data] == [True, False]
        assert {d.transform_param.crop_size for d in data} == {224}
        assert all(d.transform_param.mean_file == "data/mean.binaryproto" for d in data)
        types = {layer.name: layer.type for layer in net.layer}
        assert types["loss"] == "SoftmaxWithLoss" and types["prob"] == "Softmax"
        tops5 = [layer.accuracy_param.top_k for layer in net.layer if layer.type == "Accuracy"]
        assert tops5 == [1, 5]
        assert all(layer.batch_norm_param.use_global_stats for layer in net.layer if layer.type == "BatchNorm")
        scut = read_net(PROTOTXT / "scut_fbp5500" / backbone / "train_val.prototxt")
        types = {layer.name: layer for layer in scut.layer}
        assert types["loss"].type == "Reduction" and list(types["loss"].loss_weight) == [1.0]
        assert types["residual"].eltwise_param.coeff == [1.0, -1.0]
        assert list(types["residual"].bottom) == ["fc_score", "label_column"]
        assert types["fc_score"].inner_product_param.num_output == 1
        assert types["label_score"].power_param.scale == pytest.approx(1 / prototxt_defs.REGRESSION_LABEL_SCALE)
    classes = read_net(PROTOTXT / "scut_fbp5500" / "resnet50_1by2_40" / "train_val.prototxt")
    sources = [layer.data_param.source for layer in classes.layer if layer.type == "Data"]
    assert sources == ["data/scut40_train_lmdb", "data/scut40_test_lmdb"]
    assert {layer.name: layer.type for layer in classes.layer}["loss"] == "SoftmaxWithLoss"


def test_scut_l1_loss_is_the_mean_absolute_error():
    """The BVLC-only L1 loss of the regression recipes: mean |fc_score - label / 100|, gradient sign / N."""
    import torch

    from caffe_compat.net.builder import CaffeNet

    layers = prototxt_defs._l1_loss("fc_score")
    text = ('layer { name: "in" type: "Input" top: "fc_score" top: "label" '
            'input_param { shape { dim: 4 dim: 1 } shape { dim: 4 } } }\n'
            + "\n".join("layer {\n" + prototxt_defs.to_text(layer, 1) + "\n}" for layer in layers))
    net = CaffeNet(parse_net_text(text), TRAIN)
    pred = torch.tensor([[3.0], [2.0], [1.5], [4.2]], requires_grad=True)
    label = torch.tensor([250.0, 200.0, 300.0, 410.0])
    loss = net.loss(net({"fc_score": pred, "label": label}))
    assert float(loss.detach()) == pytest.approx((0.5 + 0.0 + 1.5 + 0.1) / 4)
    loss.backward()
    np.testing.assert_allclose(pred.grad.reshape(-1).numpy(), [0.25, 0.0, -0.25, 0.25])


def _shapes(net_param, phase):
    from caffe_compat.net.shapes import infer_blob_shapes

    return infer_blob_shapes(net_param, phase=phase)


@pytest.mark.parametrize("backbone,features", [("resnet50", 2048), ("resnet50_1by2", 1024)])
def test_shape_inference_of_every_variant(backbone, features):
    pool = "pool5" if backbone == "resnet50" else "pool"
    deploy = _shapes(read_net(PROTOTXT / backbone / "deploy.prototxt"), TEST)
    assert tuple(deploy[pool]) == (1, features, 1, 1)
    assert tuple(deploy["prob"]) == (1, 40)
    scut = _shapes(read_net(PROTOTXT / "scut_fbp5500" / backbone / "deploy.prototxt"), TEST)
    assert tuple(scut["fc_score"]) == (1, 1)
    # The train_val's Data layers read LMDBs that only exist in a project: shape-check the same
    # definition with the data fed as Input blobs of the Data layers' shapes instead.
    for phase, batch in ((TRAIN, 32), (TEST, 25)):
        for task, head in (("score40", (batch, 40)), ("scut", (batch, 1)), ("scut40", (batch, 40))):
            text = prototxt_defs.train_val(backbone, task)
            text = _data_as_input(text, batch)
            shapes = _shapes(parse_net_text(text), phase)
            assert tuple(shapes["fc_score" if task == "scut" else "fc40"]) == head
            assert tuple(shapes["loss"]) == ()


def _data_as_input(text: str, batch: int) -> str:
    """The train_val with its two Data layers replaced by one Input layer giving data and label."""
    body = re.sub(r'layer \{\n  name: "data"\n  type: "Data".*?\n\}\n', "", text, flags=re.S)
    head, rest = body.split("\n", 1)
    data = prototxt_defs.to_text([("layer", [
        ("name", "data"), ("type", "Input"), ("top", "data"), ("top", "label"),
        ("input_param", [("shape", [("dim", batch), ("dim", 3), ("dim", 224), ("dim", 224)]),
                         ("shape", [("dim", batch)])]),
    ])])
    return f"{head}\n{data}\n{rest}"


def test_1by2_loads_the_nsfw_weights_except_the_new_head(nsfw_dir, fixtures):
    import torch

    from caffe_compat.net.builder import load_net

    net = load_net(PROTOTXT / "resnet50_1by2" / "deploy.prototxt")
    report = net.copy_from(nsfw_dir / "resnet_50_1by2_nsfw.caffemodel")
    learnable = {step.name for step in net.steps if len(step.layer.blobs)}
    assert set(report.loaded) == learnable - {"fc40"}
    assert report.initialised == ["fc40"] and report.ignored == ["fc_nsfw"] and not report.skipped
    # Same trunk, same weights: the pool features equal real Caffe's on the fixture input.
    x = np.load(fixtures / "nsfw" / "input.npy")
    with torch.no_grad():
        pool = net({"data": torch.from_numpy(x[:1])}, blobs=["pool"])["pool"]
    np.testing.assert_allclose(pool.numpy(), np.load(fixtures / "nsfw" / "pool.npy")[:1], rtol=1e-3, atol=1e-4)


def test_1by2_train_val_builds_on_a_real_lmdb_and_loads_the_nsfw_weights(nsfw_dir, fixtures, tmp_path):
    """Both phases of the committed train_val definition, its Data layers pointed at a tiny LMDB."""
    import torch

    from caffe_compat.io.blob import write_binaryproto
    from caffe_compat.net.builder import CaffeNet

    mean = tmp_path / "mean.binaryproto"
    write_binaryproto(mean, np.full((1, 3, 256, 256), 110.0, np.float32), legacy_dims=True)
    lmdb = str(fixtures / "nsfw" / "crop_lmdb")
    spec = prototxt_defs.DataSpec(train_source=lmdb, val_source=lmdb, mean_file=str(mean), train_batch=1, val_batch=1)
    net_param = parse_net_text(prototxt_defs.train_val("resnet50_1by2", "score40", spec))
    for phase in (TRAIN, TEST):
        net = CaffeNet(net_param, phase=phase)
        report = net.copy_from(nsfw_dir / "resnet_50_1by2_nsfw.caffemodel")
        assert report.initialised == ["fc40"] and report.ignored == ["fc_nsfw"]
    with torch.no_grad():
        out = net(blobs=["prob", "label", "loss", "accuracy_top5"])
    assert tuple(out["prob"].shape) == (1, 40) and float(out["label"][0]) == 0.0
    assert float(out["loss"]) == pytest.approx(-np.log(float(out["prob"][0, 0])), rel=1e-4)
