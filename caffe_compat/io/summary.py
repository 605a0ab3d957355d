"""``caffe-compat inspect``: what is in a Caffe file, in a form a person can read.

Nets (prototxt or caffemodel): every layer with type, bottoms -> tops, top shapes, parameter
blob shapes and counts, and the total. Mean files, solver states, solver prototxts and
LMDBs of Datums get their own short reports. Top shapes come from building the net
(:func:`caffe_compat.net.shapes` rules); when that is impossible (say a Data layer whose
LMDB is elsewhere) the layers are still listed and a note says why shapes are missing.
"""

from __future__ import annotations

import collections
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.blob import blob_shape, read_binaryproto
from caffe_compat.io.caffemodel import load_caffemodel
from caffe_compat.io.lmdb_file import read_meta
from caffe_compat.io.mapped import map_ended, map_started
from caffe_compat.io.prototxt import parse_text, read_solver, to_text
from caffe_compat.io.solverstate import load_solverstate
from caffe_compat.io.upgrade import upgrade_net_on_read
from caffe_compat.progress import progress_bar
from caffe_compat.proto import caffe_pb2

Shape = tuple[int, ...]

_IMAGE_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG": "png", b"BM": "bmp"}


@dataclass
class LayerInfo:
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    top_shapes: list[Shape | None]
    param_shapes: list[Shape]

    @property
    def param_count(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes)


@dataclass
class NetInfo:
    name: str
    layers: list[LayerInfo]
    notes: list[str] = field(default_factory=list)
    params_known: bool = True  # a prototxt's parameter shapes need the built net

    @property
    def param_count(self) -> int:
        return sum(layer.param_count for layer in self.layers)


def _fmt_shape(shape: Shape | None) -> str:
    return "?" if shape is None else "(" + ",".join(str(d) for d in shape) + ")"


def _built_net(net: caffe_pb2.NetParameter, phase: int):
    """The net built by the nets engine (shape inference and parameter shapes), or the reason why not."""
    from caffe_compat.net.builder import CaffeNet

    try:
        return CaffeNet(net, phase=phase), None
    except CaffeCompatError as exc:
        return None, f"blob shapes unavailable: {exc}"


def _net_layers(net: caffe_pb2.NetParameter, phase: int) -> list[caffe_pb2.LayerParameter]:
    from caffe_compat.net.state import filter_net, net_state

    return list(filter_net(net, net_state(net, phase)).layer)


def net_info(net: caffe_pb2.NetParameter, phase: int, from_file: bool) -> NetInfo:
    """Layers of ``net``; parameter shapes from its blobs when ``from_file`` (a caffemodel).

    A prototxt lists the layers of ``phase``; a caffemodel lists every layer it stores.
    """
    built, note = _built_net(_without_blobs(net) if from_file else net, phase)
    blob_shapes = built.blob_shapes if built is not None else {}
    layers = []
    for layer in net.layer if from_file else _net_layers(net, phase):
        if from_file:
            params = [blob_shape(b) for b in layer.blobs]
        else:
            module = built.layer_by_name(layer.name) if built is not None else None
            params = [tuple(p.shape) for p in module.blobs] if module is not None else []
        layers.append(
            LayerInfo(layer.name, layer.type, list(layer.bottom), list(layer.top),
                      [blob_shapes.get(top) for top in layer.top], params)
        )
    return NetInfo(net.name, layers, [note] if note else [], params_known=from_file or built is not None)


