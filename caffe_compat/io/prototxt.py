"""Read and write prototxt (protobuf text format) nets and solvers, as Caffe's tools do.

Nets are upgraded on read (``ReadNetParamsFromTextFileOrDie``); solvers get the solver_type
and snapshot_prefix upgrades (``ReadSolverParamsFromTextFileOrDie``). A syntax error, an
unknown field or an unknown layer parameter is reported as ``file:line:column: problem``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TypeVar

import numpy as np
from google.protobuf import text_encoding, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.io.upgrade import upgrade_net_on_read, upgrade_snapshot_prefix, upgrade_solver_as_needed
from caffe_compat.proto import caffe_pb2, dialects

M = TypeVar("M", bound=Message)

# protobuf prefixes its messages with "line:column : "; we put the file name in front instead.
_POSITION_PREFIX = re.compile(r"^\d+:\d+ ?: ?")


def parse_text(text: str | bytes, message: M, source: str | os.PathLike[str] = "<string>") -> M:
    """Parse protobuf text into ``message`` (a fresh instance); errors name source:line:column."""
    source = os.fspath(source)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = text[: exc.start].count(b"\n") + 1
            column = exc.start - (text.rfind(b"\n", 0, exc.start) + 1) + 1
            raise CaffeCompatError(f"{where(source, line, column)}: invalid UTF-8 byte") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        problem = _POSITION_PREFIX.sub("", str(exc))
        raise CaffeCompatError(f"{where(source, line, column)}: {problem}{_dialect_hint(problem)}") from None


_NO_FIELD = re.compile(r'Message type "caffe\.(\w+)" has no field named "(\w+)"')


def _dialect_hint(problem: str) -> str:
    """For an unknown field: the forks (caffe_compat.proto.dialects) whose caffe.proto has it."""
    found = _NO_FIELD.search(problem)
    if found is None:
        return ""
    names = dialects.knowing(found.group(1), found.group(2))
    if not names:
        return " (no known Caffe fork has it either)"
    sources = "; ".join(f"{name}: {dialects.get(name).source}" for name in names)
    return f" It is known to dialect {', '.join(names)} ({sources}); caffe_compat does not read it yet."


def _read_text(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CaffeCompatError(f"{os.fspath(path)}: cannot read: {exc.strerror}") from None


def parse_net_text(text: str | bytes, source: str | os.PathLike[str] = "<string>") -> caffe_pb2.NetParameter:
    """A NetParameter from prototxt text, upgraded from V0/V1 when needed."""
    net = parse_text(text, caffe_pb2.NetParameter(), source)
    upgrade_net_on_read(net, source)
    return net


def read_net_text_raw(path: str | os.PathLike[str]) -> caffe_pb2.NetParameter:
    """A NetParameter exactly as written in the file (no upgrade), for upgrade tools."""
    return parse_text(_read_text(path), caffe_pb2.NetParameter(), path)


def read_solver_text_raw(path: str | os.PathLike[str]) -> caffe_pb2.SolverParameter:
    """A SolverParameter exactly as written in the file (no upgrade), for upgrade tools."""
    return parse_text(_read_text(path), caffe_pb2.SolverParameter(), path)


def read_net(path: str | os.PathLike[str]) -> caffe_pb2.NetParameter:
    """Read a net prototxt; legacy V0/V1 nets come back in the current format."""
    return parse_net_text(_read_text(path), path)


def read_solver(path: str | os.PathLike[str]) -> caffe_pb2.SolverParameter:
    """Read a solver prototxt with Caffe's solver upgrades applied (see upgrade_snapshot_prefix)."""
    solver = parse_text(_read_text(path), caffe_pb2.SolverParameter(), path)
    upgrade_solver_as_needed(solver, path)
    upgrade_snapshot_prefix(solver, path)
    return solver


def _format_float(value: float, digits: int, fallback_digits: int, as_stored) -> str:
    """protobuf C++'s SimpleFtoa/SimpleDtoa: %g with the type's digits, more only if needed to round-trip."""
    if math.isnan(value):
        return "nan"
    text = "%.*g" % (digits, value)
    if as_stored(float(text)) != as_stored(value):
        text = "%.*g" % (fallback_digits, value)
    return text


def _format_value(fd: FieldDescriptor, value) -> str:
    if fd.type == fd.TYPE_FLOAT:
        return _format_float(value, 6, 9, np.float32)
    if fd.type == fd.TYPE_DOUBLE:
        return _format_float(value, 15, 17, float)
    if fd.type == fd.TYPE_BOOL:
        return "true" if value else "false"
    if fd.type == fd.TYPE_ENUM:
        enum_value = fd.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else str(value)
    if fd.type in (fd.TYPE_STRING, fd.TYPE_BYTES):
        raw = value.encode("utf-8") if isinstance(value, str) else value
        return '"' + text_encoding.CEscape(raw, as_utf8=False) + '"'
    return str(value)


def _print_message(message: Message, indent: str, out: list[str]) -> None:
    for fd, value in message.ListFields():
        values = value if _is_repeated(fd) else [value]
        for item in values:
            if fd.message_type is not None:
                out.append(f"{indent}{fd.name} {{\n")
                _print_message(item, indent + "  ", out)
                out.append(f"{indent}}}\n")
            else:
                out.append(f"{indent}{fd.name}: {_format_value(fd, item)}\n")


def _is_repeated(fd: FieldDescriptor) -> bool:
    # protobuf >= 6 spells it is_repeated; 7 dropped `label`, which 5 still needs.
    return fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED


def to_text(message: Message) -> str:
    """Text format exactly as Caffe's WriteProtoToTextFile (protobuf C++ TextFormat) prints it.

    Python's own printer writes floats differently (``1.0`` where C++ writes ``1``), so
    upgraded prototxts would not match the ones Caffe's tools produce byte for byte.
    """
    out: list[str] = []
    _print_message(message, "", out)
    return "".join(out)


def write_prototxt(message: Message, path: str | os.PathLike[str]) -> None:
    """Write ``message`` as prototxt (atomically)."""
    atomic_write_bytes(path, to_text(message).encode("utf-8"))
