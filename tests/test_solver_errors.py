"""Bad input and interruptions: clear one-line errors, snapshots that survive, Ctrl-C / SIGTERM."""

from __future__ import annotations

import errno
import io
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from caffe_compat.errors import CaffeCompatError
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.solver import NonFiniteLossError, Solver, TrainOptions
from solver_util import lenet_workdir

SOLVER = """net: "{net}"
base_lr: {lr}
momentum: 0.9
lr_policy: "fixed"
display: 1
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "snap/lenet"
solver_mode: CPU
random_seed: 3
"""


@pytest.fixture
def work(fixtures, tmp_path, monkeypatch) -> Path:
    # no test_iter in SOLVER, so only the TRAIN net is built and runs stay quick
    lenet_workdir(fixtures, tmp_path)
    (tmp_path / "snap").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def solver(work: Path, lr=0.01, max_iter=4, snapshot=2, net="net.prototxt", **options) -> Solver:
    (work / "solver.prototxt").write_text(SOLVER.format(net=net, lr=lr, max_iter=max_iter, snapshot=snapshot))
    return Solver("solver.prototxt", TrainOptions(progress=False, **options), log=CaffeLog(io.StringIO()))


def test_missing_solver_and_net(work):
    with pytest.raises(CaffeCompatError, match=r"nope.prototxt: solver file does not exist"):
        Solver("nope.prototxt", TrainOptions(), log=CaffeLog(io.StringIO()))
    with pytest.raises(CaffeCompatError, match=r"solver.prototxt: net 'missing.prototxt' does not exist"):
        solver(work, net="missing.prototxt")


def test_missing_snapshot_folder_fails_before_training(work):
    (work / "snap").rmdir()
    with pytest.raises(CaffeCompatError, match=r"solver.prototxt: snapshot_prefix 'snap/lenet': folder 'snap' does not exist"):
        solver(work)


def test_missing_lmdb_names_layer_and_path(work):
    (work / "net.prototxt").write_text((work / "net.prototxt").read_text().replace("data/train_lmdb", "data/gone_lmdb"))
    with pytest.raises(CaffeCompatError, match=r"layer 'data'.*data/gone_lmdb.*does not exist"):
        solver(work)


def test_weights_that_do_not_fit_name_layer_and_shapes(work):
    text = (work / "net.prototxt").read_text()
    head = text.index('name: "ip2"')
    (work / "net.prototxt").write_text(text[:head] + text[head:].replace("num_output: 10", "num_output: 40", 1))
    with pytest.raises(CaffeCompatError, match=r"init.caffemodel: layer 'ip2'.*\(10, 32\).*\(40, 32\)"):
        solver(work, weights=["init.caffemodel"])
    with pytest.raises(CaffeCompatError, match=r"absent.caffemodel: weights file does not exist"):
        solver(work, weights=["absent.caffemodel"])


def test_nan_loss_stops_naming_iteration_and_last_snapshot(work):
    s = solver(work, lr=1e12, max_iter=50, snapshot=1)
    with pytest.raises(NonFiniteLossError) as info:
        s.solve()
    message = str(info.value)
    bad = int(message.split("at iteration ")[1].split(";")[0])
    assert f"Last good snapshot: snap/lenet_iter_{bad}.solverstate" in message
    # nothing past the bad iteration was snapshotted, and the last good one loads
    assert not Path(f"snap/lenet_iter_{bad + 1}.caffemodel").exists()
    from caffe_compat.io.caffemodel import load_weights

    assert all(np.isfinite(a).all() for blobs in load_weights(f"snap/lenet_iter_{bad}.caffemodel").values() for a in blobs)


