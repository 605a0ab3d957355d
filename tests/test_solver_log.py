"""Caffe-format log lines and plot-log, on real Caffe logs and on ours."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from caffe_compat.errors import CaffeCompatError
from caffe_compat.solver.caffe_log import CaffeLog, num
from caffe_compat.solver.plot_log import parse_log, plot_log

RUNS = ["sgd_step", "adam", "sgd_step_resume6", "sgd_step_16", "sgd_step_16_resume8"]


@pytest.mark.parametrize("run", RUNS)
def test_parse_real_caffe_log(fixtures, run):
    traj = json.loads((fixtures / "solver" / run / "trajectory.json").read_text())
    log = parse_log(fixtures / "solver" / run / "train.log")
    # every step's loss line plus the final extra forward's
    assert [v for _, v in log.train_loss[:-1]] == traj["loss"]
    assert log.train_loss[-1] == (traj["final_display"]["iter"], traj["final_display"]["loss"])
    assert [v for _, v in log.lr] == traj["lr"]
    assert [v for _, v in log.train_outputs["loss"]] == traj["train_net_output_loss"]
    assert log.tests[0]["accuracy"] == [(t["iter"], t["accuracy"]) for t in traj["tests"]]
    assert log.tests[0]["loss"] == [(t["iter"], t["loss"]) for t in traj["tests"]]


def test_our_lines_parse_like_caffes(tmp_path):
    out = io.StringIO()
    log = CaffeLog(out, tmp_path / "train.log")
    log.testing(0, 0)
    log.net_outputs("Test", [("accuracy", [0.125], 0.0), ("loss", [48.5997], 1.0)])
    log.train_iteration(0, 1000.0, 0.001, 1, 2.34716)
    log.net_outputs("Train", [("loss", [2.34716], 1.0)])
    log.learning_rate(0, 0.01)
    log.final_loss(1, 1.79044)
    log.close()
    lines = out.getvalue().splitlines()
    assert lines == (tmp_path / "train.log").read_text().splitlines()
    # classic glog prefix, which Caffe's tools/extra/parse_log.py splits as month/day + time
    assert all(re.match(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [a-z_]+\.cpp:\d+\] ", line) for line in lines)
    assert lines[1].endswith("]     Test net output #0: accuracy = 0.125")
    assert lines[2].endswith("]     Test net output #1: loss = 48.5997 (* 1 = 48.5997 loss)")
    assert lines[3].endswith("] Iteration 0 (1000 iter/s, 0.001s/1 iters), loss = 2.34716")
    assert lines[5].endswith("] Iteration 0, lr = 0.01")
    parsed = parse_log(tmp_path / "train.log")
    assert parsed.train_loss == [(0, 2.34716), (1, 1.79044)]
    assert parsed.tests[0]["accuracy"] == [(0, 0.125)]


def test_numbers_print_like_cpp():
    assert [num(x) for x in (0.01, 48.59973, 1e-8, 1000.0, 2.0, float("nan"))] == [
        "0.01", "48.5997", "1e-08", "1000", "2", "nan"
    ]


def test_plot_log_writes_png(fixtures, tmp_path):
    out = tmp_path / "curves.png"
    plot_log(fixtures / "solver" / "sgd_step_16" / "train.log", out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(tmp_path.glob(".*.tmp"))


def test_plot_log_rejects_non_logs(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    with pytest.raises(CaffeCompatError, match="not a Caffe training log"):
        plot_log(bad, tmp_path / "x.png")
    with pytest.raises(CaffeCompatError, match="cannot read log"):
        plot_log(tmp_path / "missing.log", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_smoothed_loss_is_caffes_window_average():
    from caffe_compat.solver.solver import SmoothedLoss

    s = SmoothedLoss(3, start=10)
    got = [s.update(v, 10 + i) for i, v in enumerate([1.0, 2.0, 3.0, 4.0, 8.0])]
    assert got == pytest.approx([1.0, 1.5, 2.0, 3.0, 5.0])
    one = SmoothedLoss(1)
    assert [one.update(v, i) for i, v in enumerate([0.1, 0.7])] == pytest.approx([0.1, 0.7])
    # s += loss - old, in float32: not exactly the new loss (Caffe's logged drift, behaviour 2)
    assert one.update(0.00255293, 2) == float(np.float32(np.float32(0.7) + (np.float32(0.00255293) - np.float32(0.7))))
