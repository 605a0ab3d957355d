"""pycaffe's solvers over the library's :class:`~caffe_compat.solver.solver.Solver`.

``step``, ``solve``, ``snapshot`` and ``restore`` are the library's (the same log lines, losses,
tests and snapshot files as ``caffe-compat train``). ``solver.net`` and ``solver.test_nets[i]``
are pycaffe :class:`~caffe_compat.pycaffe.net.Net` views whose blobs hold the values of the last
forward the solver ran, and whose own ``forward()`` reads the solver's data cursor, as Caffe's
nets share their data layers with the solver. ``SGDSolver(path)``, ``AdamSolver(path)``, ...
use their own update rule whatever the file's ``type``; ``get_solver(path)`` uses the file's.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from caffe_compat.io.prototxt import parse_text, read_solver
from caffe_compat.io.upgrade import upgrade_solver_as_needed
from caffe_compat.proto import caffe_pb2
from caffe_compat.pycaffe import mode
from caffe_compat.pycaffe.net import Net
from caffe_compat.solver import distributed
from caffe_compat.solver.solver import Solver as LibrarySolver
from caffe_compat.solver.solver import TrainOptions


class Solver:
    """A solver built from a solver.prototxt on the current mode's device."""

    solver_type: str | None = None  # the update rule this class stands for; None: the file's

    def __init__(self, solver_file: str | os.PathLike[str] | caffe_pb2.SolverParameter) -> None:
        options = TrainOptions(progress=False, solver_type=self.solver_type, pycaffe_mode=True,
                               keep_param_diffs=True)
        self._solver = LibrarySolver(solver_file, options, rank=distributed.Rank(device=mode.device()))
        self.net = Net._wrap(self._solver.net, self._solver.feeder)
        self.test_nets = [Net._wrap(n, f) for n, f in zip(self._solver.test_nets, self._solver.test_feeders)]

    @property
    def iter(self) -> int:
        return self._solver.iter

    @property
    def param(self):
        """The SolverParameter in use (after Caffe's upgrades)."""
        return self._solver.param

    @property
    def lr(self) -> float:
        """The learning rate of the current iteration."""
        return self._solver.lr_policy.rate(self._solver.iter)

    def _sync(self) -> None:
        for net in (self.net, *self.test_nets):
            net._push_mirrors()

    def _synced_back(self) -> None:
        """After the solver ran: the nets' host arrays (GPU) take what it changed."""
        for net in (self.net, *self.test_nets):
            net._pull_mirrors()

    def step(self, iters: int) -> None:
        """Caffe's Step: ``iters`` iterations (tests, display and snapshots as the solver says)."""
        self._sync()
        self._solver.step(int(iters))
        self._synced_back()

    def solve(self, resume_file: str | os.PathLike[str] | None = None) -> None:
        """Train to ``max_iter`` (from ``resume_file``, a .solverstate, when given)."""
        if resume_file is not None:
            self.restore(resume_file)
        self._sync()
        self._solver.solve()
        self._synced_back()

    def restore(self, state_file: str | os.PathLike[str]) -> None:
        self._sync()
        self._solver.restore(os.fspath(state_file))
        self._synced_back()

    def snapshot(self) -> None:
        self._sync()
        self._solver.snapshot()

    def apply_update(self) -> None:
        """One update from the current parameter diffs (for hand-written training loops)."""
        self._sync()
        self._solver.updater.apply(self.lr, self._solver.iter)
        self._synced_back()

    def add_callback(self, on_start: Callable[[], Any], on_gradients: Callable[[], Any]) -> None:
        """Caffe's add_callback: ``on_start()`` before each iteration's forward, ``on_gradients()``
        after its backward and before the update."""
        self._solver.callbacks.append(_Callback(on_start, on_gradients))

    def share_weights(self, net: Net) -> None:
        """Make ``net``'s layers use this solver's trained blobs (same layer names), as Caffe's
        share_weights: what the solver learns, ``net`` sees, without copying."""
        self._solver.share_weights(net._net)


class _Callback:
    """Two Python callables as Caffe's Solver::Callback."""

    def __init__(self, on_start: Callable[[], Any], on_gradients: Callable[[], Any]) -> None:
        self.on_start, self.on_gradients_ready = on_start, on_gradients


class SGDSolver(Solver):
    solver_type = "SGD"


class NesterovSolver(Solver):
    solver_type = "Nesterov"


class AdaGradSolver(Solver):
    solver_type = "AdaGrad"


class RMSPropSolver(Solver):
    solver_type = "RMSProp"


class AdaDeltaSolver(Solver):
    solver_type = "AdaDelta"


class AdamSolver(Solver):
    solver_type = "Adam"


_BY_TYPE = {cls.solver_type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                              AdaDeltaSolver, AdamSolver)}


def get_solver(solver_file: str | os.PathLike[str]) -> Solver:
    """The solver the file's ``type`` names (Caffe's ``get_solver``)."""
    return _BY_TYPE.get(read_solver(solver_file).type, Solver)(solver_file)


def get_solver_from_string(solver_text: str | bytes) -> Solver:
    """The solver a solver prototxt's text describes (its ``type``'s class); paths in it are
    relative to the current folder, as in a solver file."""
    param = parse_text(solver_text, caffe_pb2.SolverParameter(), "<string>")
    upgrade_solver_as_needed(param, "<string>")
    return _BY_TYPE.get(param.type, Solver)(param)
