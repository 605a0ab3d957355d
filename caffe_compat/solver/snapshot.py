"""Snapshots as real Caffe files, plus a sidecar that lets our own resumes continue exactly.

``<prefix>_iter_N.caffemodel`` and ``<prefix>_iter_N.solverstate`` are what ``caffe train``
writes (SolverState: iter, learned_net = the caffemodel path as written, history blobs in the
solver's order, current_step), so real Caffe can resume from them and we can resume from
Caffe's; with ``snapshot_format: HDF5`` they are ``.caffemodel.h5`` and ``.solverstate.h5`` in
Caffe's HDF5 layout (``caffe_compat.io.hdf5``). Caffe does not save where the data layers were or the RNG: its resume restarts the
data at record 0. We keep those in ``<prefix>_iter_N.solverstate.resume.pt`` beside it; Caffe
never looks at that file, and a resume that finds it continues the run bit for bit (CPU).

Every file goes through ``atomic_write``; if any part of a snapshot fails (full disk), the
parts already written are removed, so the previous snapshot stays the latest complete one.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.blob import array_to_blob
from caffe_compat.io.caffemodel import write_caffemodel
from caffe_compat.io.hdf5 import is_hdf5, read_solverstate_hdf5, write_solverstate_hdf5, write_weights_hdf5
from caffe_compat.io.solverstate import load_solverstate, write_solverstate
from caffe_compat.proto import caffe_pb2

SIDECAR_SUFFIX = ".resume.pt"
#: What every sidecar holds (Solver._sidecar); more may follow (an ``ema`` state).
SIDECAR_KEYS = frozenset({"format", "iter", "train_data", "test_data", "rng", "smoothing"})


def snapshot_filename(prefix: str, iteration: int, extension: str) -> str:
    """Caffe's ``SnapshotFilename``: ``<prefix>_iter_<N><extension>``."""
    return f"{prefix}_iter_{iteration}{extension}"


def sidecar_path(state_path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(state_path)}{SIDECAR_SUFFIX}")


class SnapshotError(CaffeCompatError):
    """A snapshot could not be written; the message names the last complete one."""


def write_snapshot(
    prefix: str,
    iteration: int,
    net_param,
    history: Sequence[np.ndarray],
    current_step: int,
    sidecar: dict[str, Any] | None,
    previous: str | None,
    hdf5: bool = False,
) -> tuple[str, str]:
    """Write caffemodel, solverstate (and sidecar); return (model path, state path)."""
    ext = ".h5" if hdf5 else ""
    model = snapshot_filename(prefix, iteration, ".caffemodel" + ext)
    state_file = snapshot_filename(prefix, iteration, ".solverstate" + ext)
    written: list[Path] = []
    target = model
    try:
        (write_weights_hdf5 if hdf5 else write_caffemodel)(model, net_param)
        written.append(Path(model))
        target = state_file
        if hdf5:
            write_solverstate_hdf5(state_file, iteration, model, current_step, history)
        else:
            state = caffe_pb2.SolverState(iter=iteration, learned_net=model, current_step=current_step)
            state.history.extend(array_to_blob(np.asarray(h, dtype=np.float32)) for h in history)
            write_solverstate(state_file, state)
        written.append(Path(state_file))
        if sidecar is not None:
            target = os.fspath(sidecar_path(state_file))
            buf = io.BytesIO()
            torch.save(sidecar, buf)
            atomic_write_bytes(target, buf.getvalue())
    except (OSError, CaffeCompatError) as exc:
        for path in written:
            path.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        last = f"the last complete snapshot is {previous}" if previous else "no earlier snapshot was written"
        raise SnapshotError(f"cannot write snapshot {target}: {reason}; {last}") from None
    return model, state_file


@dataclass
class SavedState:
    """What a .solverstate (and our sidecar, when present) holds."""

    path: Path
    iteration: int
    current_step: int
    history: list[np.ndarray]
    learned_net: Path | None
    sidecar: dict[str, Any] | None


def _learned_net(state_path: Path, name: str) -> Path:
    """Caffe opens ``learned_net`` relative to the cwd of the resumed run; we also try beside the state."""
    for candidate in (Path(name), state_path.parent / Path(name).name):
        if candidate.is_file():
            return candidate
    raise CaffeCompatError(
        f"{state_path}: its learned_net '{name}' does not exist (looked in the current folder and beside the solverstate)"
    )


def read_snapshot(path: str | os.PathLike[str]) -> SavedState:
    """Read a .solverstate (or .solverstate.h5) written by Caffe or by us, and our sidecar beside
    it if there is one."""
    path = Path(path)
    if not path.is_file():
        raise CaffeCompatError(f"{path}: solverstate does not exist")
    if is_hdf5(path):
        iteration, learned_name, current_step, history = read_solverstate_hdf5(path)
        state = caffe_pb2.SolverState(iter=iteration, learned_net=learned_name, current_step=current_step)
    else:
        state, history = load_solverstate(path)
    if state.iter < 0 or state.current_step < 0:
        raise CaffeCompatError(f"{path}: iter {state.iter} and current_step {state.current_step} must be >= 0 "
                               "(a damaged or hand-edited solverstate)")
    learned = _learned_net(path, state.learned_net) if state.learned_net else None
    sidecar = None
    side = sidecar_path(path)
    if side.is_file():
        try:
            sidecar = torch.load(side, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable sidecar is reported as such
            raise CaffeCompatError(f"{side}: unreadable resume sidecar ({exc}); delete it to resume as Caffe would") from None
        missing = SIDECAR_KEYS - set(sidecar) if isinstance(sidecar, dict) else SIDECAR_KEYS
        if missing:
            raise CaffeCompatError(f"{side}: damaged resume sidecar (no {', '.join(sorted(missing))}); "
                                   "delete it to resume as Caffe would")
        if sidecar.get("iter") != state.iter:
            raise CaffeCompatError(
                f"{side}: belongs to iteration {sidecar.get('iter')} but {path} is iteration {state.iter}; "
                "delete the sidecar to resume as Caffe would"
            )
    return SavedState(
        path=path,
        iteration=state.iter,
        current_step=state.current_step,
        history=history,
        learned_net=learned,
        sidecar=sidecar,
    )
