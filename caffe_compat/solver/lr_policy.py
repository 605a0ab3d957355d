"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``), including its quirks.

``step`` and ``multistep`` keep ``current_step`` as solver state (it is saved in the
.solverstate), and ``multistep`` advances at most one step per call, exactly like Caffe: a
resumed run or a schedule with two step values below the current iteration catches up one
step per iteration, not all at once.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from caffe_compat.errors import CaffeCompatError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def _pow(x: float, y: float) -> float:
    """C's pow: NaN or inf instead of Python's exceptions (e.g. poly past max_iter)."""
    with np.errstate(all="ignore"):
        return float(np.power(np.float64(x), np.float64(y)))


def _f32(x: float) -> float:
    """Round to float32, as Caffe's ``Dtype rate`` does."""
    return float(np.float32(x))


class LearningRatePolicy:
    """The rate for each iteration of a SolverParameter's ``lr_policy``.

    ``on_multistep`` is called with (iter, step) when multistep advances, so the solver can
    log Caffe's ``MultiStep Status`` line.
    """

    def __init__(self, param, source: str = "solver", on_multistep: Callable[[int, int], None] | None = None):
        self.param = param
        self.policy = param.lr_policy
        self.current_step = 0
        self.on_multistep = on_multistep
        self._check(source)

    def _check(self, source: str) -> None:
        p = self.param
        if not p.HasField("lr_policy"):
            raise CaffeCompatError(f"{source}: lr_policy is not set (one of {', '.join(POLICIES)})")
        if self.policy not in POLICIES:
            raise CaffeCompatError(
                f"{source}: unknown lr_policy '{self.policy}' (Caffe knows {', '.join(POLICIES)})"
            )
        if self.policy in ("step", "sigmoid") and p.stepsize <= 0:
            raise CaffeCompatError(f"{source}: lr_policy '{self.policy}' needs stepsize > 0 (got {p.stepsize})")
        if self.policy == "sigmoid" and p.gamma < 0:
            raise CaffeCompatError(
                f"{source}: lr_policy 'sigmoid' needs gamma >= 0 (got {p.gamma:g}); Caffe aborts on this "
                "(CHECK_GE(gamma, 0)) because its sigmoid can only ramp the rate up"
            )
        if self.policy == "poly" and p.max_iter <= 0:
            raise CaffeCompatError(f"{source}: lr_policy 'poly' needs max_iter > 0")

    def rate(self, iteration: int) -> float:
        """The learning rate Caffe uses for the update made at ``iteration`` (float32-rounded)."""
        p = self.param
        base = float(np.float32(p.base_lr))
        gamma = float(np.float32(p.gamma))
        power = float(np.float32(p.power))
        if self.policy == "fixed":
            return _f32(base)
        if self.policy == "step":
            self.current_step = iteration // p.stepsize
            return _f32(base * gamma**self.current_step)
        if self.policy == "exp":
            return _f32(base * gamma**iteration)
        if self.policy == "inv":
            return _f32(base * _pow(1.0 + gamma * iteration, -power))
        if self.policy == "multistep":
            if self.current_step < len(p.stepvalue) and iteration >= p.stepvalue[self.current_step]:
                self.current_step += 1
                if self.on_multistep is not None:
                    self.on_multistep(iteration, self.current_step)
            return _f32(base * gamma**self.current_step)
        if self.policy == "poly":
            return _f32(base * _pow(1.0 - iteration / p.max_iter, power))
        # sigmoid
        with np.errstate(over="ignore"):
            return _f32(base * (1.0 / (1.0 + np.exp(np.float64(-gamma * (iteration - p.stepsize))))))
