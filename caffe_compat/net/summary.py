"""``caffe-compat inspect``: what is in a Caffe file, in a form a person can read.

Nets (prototxt or caffemodel): every layer with type, bottoms -> tops, top shapes, parameter
blob shapes and counts, and the total; top shapes come from building the net, and when that is
impossible (say a Data layer whose LMDB is elsewhere) the layers are still listed and a note
says why shapes are missing. Mean files, solver states, solver prototxts and LMDBs get the
short reports of :mod:`caffe_compat.io.summary`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.blob import blob_shape
from caffe_compat.io.caffemodel import load_caffemodel
from caffe_compat.io.prototxt import parse_text, read_solver
from caffe_compat.io.summary import (Shape, fmt_shape, indent, inspect_binaryproto, inspect_lmdb,
                                     inspect_solverstate, solver_lines)
from caffe_compat.io.upgrade import upgrade_net_on_read
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.state import filter_net, net_state
from caffe_compat.net.user_code import python_layer_name, user_code_refused
from caffe_compat.proto import caffe_pb2


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


def _built_net(net: caffe_pb2.NetParameter, phase: int):
    """The net built by the nets engine (shape inference and parameter shapes), or the reason why not."""
    try:
        return CaffeNet(net, phase=phase), None
    except CaffeCompatError as exc:
        return None, f"blob shapes unavailable: {exc}"


def _net_layers(net: caffe_pb2.NetParameter, phase: int) -> list[caffe_pb2.LayerParameter]:
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
            LayerInfo(layer.name, _type_name(layer), list(layer.bottom), list(layer.top),
                      [blob_shapes.get(top) for top in layer.top], params)
        )
    return NetInfo(net.name, layers, [note] if note else [], params_known=from_file or built is not None)


def _type_name(layer: caffe_pb2.LayerParameter) -> str:
    """The layer's type; a Python layer's also names its ``module.layer`` (shown, not imported)."""
    return f"Python ({python_layer_name(layer)})" if layer.type == "Python" else layer.type


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
            " ".join(fmt_shape(s) for s in layer.top_shapes),
            " ".join(fmt_shape(s) for s in layer.param_shapes),
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
        return [f"{path}: solver ({solver.type})", *indent(solver_lines(solver))]
    upgrade_net_on_read(net, path)
    phase = caffe_pb2.TEST if phase is None else phase
    info = net_info(net, phase, from_file=False)
    return format_net(info, f"{path}: net '{info.name}', phase {caffe_pb2.Phase.Name(phase)}")


def _inspect_caffemodel(path: Path, phase: int | None) -> list[str]:
    net, _ = load_caffemodel(path)
    if phase is None:  # Net::ToProto records the phase the net was saved in on every layer
        phase = net.layer[0].phase if len(net.layer) and net.layer[0].HasField("phase") else caffe_pb2.TEST
    info = net_info(net, phase, from_file=True)
    header = f"{path}: caffemodel, net '{info.name}' (shapes for phase {caffe_pb2.Phase.Name(phase)})"
    return format_net(info, header)


_BY_SUFFIX = {
    ".caffemodel": _inspect_caffemodel,
    ".binaryproto": inspect_binaryproto,
    ".solverstate": inspect_solverstate,
    ".prototxt": _inspect_prototxt,
}


def inspect_lines(path: str | os.PathLike[str], phase: int | None = None) -> list[str]:
    """The report for ``path``: an LMDB folder, or a file chosen by extension (else sniffed).

    ``phase`` picks a net's layers and shapes: TEST by default for a prototxt, the saved
    phase for a caffemodel.
    """
    with user_code_refused("inspect"):  # it reads files: a Python layer's module is named, not imported
        return _inspect_lines(Path(path), phase)


def _inspect_lines(path: Path, phase: int | None) -> list[str]:
    if path.is_dir():
        if not (path / "data.mdb").is_file():
            raise CaffeCompatError(f"{path}: a folder, but not an LMDB (no data.mdb)")
        return inspect_lmdb(path, phase)
    if not path.is_file():
        raise CaffeCompatError(f"{path}: no such file or folder")
    handler = _BY_SUFFIX.get(path.suffix.lower())
    if handler is not None:
        return handler(path, phase)
    if _looks_like_text(path):
        return _inspect_prototxt(path, phase)
    for handler in (_inspect_caffemodel, inspect_solverstate, inspect_binaryproto):
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
