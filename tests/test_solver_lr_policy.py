"""Caffe's lr policies: formulas, multistep's one-step-per-iteration, sigmoid's gamma check, fixture rates."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2
from caffe_compat.solver.lr_policy import LearningRatePolicy


def policy(**fields) -> LearningRatePolicy:
    return LearningRatePolicy(caffe_pb2.SolverParameter(**fields), "solver.prototxt")


@given(
    it=st.integers(0, 10_000),
    gamma=st.floats(0.01, 0.99),
    power=st.floats(0.1, 3.0),
    stepsize=st.integers(1, 500),
)
def test_formulas(it, gamma, power, stepsize):
    base = 0.01
    g = float(caffe_pb2.SolverParameter(gamma=gamma).gamma)  # float32 as stored
    pw = float(caffe_pb2.SolverParameter(power=power).power)
    b = float(caffe_pb2.SolverParameter(base_lr=base).base_lr)
    cases = {
        "fixed": b,
        "step": b * g ** (it // stepsize),
        "exp": b * g**it,
        "inv": b * (1 + g * it) ** -pw,
        "poly": b * (1 - it / 10_001) ** pw,
        "sigmoid": b / (1 + math.exp(-g * (it - stepsize))),
    }
    for name, want in cases.items():
        p = policy(lr_policy=name, base_lr=base, gamma=gamma, power=power, stepsize=stepsize, max_iter=10_001)
        assert p.rate(it) == pytest.approx(want, rel=1e-6, abs=1e-30), name


def test_multistep_advances_one_step_per_iteration():
    p = policy(lr_policy="multistep", base_lr=1, gamma=0.1, stepvalue=[2, 3, 4])
    # jump straight to iteration 10: Caffe catches up one step per call
    assert [p.rate(10) for _ in range(4)] == pytest.approx([0.1, 0.01, 0.001, 0.001])
    assert p.current_step == 3


def test_multistep_reports_steps():
    seen = []
    p = LearningRatePolicy(
        caffe_pb2.SolverParameter(lr_policy="multistep", base_lr=1, gamma=0.5, stepvalue=[1]),
        "s", on_multistep=lambda it, step: seen.append((it, step)),
    )
    [p.rate(i) for i in range(3)]
    assert seen == [(1, 1)]


def test_sigmoid_negative_gamma_is_a_clear_error():
    with pytest.raises(CaffeCompatError, match=r"solver.prototxt: lr_policy 'sigmoid' needs gamma >= 0"):
        policy(lr_policy="sigmoid", base_lr=1, gamma=-0.1, stepsize=10)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"lr_policy": "cosine"}, "unknown lr_policy 'cosine'"),
        ({}, "lr_policy is not set"),
        ({"lr_policy": "step"}, "needs stepsize > 0"),
    ],
)
def test_bad_policies(fields, message):
    with pytest.raises(CaffeCompatError, match=message):
        policy(base_lr=1, **fields)


@pytest.mark.parametrize("run", ["sgd_step", "sgd_step_16", "adam"])
def test_fixture_rates(fixtures, run):
    traj = json.loads((fixtures / "solver" / run / "trajectory.json").read_text())
    from caffe_compat.io.prototxt import read_solver

    p = LearningRatePolicy(read_solver(fixtures / "solver" / run / "solver.prototxt"))
    assert [float(f"{p.rate(i):.6g}") for i in traj["iters"]] == traj["lr"]
