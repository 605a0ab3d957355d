"""Resume with random layers: N + M iterations == N, snapshot, resume, M (CPU, bit for bit).

Dropout draws its masks from torch's global RNG, which the resume sidecar saves; the data
loaders must not draw from it too, or where a loader is (re)opened moves every later mask.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from caffe_compat.io.caffemodel import load_weights
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.solver import Solver, TrainOptions
from solver_util import lenet_workdir

DROPOUT = """layer {
  name: "drop1"
  type: "Dropout"
  bottom: "ip1"
  top: "ip1"
  dropout_param { dropout_ratio: 0.5 }
}
"""

SOLVER = """net: "dropnet.prototxt"
test_iter: 2
test_interval: 4
display: 1
max_iter: 10
snapshot: 4
snapshot_prefix: "snaps/drop"
snapshot_format: {fmt}
solver_mode: CPU
random_seed: 1701
type: "SGD"
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
"""


def dropout_workdir(fixtures: Path, tmp: Path, fmt: str = "BINARYPROTO") -> Path:
    """LeNet of the solver fixtures with a Dropout after ip1, and a solver snapshotting at 4 and 8."""
    work = lenet_workdir(fixtures, tmp)
    text = (work / "net.prototxt").read_text()
    at = text.index('layer {\n  name: "ip2"')
    (work / "dropnet.prototxt").write_text(text[:at] + DROPOUT + text[at:])
    (work / "solver.prototxt").write_text(SOLVER.replace("{fmt}", fmt))
    (work / "snaps").mkdir()
    return work


def run(resume: str | None = None, workers: int = 0):
    solver = Solver("solver.prototxt", TrainOptions(progress=False, workers=workers), log=CaffeLog(io.StringIO()))
    if resume:
        solver.restore(resume)
    return solver.solve()


@pytest.mark.parametrize("workers", [0, 2])
def test_dropout_net_resumes_bit_exactly(fixtures, tmp_path, monkeypatch, workers):
    monkeypatch.chdir(dropout_workdir(fixtures, tmp_path))
    full = run(workers=workers)
    final = load_weights("snaps/drop_iter_10.caffemodel")
    resumed = run("snaps/drop_iter_4.solverstate", workers=workers)
    assert [i for i, _ in resumed.losses] == list(range(4, 10))
    assert resumed.losses == full.losses[4:]
    assert resumed.tests == [t for t in full.tests if t[0] >= 4]
    again = load_weights("snaps/drop_iter_10.caffemodel")
    for layer, blobs in final.items():
        for a, b in zip(blobs, again[layer]):
            np.testing.assert_array_equal(a, b)


def test_dropout_masks_move_the_losses(fixtures, tmp_path, monkeypatch):
    """The test above is about something: with a dropout ratio of 0 the losses differ."""
    monkeypatch.chdir(dropout_workdir(fixtures, tmp_path))
    with_masks = run()
    text = Path("dropnet.prototxt").read_text()
    Path("dropnet.prototxt").write_text(text.replace("dropout_ratio: 0.5", "dropout_ratio: 0.0"))
    without = run()
    assert with_masks.losses[0] != without.losses[0]
