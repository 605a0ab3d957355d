"""Read and write .solverstate snapshots (SolverState: iter, learned_net, history, current_step).

``read_solverstate`` gives the protobuf message, as Caffe's Solver::Restore reads it;
``load_history`` reads the history blobs straight into numpy arrays (the fast path for
large nets, where the history is as big as the model).
"""

from __future__ import annotations

import os

import numpy as np
from google.protobuf.message import DecodeError

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.binary import parse_binary, strip_binary
from caffe_compat.io.blob import buffer_reader, stripped_blob_to_array
from caffe_compat.io.wire import BLOB
from caffe_compat.proto import caffe_pb2

_KIND = "Caffe SolverState (.solverstate)"
_HISTORY = 3  # SolverState.history


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CaffeCompatError(f"{path}: cannot read: {exc.strerror}") from None


def _parse(raw: bytes, path: str) -> caffe_pb2.SolverState:
    try:
        return parse_binary(raw, caffe_pb2.SolverState, path, _KIND)
    except DecodeError:
        raise CaffeCompatError(f"{path}: not a valid {_KIND}: a history blob does not parse") from None


def read_solverstate(path: str | os.PathLike[str]) -> caffe_pb2.SolverState:
    """The SolverState in ``path``; one clear line if it is truncated or not a solverstate."""
    path = os.fspath(path)
    return _parse(_read_bytes(path), path)


def load_solverstate(path: str | os.PathLike[str]) -> tuple[caffe_pb2.SolverState, list[np.ndarray]]:
    """The SolverState without history values, and the history as arrays (in file order)."""
    path = os.fspath(path)
    view = memoryview(_read_bytes(path))
    skeleton, payloads = strip_binary(view, caffe_pb2.SolverState, {_HISTORY: BLOB}, path, _KIND)
    state = _parse(skeleton, path)
    read = buffer_reader(view)
    history = [
        stripped_blob_to_array(blob, payloads, read, f"{path}: history blob {i}")
        for i, blob in enumerate(state.history)
    ]
    return state, history


def write_solverstate(path: str | os.PathLike[str], state: caffe_pb2.SolverState) -> None:
    """Write ``state`` atomically (byte-for-byte its protobuf serialisation)."""
    atomic_write_bytes(path, state.SerializeToString())
