"""Parity with real ``caffe train`` runs (tests/fixtures/solver): losses, tests, snapshots, resume."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from caffe_compat.io.caffemodel import load_weights
from caffe_compat.io.solverstate import load_solverstate
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.plot_log import parse_log
from caffe_compat.solver.solver import Solver, TrainOptions

REL = 1e-4

# conv1's bias feeds a BatchNorm, so its true gradient is exactly 0 and Caffe's diffs are float
# rounding noise (~1e-9). SGD leaves such a blob at noise level; Adam divides by sqrt(v) and turns
# the noise into steps of up to lr in a noise-chosen direction, which no re-implementation can
# reproduce. The BatchNorm running mean bn1/0 integrates that bias, and TEST-phase losses use it.
# For adam those three are checked against the bound the update rule gives instead of 1e-4.
ADAM_NOISE_DRIVEN = {"conv1/1", "bn1/0"}


def workdir(fixtures: Path, tmp: Path, run: str, caffe_snapshots_of: str | None = None) -> Path:
    """A writable copy of the fixture layout (cwd of `caffe train`), sharing the read-only LMDB."""
    src = fixtures / "solver"
    shutil.copy(src / "lenet_train_val.prototxt", tmp)
    shutil.copy(src / "init.caffemodel", tmp)
    (tmp / "data").mkdir(exist_ok=True)
    if not (tmp / "data" / "train_lmdb").exists():
        (tmp / "data" / "train_lmdb").symlink_to(src / "data" / "train_lmdb")
    (tmp / run).mkdir(exist_ok=True)
    shutil.copy(src / run / "solver.prototxt", tmp / run)
    if caffe_snapshots_of:
        (tmp / caffe_snapshots_of).mkdir(exist_ok=True)
        for f in (src / caffe_snapshots_of).glob("lenet_iter_*"):
            shutil.copy(f, tmp / caffe_snapshots_of)
    return tmp


def run_solver(run: str, weights=(), resume=None, max_iter=None, **kw):
    out = io.StringIO()
    options = TrainOptions(weights=list(weights), resume=resume, max_iter=max_iter, progress=False, **kw)
    solver = Solver(f"{run}/solver.prototxt", options, log=CaffeLog(out))
    if resume:
        solver.restore(resume)
    result = solver.solve()
    return solver, result, out.getvalue()


def assert_close(got, want, what, scale=None):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = max(np.abs(want).max() if scale is None else scale, 1e-12)
    err = np.abs(got - want).max() / scale
    assert err <= REL, f"{what}: max relative error {err:.3g} > {REL}"


CASES = {
    "sgd_step": dict(weights=["init.caffemodel"]),
    "adam": dict(weights=["init.caffemodel"]),
    "sgd_step_16": dict(weights=["init.caffemodel"]),
    "sgd_step_resume6": dict(resume="sgd_step/lenet_iter_6.solverstate", snaps="sgd_step"),
    "sgd_step_16_resume8": dict(resume="sgd_step_16/lenet_iter_8.solverstate", snaps="sgd_step_16"),
}


@pytest.mark.parametrize("run", list(CASES))
def test_matches_caffe_train(fixtures, tmp_path, monkeypatch, run):
    case = CASES[run]
    monkeypatch.chdir(workdir(fixtures, tmp_path, run, case.get("snaps")))
    traj = json.loads((fixtures / "solver" / run / "trajectory.json").read_text())
    solver, result, log = run_solver(run, case.get("weights", ()), case.get("resume"))

    # per-iteration (unsmoothed) losses = pycaffe's float32 replay
    assert [i for i, _ in result.losses] == traj["iters"]
    assert_close([v for _, v in result.losses], traj["loss_float32_replay"], f"{run} losses")
    # tests (accuracy exact: counts of 16 samples; loss within tolerance), incl. the final one
    assert [it for it, _, _ in result.tests] == [t["iter"] for t in traj["tests"]]
    for (it, _, means), want in zip(result.tests, traj["tests"]):
        assert means["accuracy"][0] == pytest.approx(want["accuracy"], abs=1e-6), f"{run} test acc @{it}"
        if run == "adam" and it > 0:
            assert means["loss"][0] == pytest.approx(want["loss"], rel=2e-3), f"{run} test loss @{it}"
        else:
            assert_close(means["loss"], [want["loss"]], f"{run} test loss @{it}")
    # the log parses like Caffe's and shows the same numbers (6 digits)
    parsed = parse_log_text(log, tmp_path)
    assert [it for it, _ in parsed.lr] == traj["iters"]
    assert_close([v for _, v in parsed.lr], traj["lr"], f"{run} lr")
    assert parsed.train_loss[-1][0] == traj["final_display"]["iter"]
    assert_close([parsed.train_loss[-1][1]], [traj["final_display"]["loss"]], f"{run} final display")

    # final snapshot weights
    last = traj["iters"][-1] + 1
    ours = load_weights(f"{run}/lenet_iter_{last}.caffemodel")
    want = np.load(fixtures / "solver" / run / "final_weights.npz")
    for key in want.files:
        layer, idx = key.split("/")
        # Relative to the layer's largest blob: conv1's bias feeds a BatchNorm, so its true gradient
        # is 0 and Caffe's values (~1e-8) are float rounding noise that no blob-relative check can match.
        scale = max(np.abs(want[k]).max() for k in want.files if k.startswith(layer + "/"))
        if run == "adam" and key in ADAM_NOISE_DRIVEN:
            steps = last  # |Adam step| <= ~lr per iteration; the running mean sums those drifts
            bound = 0.001 * (steps if key == "conv1/1" else steps * (steps + 1) / 2)
            assert np.abs(ours[layer][int(idx)] - want[key]).max() <= bound, f"{run} {key}"
            continue
        assert_close(ours[layer][int(idx)], want[key], f"{run} {key}", scale)

    # our solverstate: Caffe's fields and history shapes
    caffe_state, caffe_hist = load_solverstate(fixtures / "solver" / run / f"lenet_iter_{last}.solverstate")
    state, hist = load_solverstate(f"{run}/lenet_iter_{last}.solverstate")
    assert state.iter == caffe_state.iter == last
    assert state.current_step == caffe_state.current_step
    assert state.learned_net == caffe_state.learned_net
    assert [list(b.shape.dim) for b in state.history] == [list(b.shape.dim) for b in caffe_state.history]
    # history (momentum / Adam moments), layer by layer as for the weights (set-major: m then v)
    n = len(want.files)
    layer_of = [k.split("/")[0] for k in want.files]
    for i, (a, b) in enumerate(zip(hist, caffe_hist)):
        if run == "adam" and want.files[i % n] in ADAM_NOISE_DRIVEN:
            continue
        first = i - i % n
        same = [caffe_hist[first + j] for j in range(n) if layer_of[j] == layer_of[i % n]]
        assert_close(a, b, f"{run} history {i}", max(np.abs(h).max() for h in same))


def parse_log_text(text: str, tmp: Path):
    p = tmp / "ours.log"
    p.write_text(text)
    return parse_log(p)


def test_our_resume_continues_exactly_and_without_sidecar_like_caffe(fixtures, tmp_path, monkeypatch):
    """N + M iterations with a resume from our snapshot in between == N + M uninterrupted (CPU, bitwise);
    with our sidecar deleted, the resume is Caffe's: the data restarts at record 0 (behaviour 1)."""
    monkeypatch.chdir(workdir(fixtures, tmp_path, "sgd_step"))
    _, full, _ = run_solver("sgd_step", ["init.caffemodel"])
    uninterrupted = load_weights("sgd_step/lenet_iter_12.caffemodel")
    assert Path("sgd_step/lenet_iter_6.solverstate.resume.pt").is_file()
    _, resumed, _ = run_solver("sgd_step", resume="sgd_step/lenet_iter_6.solverstate")
    assert resumed.losses == full.losses[6:]
    assert resumed.tests == [t for t in full.tests if t[0] >= 6]
    again = load_weights("sgd_step/lenet_iter_12.caffemodel")
    for layer, blobs in uninterrupted.items():
        for a, b in zip(blobs, again[layer]):
            np.testing.assert_array_equal(a, b)

    os.unlink("sgd_step/lenet_iter_6.solverstate.resume.pt")
    _, like_caffe, _ = run_solver("sgd_step", resume="sgd_step/lenet_iter_6.solverstate")
    traj = json.loads((fixtures / "solver" / "sgd_step_resume6" / "trajectory.json").read_text())
    assert_close([v for _, v in like_caffe.losses], traj["loss_float32_replay"], "resume without sidecar")
