"""Caffe's upgrade_net_proto_text / upgrade_net_proto_binary / upgrade_solver_proto_text tools,
as library functions.

Like the tools: the input is read as written (no automatic upgrade), upgraded if needed,
and always written; a net already in the current format is copied and reported as such;
problems Caffe continues past make the result unsuccessful (the tools' exit status 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from caffe_compat.io.caffemodel import read_caffemodel_raw, write_caffemodel
from caffe_compat.io.prototxt import read_net_text_raw, read_solver_text_raw, write_prototxt
from caffe_compat.io.upgrade import net_needs_upgrade, upgrade_net_as_needed, upgrade_solver_as_needed
from caffe_compat.proto import caffe_pb2


@dataclass
class UpgradeResult:
    net: caffe_pb2.NetParameter | caffe_pb2.SolverParameter
    messages: list[str] = field(default_factory=list)
    success: bool = True


def _upgrade(net: caffe_pb2.NetParameter, source: str) -> UpgradeResult:
    result = UpgradeResult(net)
    if not net_needs_upgrade(net):
        result.messages.append(f"File already in latest proto format: {source}")
        return result
    problems = upgrade_net_as_needed(net, source)
    if problems:
        result.success = False
        result.messages += problems
        result.messages.append("Encountered error(s) while upgrading; see details above.")
    return result


def upgrade_net_proto_text(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> UpgradeResult:
    """Upgrade a net prototxt and write it as Caffe's tool would (same text, byte for byte)."""
    result = _upgrade(read_net_text_raw(input_path), os.fspath(input_path))
    write_prototxt(result.net, output_path)
    result.messages.append(f"Wrote upgraded NetParameter text proto to {os.fspath(output_path)}")
    return result


def upgrade_net_proto_binary(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> UpgradeResult:
    """Upgrade a binary net (caffemodel) and write it as Caffe's tool would."""
    result = _upgrade(read_caffemodel_raw(input_path), os.fspath(input_path))
    write_caffemodel(output_path, result.net)
    result.messages.append(f"Wrote upgraded NetParameter binary proto to {os.fspath(output_path)}")
    return result


def upgrade_solver_proto_text(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> UpgradeResult:
    """Caffe's upgrade_solver_proto_text: the ``solver_type`` enum becomes the ``type`` string;
    the solver is written as Caffe's tool writes it (nothing else changes)."""
    source = os.fspath(input_path)
    solver = read_solver_text_raw(input_path)
    result = UpgradeResult(solver)
    if solver.HasField("solver_type"):
        upgrade_solver_as_needed(solver, source)
    else:
        result.messages.append(f"File already in latest proto format: {source}")
    write_prototxt(solver, output_path)
    result.messages.append(f"Wrote upgraded SolverParameter text proto to {os.fspath(output_path)}")
    return result
