"""``train --ema`` (weight average in tests and snapshot caffemodels, exact resume) and ``--warmup``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.io.caffemodel import load_weights
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.plot_log import parse_log
from caffe_compat.solver.solver import Solver, TrainOptions
from solver_util import lenet_workdir

SOLVER = ('net: "net.prototxt"\ntest_iter: 1\ntest_interval: 4\nbase_lr: 0.01\nmomentum: 0.9\n'
          'weight_decay: 0.0005\nlr_policy: "fixed"\ndisplay: 1\nmax_iter: {max_iter}\nsnapshot: 4\n'
          'snapshot_prefix: "lenet"\nsolver_mode: CPU\nrandom_seed: 5\n')


@pytest.fixture
def work(fixtures, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(lenet_workdir(fixtures, tmp_path))
    (tmp_path / "solver.prototxt").write_text(SOLVER.format(max_iter=8))
    return tmp_path


def make_solver(**options) -> Solver:
    options.setdefault("weights", ["init.caffemodel"])
    return Solver("solver.prototxt", TrainOptions(progress=False, **options), log=CaffeLog(io.StringIO()))


def blobs_of(solver: Solver) -> list[np.ndarray]:
    return [b.detach().numpy().copy() for b in solver.average.blobs]


def test_snapshot_caffemodel_holds_the_warmed_up_average(work) -> None:
    solver = make_solver(ema=0.9)
    expected = blobs_of(solver)  # the average starts at the finetuned weights
    for n in range(4):
        solver.step(1)
        decay = min(0.9, (1 + n) / (10 + n))
        expected = [decay * a + (1 - decay) * b for a, b in zip(expected, blobs_of(solver))]
    model, _ = solver.snapshot()
    saved = load_weights(model)
    raw = blobs_of(solver)
    layer_blobs = [(s.name, i) for s in solver.net.steps for i, _ in enumerate(s.layer.blobs)]
    for (name, i), want, own in zip(layer_blobs, expected, raw):
        np.testing.assert_allclose(saved[name][i].reshape(want.shape), want, rtol=1e-5, atol=1e-7)
    # the net itself keeps training on its own weights
    assert any(not np.allclose(a, b) for a, b in zip(expected, raw))
    for a, b in zip(blobs_of(solver), raw):
        np.testing.assert_array_equal(a, b)


def test_tests_run_on_the_average(work, monkeypatch) -> None:
    solver = make_solver(ema=0.5)
    seen = []
    original = Solver.test

    def spy(self, net_id):
        seen.append([b.detach().clone() for b in self.average.blobs])
        return original(self, net_id)

    monkeypatch.setattr(Solver, "test", spy)
    solver.step(4)
    own = [b.detach().clone() for b in solver.average.blobs]
    solver.test_all()
    for during, average in zip(seen[-1], solver.average.average):
        torch.testing.assert_close(during, average)
    for after, before in zip(solver.average.blobs, own):  # and the weights come back
        torch.testing.assert_close(after.detach(), before)


def test_resume_with_average_continues_exactly(work) -> None:
    full = make_solver(ema=0.9)
    full_result = full.solve()
    first = make_solver(ema=0.9)
    first.param.max_iter = 4
    first.solve()
    resumed = make_solver(ema=0.9, weights=())
    resumed.restore("lenet_iter_4.solverstate")
    result = resumed.solve()
    assert result.losses == full_result.losses[4:]
    for a, b in zip(resumed.average.average, full.average.average):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(resumed.average.blobs, full.average.blobs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)


def test_warmup_ramps_the_logged_learning_rate(work) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["train", "--solver", "solver.prototxt", "--weights", "init.caffemodel",
                               "--warmup", "4", "--log", "train.log", "--no-progress"])
    assert out.exit_code == 0, out.output
    rates = [rate for _, rate in parse_log("train.log").lr]
    np.testing.assert_allclose(rates, [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01, 0.01, 0.01], rtol=1e-6)


@pytest.mark.parametrize("flag, value", [("--ema", "1.0"), ("--ema", "-0.1"), ("--warmup", "-3")])
def test_bad_values_are_one_line_errors(work, flag, value) -> None:
    out = CliRunner().invoke(main, ["train", "--solver", "solver.prototxt", flag, value])
    assert out.exit_code != 0 and "Traceback" not in out.output