def _without_blobs(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    bare = caffe_pb2.NetParameter()
    bare.CopyFrom(net)
    for layer in bare.layer:
        del layer.blobs[:]
    return bare


def format_net(info: NetInfo, header: str) -> list[str]:
    rows = [("layer", "type", "bottoms -> tops", "top shapes", "param shapes", "params")]
    for layer in info.layers:
        rows.append((
            layer.name,
            layer.type,
            f"{','.join(layer.bottoms)} -> {','.join(layer.tops)}".strip(),
            " ".join(_fmt_shape(s) for s in layer.top_shapes),
            " ".join(_fmt_shape(s) for s in layer.param_shapes),
            f"{layer.param_count:,}" if layer.param_shapes else "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [header]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths)] + [row[-1].rjust(widths[-1])]
        lines.append("  ".join(cells).rstrip())
    with_params = sum(1 for layer in info.layers if layer.param_shapes)
    if info.params_known:
        lines.append(
            f"total: {len(info.layers)} layers ({with_params} with parameters), {info.param_count:,} parameters"
        )
    else:
        lines.append(f"total: {len(info.layers)} layers, parameter counts unknown (the net could not be built)")
    return lines + [f"note: {note}" for note in info.notes]


def _inspect_prototxt(path: Path, phase: int | None) -> list[str]:
    raw = path.read_bytes()
    try:
        net = parse_text(raw, caffe_pb2.NetParameter(), path)
    except CaffeCompatError as net_error:
        try:
            solver = read_solver(path)
        except CaffeCompatError as solver_error:
            raise (solver_error if "solver" in path.name.lower() else net_error) from None
        return [f"{path}: solver ({solver.type})", *_indent(_solver_lines(solver))]
    upgrade_net_on_read(net, path)
    phase = caffe_pb2.TEST if phase is None else phase
    info = net_info(net, phase, from_file=False)
    return format_net(info, f"{path}: net '{info.name}', phase {caffe_pb2.Phase.Name(phase)}")


def _solver_lines(solver: caffe_pb2.SolverParameter) -> list[str]:
    return to_text(solver).splitlines()


def _indent(lines: Sequence[str]) -> list[str]:
    return ["  " + line for line in lines]


def _inspect_caffemodel(path: Path, phase: int | None) -> list[str]:
    net, _ = load_caffemodel(path)
    if phase is None:  # Net::ToProto records the phase the net was saved in on every layer
        phase = net.layer[0].phase if len(net.layer) and net.layer[0].HasField("phase") else caffe_pb2.TEST
    info = net_info(net, phase, from_file=True)
    header = f"{path}: caffemodel, net '{info.name}' (shapes for phase {caffe_pb2.Phase.Name(phase)})"
    return format_net(info, header)


def _array_lines(arr: np.ndarray) -> list[str]:
    lines = [f"shape {_fmt_shape(arr.shape)}, {arr.size:,} values, {arr.dtype}"]
    if arr.size:
        lines.append(f"min {arr.min():.6g}, max {arr.max():.6g}, mean {arr.mean(dtype=np.float64):.6g}")
    if arr.ndim == 4 and arr.shape[0] == 1 and arr.size:
        means = ", ".join(f"{m:.6g}" for m in arr[0].reshape(arr.shape[1], -1).mean(axis=1, dtype=np.float64))
        lines.append(f"per-channel means: {means}")
    return lines


def _inspect_binaryproto(path: Path, phase: int | None) -> list[str]:
    return [f"{path}: BlobProto", *_indent(_array_lines(read_binaryproto(path)))]


def _inspect_solverstate(path: Path, phase: int | None) -> list[str]:
    state, history = load_solverstate(path)
    lines = [
        f"{path}: SolverState",
        f"  iter {state.iter}, current_step {state.current_step}, learned_net '{state.learned_net}'",
        f"  history: {len(history)} blobs, {sum(h.size for h in history):,} values",
    ]
    lines += [f"    [{i}] {_fmt_shape(h.shape)}" for i, h in enumerate(history)]
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


def _inspect_lmdb(path: Path, phase: int | None) -> list[str]:
    info = lmdb_info(path)
    lines = [f"{path}: LMDB, {info.entries:,} entries"]
    if info.entries:
        lines.append(f"  keys: first '{info.first_key}', last '{info.last_key}'")
        lines.append("  storage: " + ", ".join(f"{kind} x{n:,}" for kind, n in info.encodings.most_common()))
        if info.shapes:
            shapes = ", ".join(f"{_fmt_shape(s)} x{n:,}" for s, n in info.shapes.most_common())
            lines.append(f"  datum shape (channels,height,width): {shapes}")
        lines.append(f"  labels: {len(info.labels)} distinct (label: count)")
        cells = [f"{label:>6}: {n:<6,}" for label, n in sorted(info.labels.items())]
        lines += ["   " + "  ".join(cells[i : i + 8]).rstrip() for i in range(0, len(cells), 8)]
    return lines


_BY_SUFFIX = {
    ".caffemodel": _inspect_caffemodel,
    ".binaryproto": _inspect_binaryproto,
    ".solverstate": _inspect_solverstate,
    ".prototxt": _inspect_prototxt,
}


def inspect_lines(path: str | os.PathLike[str], phase: int | None = None) -> list[str]:
    """The report for ``path``: an LMDB folder, or a file chosen by extension (else sniffed).

    ``phase`` picks a net's layers and shapes: TEST by default for a prototxt, the saved
    phase for a caffemodel.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "data.mdb").is_file():
            raise CaffeCompatError(f"{path}: a folder, but not an LMDB (no data.mdb)")
        return _inspect_lmdb(path, phase)
    if not path.is_file():
        raise CaffeCompatError(f"{path}: no such file or folder")
    handler = _BY_SUFFIX.get(path.suffix.lower())
    if handler is not None:
        return handler(path, phase)
    if _looks_like_text(path):
        return _inspect_prototxt(path, phase)
    for handler in (_inspect_caffemodel, _inspect_solverstate, _inspect_binaryproto):
        try:
            return handler(path, phase)
        except CaffeCompatError:
            continue
    raise CaffeCompatError(f"{path}: not a prototxt, caffemodel, solverstate, binaryproto or LMDB")


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(head) - 4  # a multi-byte character cut at the end of the sample
    return True
