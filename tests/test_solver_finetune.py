"""Finetuning (copy by name, renamed head from fillers, lr_mult 0 freezes), iter_size, bf16/channels_last, CLI."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.io.caffemodel import load_weights
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.solver import Solver, TrainOptions
from solver_util import lenet_workdir, no_batchnorm

SOLVER = """net: "{net}"
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
display: 1
max_iter: {max_iter}
iter_size: {iter_size}
snapshot_prefix: "lenet"
solver_mode: CPU
random_seed: 5
"""


@pytest.fixture
def work(fixtures, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(lenet_workdir(fixtures, tmp_path))
    return tmp_path


def write_solver(work: Path, net="net.prototxt", max_iter=3, iter_size=1) -> str:
    (work / "solver.prototxt").write_text(SOLVER.format(net=net, max_iter=max_iter, iter_size=iter_size))
    return "solver.prototxt"


def edit_net(work: Path, name: str, *replacements: tuple[str, str]) -> str:
    text = (work / "net.prototxt").read_text()
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new, 1)
    (work / name).write_text(text)
    return name


def test_finetune_renamed_head_and_frozen_layer(work):
    net = edit_net(
        work, "ft.prototxt",
        ('name: "ip2"', 'name: "ip2_40"'),
        ('top: "conv1"\n  param { lr_mult: 1 decay_mult: 1 }\n  param { lr_mult: 2 decay_mult: 0 }',
         'top: "conv1"\n  param { lr_mult: 0 decay_mult: 1 }\n  param { lr_mult: 0 decay_mult: 0 }'),
    )
    text = (work / net).read_text()
    head = text.index('name: "ip2_40"')
    (work / net).write_text(text[:head] + text[head:].replace("num_output: 10", "num_output: 40", 1))
    out = io.StringIO()
    solver = Solver(write_solver(work, net), TrainOptions(weights=["init.caffemodel"], progress=False), log=CaffeLog(out))
    init = load_weights("init.caffemodel")
    head_before = solver.net.layer_by_name("ip2_40").blobs[0].detach().clone()
    assert tuple(head_before.shape) == (40, 32)
    assert head_before.abs().sum() > 0  # xavier filler, not zeros
    solver.solve()
    log = out.getvalue()
    assert "Weights: 5 layer(s) loaded from init.caffemodel; initialised by fillers: ip2_40; " \
           "in the weights but not in the net (ignored): ip2" in log
    assert "Frozen (lr_mult 0 on some blob): bn1, conv1" in log
    after = load_weights("lenet_iter_3.caffemodel")
    np.testing.assert_array_equal(after["conv1"][0], init["conv1"][0])  # lr_mult 0: frozen
    np.testing.assert_array_equal(after["conv1"][1], init["conv1"][1])
    assert not np.array_equal(after["conv2"][0], init["conv2"][0])  # learning elsewhere
    assert not np.array_equal(after["ip2_40"][0], head_before.numpy())


def run(work: Path, net: str, iter_size: int, **options):
    solver = Solver(write_solver(work, net, max_iter=3, iter_size=iter_size),
                    TrainOptions(weights=["init.caffemodel"], progress=False, **options), log=CaffeLog(io.StringIO()))
    result = solver.solve()
    return result, load_weights("lenet_iter_3.caffemodel")


def test_iter_size_accumulates_like_a_bigger_batch(work):
    small, big = no_batchnorm(work, "b8.prototxt", 8), no_batchnorm(work, "b16.prototxt", 16)
    acc_result, accumulated = run(work, small, iter_size=2)
    big_result, bigger = run(work, big, iter_size=1)
    for layer, blobs in bigger.items():
        for a, b in zip(accumulated[layer], blobs):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # the logged loss is the mean over both sub-batches = the batch-16 loss
    np.testing.assert_allclose([v for _, v in acc_result.losses], [v for _, v in big_result.losses], rtol=1e-5)


def test_bf16_autocast_and_channels_last_on_cpu(work):
    fp32, w32 = run(work, "net.prototxt", 1)
    bf16, w16 = run(work, "net.prototxt", 1, bf16=True, channels_last=True)
    # master weights stay float32; bf16 compute gives close, not equal, losses
    assert all(a.dtype == np.float32 for blobs in w16.values() for a in blobs)
    np.testing.assert_allclose([v for _, v in bf16.losses], [v for _, v in fp32.losses], rtol=3e-2)
    assert not np.array_equal(w16["conv2"][0], w32["conv2"][0])


def test_cli_train_and_plot_log(work):
    write_solver(work, max_iter=2)
    runner = CliRunner()
    res = runner.invoke(main, ["train", "-solver", "solver.prototxt", "-weights", "init.caffemodel",
                               "-iterations", "2", "-log", "train.log", "--no-progress", "-workers", "0"])
    assert res.exit_code == 0, res.output
    assert Path("lenet_iter_2.caffemodel").is_file() and Path("lenet_iter_2.solverstate").is_file()
    log = Path("train.log").read_text()
    assert "] Iteration 1 (" in log and "Train net output #0: loss = " in log and "Optimization Done." in log
    res = runner.invoke(main, ["plot-log", "train.log", "-o", "curves.png"])
    assert res.exit_code == 0, res.output
    assert Path("curves.png").read_bytes()[:4] == b"\x89PNG"
    # resume continues from our snapshot; errors are one line, no traceback
    res = runner.invoke(main, ["train", "--solver", "solver.prototxt", "--snapshot", "lenet_iter_2.solverstate",
                               "--iterations", "3", "--no-progress", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert Path("lenet_iter_3.solverstate").is_file()
    res = runner.invoke(main, ["train", "-solver", "solver.prototxt", "-weights", "init.caffemodel",
                               "-snapshot", "lenet_iter_2.solverstate"])
    assert res.exit_code == 1 and "not both" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["train", "-solver", "missing.prototxt"])
    assert res.exit_code == 1 and "missing.prototxt: solver file does not exist" in res.output


def test_prefetch_workers_and_device_transform_give_the_same_run(work):
    """Worker processes and the GPU path's uint8-batch + on-device transform (run here on CPU)."""
    _, inline = run(work, "net.prototxt", 1, workers=0)
    _, workers = run(work, "net.prototxt", 1, workers=2)
    _, on_device = run(work, "net.prototxt", 1, workers=0, device_transform=True)
    for layer, blobs in inline.items():
        for a, b, c in zip(blobs, workers[layer], on_device[layer]):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)


