"""HDF5Data and HDF5Output: Caffe's row order, shuffling, a training run, files written whole."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST, TRAIN
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.solver import Solver, TrainOptions

NET = """
name: "hdf5_logreg"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TRAIN }
        hdf5_data_param { source: "train.txt" batch_size: 10 {shuffle} } }
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TEST }
        hdf5_data_param { source: "test.txt" batch_size: 10 } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc1" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc1" bottom: "label" top: "accuracy" include { phase: TEST } }
"""

SOLVER = """net: "net.prototxt"
test_iter: 4
test_interval: 20
base_lr: 0.1
momentum: 0.9
lr_policy: "fixed"
display: 10
max_iter: 60
snapshot: 30
snapshot_prefix: "snap"
random_seed: 7
"""


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points whose label is the sign of a fixed linear score (float64, as numpy and sklearn write them)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return x, (x @ np.array([1.0, -2.0, 0.5, 1.5]) > 0).astype(np.float64)


def write_h5(path, **arrays) -> None:
    with h5py.File(path, "w") as h5:
        for name, values in arrays.items():
            h5[name] = values


@pytest.fixture
def hdf5_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = separable(100, 0)
    write_h5("train_a.h5", data=x[:60], label=y[:60])
    write_h5("train_b.h5", data=x[60:], label=y[60:])
    (tmp_path / "train.txt").write_text("train_a.h5\ntrain_b.h5\n")
    tx, ty = separable(40, 1)
    write_h5("test.h5", data=tx, label=ty)
    (tmp_path / "test.txt").write_text("test.h5\n")
    (tmp_path / "net.prototxt").write_text(NET.replace("{shuffle}", ""))
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path, x.astype(np.float32), y.astype(np.float32)


def test_rows_run_through_the_files_in_order_and_wrap_around(hdf5_work):
    work, x, y = hdf5_work
    net = CaffeNet(parse_net_text((work / "net.prototxt").read_text()), TRAIN)
    assert net.blob_shapes["data"] == (10, 4) and net.blob_shapes["label"] == (10,)
    layer = net.layer_by_name("data")
    seen = [layer.next_batch() for _ in range(13)]  # 130 rows: one epoch of 100 and 30 more
    data = torch.cat([d for d, _ in seen]).numpy()
    labels = torch.cat([lab for _, lab in seen]).numpy()
    order = np.r_[np.arange(100), np.arange(30)]
    np.testing.assert_array_equal(data, x[order])
    np.testing.assert_array_equal(labels, y[order])
    assert data.dtype == np.float32


def test_shuffle_permutes_every_epoch_and_batches_are_a_function_of_their_index(hdf5_work):
    work, x, _ = hdf5_work
    (work / "net.prototxt").write_text(NET.replace("{shuffle}", "shuffle: true"))
    net = CaffeNet(parse_net_text((work / "net.prototxt").read_text()), TRAIN)
    layer = net.layer_by_name("data")
    batches = layer.batches()
    epoch0 = np.concatenate([batches[b][0].numpy() for b in range(10)])
    epoch1 = np.concatenate([batches[b][0].numpy() for b in range(10, 20)])
    key = lambda rows: sorted(map(tuple, rows))  # noqa: E731
    assert key(epoch0) == key(x) == key(epoch1)
    assert not np.array_equal(epoch0, x) and not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(batches[3][0].numpy(), layer.batches()[3][0].numpy())


def test_hdf5_data_net_trains_and_resumes_exactly(hdf5_work):
    log = io.StringIO()
    solver = Solver("solver.prototxt", TrainOptions(progress=False, workers=2), log=CaffeLog(log))
    result = solver.solve()
    losses = [v for _, v in result.losses]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    final_accuracy = result.tests[-1][2]["accuracy"][0]
    assert final_accuracy >= 0.9
    resumed = Solver("solver.prototxt", TrainOptions(progress=False), log=CaffeLog(io.StringIO()))
    resumed.restore("snap_iter_30.solverstate")
    assert resumed.solve().losses == result.losses[30:]


def test_hdf5_output_writes_the_rows_of_every_forward(hdf5_work):
    work, x, y = hdf5_work
    text = NET.replace("{shuffle}", "") + """
layer { name: "out" type: "HDF5Output" bottom: "data" bottom: "label" hdf5_output_param { file_name: "out.h5" } }
"""
    net = CaffeNet(parse_net_text(text), TRAIN)
    assert not (work / "out.h5").exists()  # building the net writes nothing
    for _ in range(3):
        net.forward()
    with h5py.File(work / "out.h5", "r") as h5:
        assert h5["data"].shape == (30, 4, 1, 1) and h5["label"].shape == (30, 1, 1, 1)
        np.testing.assert_array_equal(h5["data"][()].reshape(30, 4), x[:30])
        np.testing.assert_array_equal(h5["label"][()].reshape(30), y[:30])
    assert [p.name for p in work.iterdir() if p.name.startswith(".out.h5")] == []


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.replace('source: "train.txt"', 'source: "nope.txt"'), "nope.txt: the list of HDF5 files does not exist"),
    (lambda t: t.replace('include { phase: TRAIN }\n', 'include { phase: TRAIN } transform_param { scale: 2 }\n', 1),
     "does not transform data"),
])
def test_bad_hdf5_data_layers_name_the_problem(hdf5_work, edit, needle):
    with pytest.raises(CaffeCompatError, match=needle) as err:
        CaffeNet(parse_net_text(edit(NET.replace("{shuffle}", ""))), TRAIN)
    assert "layer 'data'" in str(err.value)


def test_caffe_time_runs_an_hdf5_data_net(hdf5_work):
    result = CliRunner().invoke(main, ["time", "-model", "net.prototxt", "-iterations", "2"])
    assert result.exit_code == 0, result.output
    assert "Average Forward pass" in result.output


def test_missing_file_or_dataset_is_named(hdf5_work):
    work, x, _ = hdf5_work
    (work / "train.txt").write_text("train_a.h5 gone.h5\n")
    with pytest.raises(CaffeCompatError, match="lists 'gone.h5', which does not exist"):
        CaffeNet(parse_net_text(NET.replace("{shuffle}", "")), TRAIN)
    write_h5("unlabelled.h5", data=x)
    (work / "test.txt").write_text("unlabelled.h5\n")
    with pytest.raises(CaffeCompatError, match="unlabelled.h5: no dataset 'label'"):
        CaffeNet(parse_net_text(NET.replace("{shuffle}", "")), TEST)
