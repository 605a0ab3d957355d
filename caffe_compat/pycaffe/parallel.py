"""pycaffe's multi-GPU surface: ``has_nccl``, ``NCCL``, ``solver_count`` / ``solver_rank`` /
``set_multiprocess`` and their setters.

WHY this much and no more: Caffe trains on several GPUs by running one solver per GPU and
joining their gradients with NCCL from Python (``caffe.NCCL(solver, uid)``,
``solver.add_callback(nccl)``). caffe-compat joins gradients with PyTorch's DDP instead, started
by ``caffe-compat train -gpu 0,1`` or torchrun, so this pycaffe is built without NCCL, as a Caffe
built without ``USE_NCCL`` is: ``has_nccl()`` is False and ``NCCL`` says what to use instead.
The counters are Caffe's globals, kept so scripts that set or read them run; nothing here shards
data or starts processes.
"""

from __future__ import annotations

from typing import Any

from caffe_compat.errors import CaffeCompatError

_state = {"solver_count": 1, "solver_rank": 0, "multiprocess": False}

_NO_NCCL = ("this pycaffe has no NCCL (caffe.has_nccl() is False): caffe-compat trains on several GPUs "
            "with PyTorch DDP instead; run `caffe-compat train -solver S -gpu 0,1` or "
            "`torchrun --nproc_per_node N $(which caffe-compat) train -solver S -gpu all`")


class NCCLUnavailable(CaffeCompatError, RuntimeError):
    """``caffe.NCCL`` used where there is no NCCL (a RuntimeError for pycaffe code, and ours)."""


def has_nccl() -> bool:
    """False: gradients of several GPUs are joined by PyTorch DDP, not by pycaffe's NCCL."""
    return False


class NCCL:
    """Caffe's ``NCCL(solver, uid)``: refused with the route that does train on several GPUs."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        raise NCCLUnavailable(f"caffe.NCCL: {_NO_NCCL}")

    @staticmethod
    def new_uid() -> bytes:
        raise NCCLUnavailable(f"caffe.NCCL.new_uid: {_NO_NCCL}")


def solver_count() -> int:
    """How many solvers train together (Caffe's global; 1 unless set)."""
    return _state["solver_count"]


def set_solver_count(count: int) -> None:
    _state["solver_count"] = int(count)


def solver_rank() -> int:
    """This solver's rank among them (Caffe's global; 0 unless set)."""
    return _state["solver_rank"]


def set_solver_rank(rank: int) -> None:
    _state["solver_rank"] = int(rank)


def multiprocess() -> bool:
    return _state["multiprocess"]


def set_multiprocess(value: bool) -> None:
    """Caffe's flag for one solver per process (as its Python multi-GPU script sets)."""
    _state["multiprocess"] = bool(value)