def test_imagedata_list_trains_like_the_lmdb_made_from_it(work, fixtures):
    """ImageData over the PNGs + list file == Data over the LMDB convert_imageset made from them."""
    net = edit_net(
        work, "images.prototxt",
        ('type: "Data"\n  top: "data"\n  top: "label"\n  include { phase: TRAIN }\n'
         '  transform_param { scale: 0.00390625 }\n'
         '  data_param { source: "data/train_lmdb" batch_size: 8 backend: LMDB }',
         'type: "ImageData"\n  top: "data"\n  top: "label"\n  include { phase: TRAIN }\n'
         '  transform_param { scale: 0.00390625 }\n'
         f'  image_data_param {{ source: "{fixtures}/solver/data/train_list.txt" '
         f'root_folder: "{fixtures}/solver/data/images/" batch_size: 8 is_color: false }}'),
    )
    from_lmdb, w_lmdb = run(work, "net.prototxt", 1)
    from_images, w_images = run(work, net, 1)
    assert from_images.losses == from_lmdb.losses
    for layer, blobs in w_lmdb.items():
        for a, b in zip(blobs, w_images[layer]):
            np.testing.assert_array_equal(a, b)


def test_two_generic_test_nets_and_test_compute_loss(work):
    """``test_iter`` given twice with one ``net``: two TEST instances, each with its own data cursor."""
    (work / "solver.prototxt").write_text(
        'net: "net.prototxt"\ntest_iter: 1\ntest_iter: 2\ntest_interval: 2\ntest_compute_loss: true\n'
        'base_lr: 0.01\nlr_policy: "fixed"\ndisplay: 1\nmax_iter: 2\nsnapshot_after_train: false\n'
        'solver_mode: CPU\nrandom_seed: 1\n'
    )
    out = io.StringIO()
    solver = Solver("solver.prototxt", TrainOptions(weights=["init.caffemodel"], progress=False), log=CaffeLog(out))
    result = solver.solve()
    assert [(it, net) for it, net, _ in result.tests] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert [f.feeds[0].consumed for f in solver.test_feeders] == [2, 4]
    # both share the train net's blobs (ShareTrainedLayersWith), BatchNorm statistics included
    for name in ("conv1", "bn1", "ip2"):
        train_blobs = list(solver.net.layer_by_name(name).blobs)
        for test_net in solver.test_nets:
            assert all(a is b for a, b in zip(test_net.layer_by_name(name).blobs, train_blobs))
    log = out.getvalue()
    assert "Iteration 2, Testing net (#1)" in log and "] Test loss: " in log


@pytest.mark.slow  # inductor compiles the net (~20 s on the dev box)
def test_torch_compile_matches_eager(work):
    eager, w_eager = run(work, "net.prototxt", 1)
    compiled, w_compiled = run(work, "net.prototxt", 1, compile=True)
    np.testing.assert_allclose([v for _, v in compiled.losses], [v for _, v in eager.losses], rtol=1e-5)
    for layer, blobs in w_eager.items():
        for a, b in zip(blobs, w_compiled[layer]):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_stages_and_level_select_layers(work):
    text = (work / "net.prototxt").read_text()
    extra = ('layer { name: "staged" type: "Power" bottom: "ip1" top: "ip1" power_param { scale: 0.5 }\n'
             '  include { phase: TRAIN stage: "half" min_level: 2 } }\n')
    at = text.index('layer {\n  name: "ip2"')
    (work / "staged.prototxt").write_text(text[:at] + extra + text[at:])
    for stages, level, present in (([], 0, False), (["half"], 0, False), (["half"], 2, True)):
        s = Solver(write_solver(work, "staged.prototxt"), TrainOptions(stages=stages, level=level, progress=False),
                   log=CaffeLog(io.StringIO()))
        assert (s.net.layer_by_name("staged") is not None) == present, (stages, level)
