"""The lean training step: skipped frozen params stay exact, compiled training is one graph with
no recompiles, label checks that would stall a GPU become NaN losses, worker defaults."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_compat.proto import caffe_pb2
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.solver import Solver, TrainOptions, default_workers
from caffe_compat.solver.updates import CaffeUpdater
from layers_util import make_layer
from solver_util import lenet_workdir


def adam_param() -> caffe_pb2.SolverParameter:
    return caffe_pb2.SolverParameter(type="Adam", momentum=0.9, momentum2=0.999, delta=1e-8, weight_decay=0.01)


def test_frozen_param_is_skipped_while_nothing_can_move_it() -> None:
    learned = torch.nn.Parameter(torch.ones(3))
    frozen = torch.nn.Parameter(torch.full((3,), 2.0), requires_grad=False)  # BatchNorm statistics
    updater = CaffeUpdater(adam_param(), [learned, frozen], [1.0, 0.0], [1.0, 0.0])
    learned.grad = torch.ones(3)
    version = frozen._version
    updater.apply(0.1, 0)
    assert frozen._version == version  # not even touched
    assert torch.equal(frozen, torch.full((3,), 2.0))
    assert all(not h[1].any() for h in updater.history)
    assert not torch.equal(learned, torch.ones(3))


def test_frozen_param_with_a_restored_history_moves_its_history_like_caffe() -> None:
    """A .solverstate may hold a non-zero history for it: then Caffe's update runs on it again."""
    frozen = torch.nn.Parameter(torch.full((3,), 2.0), requires_grad=False)
    updater = CaffeUpdater(adam_param(), [frozen], [0.0], [0.0])
    m, v = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
    updater.load_history([m, v], "state")
    updater.apply(0.1, 3)
    np.testing.assert_allclose(updater.history[0][0].numpy(), m * np.float32(0.9), rtol=1e-7)
    np.testing.assert_allclose(updater.history[1][0].numpy(), v * np.float32(0.999), rtol=1e-7)
    assert torch.equal(frozen, torch.full((3,), 2.0))  # lr_mult 0: the weight stays


def test_decayed_param_without_gradient_still_moves() -> None:
    """lr_mult 0 and decay_mult 1: Caffe's Adam history sees the weight decay."""
    frozen = torch.nn.Parameter(torch.full((2,), 4.0), requires_grad=False)
    updater = CaffeUpdater(adam_param(), [frozen], [0.0], [1.0])
    updater.apply(0.1, 0)
    expected = np.float32(1 - 0.9) * np.float32(np.float32(0.01) * np.float32(4.0))
    np.testing.assert_allclose(updater.history[0][0].numpy(), [expected] * 2, rtol=1e-6)


@pytest.mark.parametrize("text, shapes", [
    ('type: "SoftmaxWithLoss"', [(4, 5), (4,)]),
    ('type: "Accuracy"', [(4, 5), (4,)]),
    ('type: "HingeLoss"', [(4, 5), (4,)]),
])
def test_out_of_range_label_without_host_check_gives_nan(text, shapes) -> None:
    """Compiled (and on GPUs) the range check would stall the device; the result is NaN instead,
    which the solver's NaN check reports. Eager on the CPU it stays an error naming the label."""
    torch._dynamo.reset()
    layer = make_layer(text, *shapes)
    scores, labels = torch.randn(shapes[0]), torch.tensor([0.0, 1.0, 7.0, 2.0])
    with pytest.raises(Exception, match="label 7 out of range"):
        layer(scores, labels)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert math.isnan(float(compiled(scores, labels)[0]))
    assert not math.isnan(float(compiled(scores, torch.tensor([0.0, 1.0, 4.0, 2.0]))[0]))


def test_default_workers() -> None:
    assert default_workers(torch.device("cpu")) == 2
    cuda = torch.device("cuda")
    assert 2 <= default_workers(cuda) <= 12
    assert default_workers(cuda, world_size=64) == 2


@pytest.fixture
def work(fixtures, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(lenet_workdir(fixtures, tmp_path))
    return tmp_path


def solve(work: Path, **options):
    (work / "solver.prototxt").write_text(
        'net: "net.prototxt"\ntest_iter: 2\ntest_interval: 3\nbase_lr: 0.01\nmomentum: 0.9\n'
        'weight_decay: 0.0005\nlr_policy: "fixed"\ndisplay: 1\nmax_iter: 7\nsnapshot: 4\n'
        'snapshot_prefix: "lenet"\nsolver_mode: CPU\nrandom_seed: 5\n')
    solver = Solver("solver.prototxt", TrainOptions(weights=["init.caffemodel"], progress=False, **options),
                    log=CaffeLog(io.StringIO()))
    return solver.solve()


def test_compiled_training_is_one_graph_without_recompiles(work, monkeypatch) -> None:
    """fullgraph=True fails on a graph break; error_on_recompile fails when tests, snapshots or
    the BatchNorm statistics (shared with the test net) make dynamo compile again."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    eager = solve(work)
    compiled = solve(work, compile=True)
    np.testing.assert_allclose([v for _, v in compiled.losses], [v for _, v in eager.losses], rtol=1e-5)
    assert [t[0] for t in compiled.tests] == [t[0] for t in eager.tests] == [0, 3, 6]
    assert compiled.tests[-1][2]["accuracy"] == pytest.approx(eager.tests[-1][2]["accuracy"], abs=1e-6)