def test_full_disk_keeps_previous_snapshot(work, monkeypatch):
    s = solver(work, max_iter=4, snapshot=2, weights=["init.caffemodel"])
    import caffe_compat.io.solverstate as ss

    real = ss.atomic_write_bytes

    def full_disk(path, data):
        if "iter_4" in os.fspath(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        real(path, data)

    monkeypatch.setattr(ss, "atomic_write_bytes", full_disk)
    before = None
    with pytest.raises(CaffeCompatError, match=r"cannot write snapshot snap/lenet_iter_4.solverstate: No space left "
                                               r"on device; the last complete snapshot is snap/lenet_iter_2.solverstate"):
        s.solve()
    before = sorted(p.name for p in Path("snap").iterdir())
    # the iter-4 caffemodel written before the failure was removed; iter 2 is whole and resumable
    assert before == ["lenet_iter_2.caffemodel", "lenet_iter_2.solverstate", "lenet_iter_2.solverstate.resume.pt"]
    again = solver(work, max_iter=4, snapshot=2)
    again.restore("snap/lenet_iter_2.solverstate")
    assert again.iter == 2


@pytest.mark.parametrize("sig, effect, expect_stop", [
    (signal.SIGINT, "stop", True),
    (signal.SIGTERM, "stop", True),
    (signal.SIGINT, "snapshot", False),
    (signal.SIGINT, "none", False),
])
def test_signals_follow_sigint_effect(work, sig, effect, expect_stop):
    s = solver(work, max_iter=6, snapshot=0, weights=["init.caffemodel"], sigint_effect=effect)
    apply = s.updater.apply

    def apply_then_signal(rate, iteration):
        apply(rate, iteration)
        if iteration == 2:
            os.kill(os.getpid(), sig)

    s.updater.apply = apply_then_signal
    result = s.solve()
    snaps = sorted(p.name for p in Path("snap").glob("*.solverstate"))
    if expect_stop:  # stop right after iteration 3's update; snapshot_after_train leaves a resumable state
        assert result.stopped_early and s.iter == 3 and snaps == ["lenet_iter_3.solverstate"]
    elif effect == "snapshot":
        assert not result.stopped_early and snaps == ["lenet_iter_3.solverstate", "lenet_iter_6.solverstate"]
    else:
        assert not result.stopped_early and snaps == ["lenet_iter_6.solverstate"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_bad_solver_fields(work):
    (work / "solver.prototxt").write_text('net: "net.prototxt" train_net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    with pytest.raises(CaffeCompatError, match="more than one train net"):
        Solver("solver.prototxt", TrainOptions(), log=CaffeLog(io.StringIO()))
    (work / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "sigmoid" gamma: -1 stepsize: 2')
    with pytest.raises(CaffeCompatError, match="needs gamma >= 0"):
        Solver("solver.prototxt", TrainOptions(), log=CaffeLog(io.StringIO()))
    (work / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" test_iter: 1')
    with pytest.raises(CaffeCompatError, match="test_interval must be > 0"):
        Solver("solver.prototxt", TrainOptions(), log=CaffeLog(io.StringIO()))


def test_bad_solverstates(work):
    from caffe_compat.proto import caffe_pb2

    s = solver(work)
    with pytest.raises(CaffeCompatError, match=r"none.solverstate: solverstate does not exist"):
        s.restore("none.solverstate")
    Path("lost.solverstate").write_bytes(caffe_pb2.SolverState(iter=2, learned_net="gone.caffemodel").SerializeToString())
    with pytest.raises(CaffeCompatError, match=r"lost.solverstate: its learned_net 'gone.caffemodel' does not exist"):
        s.restore("lost.solverstate")
    Path("short.solverstate").write_bytes(caffe_pb2.SolverState(iter=2, learned_net="init.caffemodel").SerializeToString())
    with pytest.raises(CaffeCompatError, match=r"short.solverstate: holds 0 history blobs but this net and solver type "
                                               r"\(SGD\) need 13"):
        s.restore("short.solverstate")
    Path("junk.caffemodel").write_bytes(b"\x00not a caffemodel")
    with pytest.raises(CaffeCompatError, match=r"junk.caffemodel"):
        solver(work, weights=["junk.caffemodel"])


def test_ctrl_c_during_a_test_interrupts_it_and_stops(work):
    (work / "solver.prototxt").write_text(
        SOLVER.format(net="net.prototxt", lr=0.01, max_iter=6, snapshot=0) + "test_iter: 2\ntest_interval: 2\n"
    )
    out = io.StringIO()
    s = Solver("solver.prototxt", TrainOptions(progress=False, weights=["init.caffemodel"]), log=CaffeLog(out))
    feed = s.test_feeders[0].next
    calls = []

    def next_then_signal():
        calls.append(1)
        if len(calls) == 3:  # second test (iteration 2), first batch
            os.kill(os.getpid(), signal.SIGINT)
        return feed()

    s.test_feeders[0].next = next_then_signal
    result = s.solve()
    assert result.stopped_early and s.iter == 2
    assert [it for it, _, _ in result.tests] == [0]  # the interrupted test reports nothing
    assert "Test interrupted." in out.getvalue() and "Optimization stopped early." in out.getvalue()
    assert sorted(p.name for p in Path("snap").glob("*.solverstate")) == ["lenet_iter_2.solverstate"]
