"""``caffe-compat inspect`` for the files that are not nets: mean files (binaryproto), solver
states, solver prototxts and LMDBs of Datums, each as a short report a person can read.

Nets need the net builder for their shapes, so their reports (and the dispatch by file kind)
live a layer up, in :mod:`caffe_compat.net.summary`.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.blob import read_binaryproto
from caffe_compat.io.lmdb_file import read_meta
from caffe_compat.io.mapped import map_ended, map_started
from caffe_compat.io.prototxt import to_text
from caffe_compat.io.solverstate import load_solverstate
from caffe_compat.progress import progress_bar
from caffe_compat.proto import caffe_pb2

Shape = tuple[int, ...]

_IMAGE_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG": "png", b"BM": "bmp"}


def fmt_shape(shape: Shape | None) -> str:
    return "?" if shape is None else "(" + ",".join(str(d) for d in shape) + ")"


def solver_lines(solver: caffe_pb2.SolverParameter) -> list[str]:
    return to_text(solver).splitlines()


def indent(lines: Sequence[str]) -> list[str]:
    return ["  " + line for line in lines]


def _array_lines(arr: np.ndarray) -> list[str]:
    lines = [f"shape {fmt_shape(arr.shape)}, {arr.size:,} values, {arr.dtype}"]
    if arr.size:
        lines.append(f"min {arr.min():.6g}, max {arr.max():.6g}, mean {arr.mean(dtype=np.float64):.6g}")
    if arr.ndim == 4 and arr.shape[0] == 1 and arr.size:
        means = ", ".join(f"{m:.6g}" for m in arr[0].reshape(arr.shape[1], -1).mean(axis=1, dtype=np.float64))
        lines.append(f"per-channel means: {means}")
    return lines


def inspect_binaryproto(path: Path, phase: int | None) -> list[str]:
    return [f"{path}: BlobProto", *indent(_array_lines(read_binaryproto(path)))]


def inspect_solverstate(path: Path, phase: int | None) -> list[str]:
    state, history = load_solverstate(path)
    lines = [
        f"{path}: SolverState",
        f"  iter {state.iter}, current_step {state.current_step}, learned_net '{state.learned_net}'",
        f"  history: {len(history)} blobs, {sum(h.size for h in history):,} values",
    ]
    lines += [f"    [{i}] {fmt_shape(h.shape)}" for i, h in enumerate(history)]
    return lines


@dataclass
class LmdbInfo:
    entries: int
    shapes: collections.Counter  # (channels, height, width) of raw datums
    encodings: collections.Counter  # "raw", "jpeg", "png", ... per datum
    labels: collections.Counter
    first_key: str | None = None
    last_key: str | None = None


def lmdb_info(path: Path) -> LmdbInfo:
    """Scan every Datum of an LMDB (read-only, no lock file written)."""
    import lmdb

    read_meta(path)  # a truncated data.mdb would be mapped past its end: SIGBUS on the first read there
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True)
    except lmdb.Error as exc:
        raise CaffeCompatError(f"{path}: cannot open as LMDB: {exc}") from None
    map_started(path / "data.mdb", "reading")
    try:
        return _scan(path, env)
    except lmdb.Error as exc:
        raise CaffeCompatError(f"{path}: damaged LMDB: {exc}") from None
    finally:
        env.close()
        map_ended(path / "data.mdb")


def _scan(path: Path, env) -> LmdbInfo:
    with env.begin() as txn:
        total = txn.stat()["entries"]
        info = LmdbInfo(total, collections.Counter(), collections.Counter(), collections.Counter())
        datum = caffe_pb2.Datum()
        for key, value in progress_bar(txn.cursor(), total=total, desc="scanning", unit="datum", shown=None if total >= 100_000 else False, leave=False):
            try:
                datum.ParseFromString(value)
            except Exception:  # noqa: BLE001 - protobuf's DecodeError differs between runtimes
                raise CaffeCompatError(f"{path}: entry '{key.decode(errors='replace')}' is not a Caffe Datum") from None
            info.first_key = info.first_key or key.decode(errors="replace")
            info.last_key = key.decode(errors="replace")
            info.labels[datum.label] += 1
            if datum.encoded:
                kind = next((name for magic, name in _IMAGE_MAGIC.items() if datum.data.startswith(magic)), "other")
                info.encodings[f"encoded {kind}"] += 1
            else:
                info.encodings["raw float" if len(datum.float_data) else "raw uint8"] += 1
                info.shapes[(datum.channels, datum.height, datum.width)] += 1
    return info


def inspect_lmdb(path: Path, phase: int | None) -> list[str]:
    info = lmdb_info(path)
    lines = [f"{path}: LMDB, {info.entries:,} entries"]
    if info.entries:
        lines.append(f"  keys: first '{info.first_key}', last '{info.last_key}'")
        lines.append("  storage: " + ", ".join(f"{kind} x{n:,}" for kind, n in info.encodings.most_common()))
        if info.shapes:
            shapes = ", ".join(f"{fmt_shape(s)} x{n:,}" for s, n in info.shapes.most_common())
            lines.append(f"  datum shape (channels,height,width): {shapes}")
        lines.append(f"  labels: {len(info.labels)} distinct (label: count)")
        cells = [f"{label:>6}: {n:<6,}" for label, n in sorted(info.labels.items())]
        lines += ["   " + "  ".join(cells[i : i + 8]).rstrip() for i in range(0, len(cells), 8)]
    return lines


