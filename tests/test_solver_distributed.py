"""Data parallel on CPU: two gloo processes (batch 8 each) == one process at the global batch 16."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.caffemodel import load_weights
from caffe_compat.solver import distributed
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.solver import Solver, TrainOptions, _train_rank
from solver_util import lenet_workdir, no_batchnorm

SOLVER = """net: "{net}"
base_lr: 0.02
momentum: 0.9
weight_decay: 0.0005
lr_policy: "step"
gamma: 0.5
stepsize: 2
display: 1
max_iter: 4
snapshot_prefix: "{prefix}"
solver_mode: CPU
random_seed: 7
"""


def test_two_gloo_ranks_match_one_process(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(lenet_workdir(fixtures, tmp_path))
    Path("single").mkdir()
    Path("ddp").mkdir()
    Path("one.prototxt").write_text(SOLVER.format(net=no_batchnorm(tmp_path, "b16.prototxt", 16), prefix="single/lenet"))
    Path("two.prototxt").write_text(SOLVER.format(net=no_batchnorm(tmp_path, "b8.prototxt", 8), prefix="ddp/lenet"))
    options = TrainOptions(weights=["init.caffemodel"], progress=False, workers=0)

    Solver("one.prototxt", options, log=CaffeLog(io.StringIO())).solve()
    # each rank reads records (8b + i) * 2 + rank: together the single run's batch of 16
    distributed.launch(_train_rank, 2, "two.prototxt", options)

    one, two = load_weights("single/lenet_iter_4.caffemodel"), load_weights("ddp/lenet_iter_4.caffemodel")
    moved = 0.0
    init = load_weights("init.caffemodel")
    for layer, blobs in one.items():
        for a, b, w0 in zip(blobs, two[layer], init[layer]):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
            moved = max(moved, float(np.abs(a - w0).max()))
    assert moved > 1e-3  # the runs really trained


def test_gpu_flag_parsing():
    assert distributed.parse_gpus(None) == [] and distributed.parse_gpus("") == []
    with pytest.raises(CaffeCompatError, match="expected device ids"):
        distributed.parse_gpus("zero")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(CaffeCompatError, match="no CUDA device"):
            distributed.parse_gpus("all")
        with pytest.raises(CaffeCompatError, match="device 0 does not exist"):
            distributed.parse_gpus("0")


def test_training_leaves_a_callers_process_group_alone(fixtures, tmp_path, monkeypatch):
    """A group the caller joined stays the caller's: training neither destroys nor needs it gone."""
    import socket

    import torch.distributed as dist

    monkeypatch.chdir(lenet_workdir(fixtures, tmp_path))
    Path("single").mkdir()
    Path("one.prototxt").write_text(SOLVER.format(net=no_batchnorm(tmp_path, "b16.prototxt", 16), prefix="single/lenet"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        _train_rank("one.prototxt", TrainOptions(weights=["init.caffemodel"], progress=False, workers=0),
                    CaffeLog(io.StringIO()))
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
    assert not distributed.in_group()
