"""Caffe's image list files (``relative/path label`` per line), parsed exactly as Caffe does.

``convert_imageset`` and the ``ImageData`` layer split each line at its LAST space and read
the label with C's ``atoi``; nothing is trimmed. We keep those semantics so the keys, labels
and skipped lines match real Caffe byte for byte, but unlike Caffe we say, per ``file:line``,
whenever a line only "works" by accident of ``atoi`` (garbage labels, no label, CRLF, ...).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.io.inputs import read_capped

_INT32 = 1 << 32
_LONG_MAX = (1 << 63) - 1
MAX_LIST_BYTES = 1 << 30  # 20 million lines of 50 bytes; /dev/zero or a runaway file stops here
_LONG_MIN = -(1 << 63)
_C_SPACE = b" \t\n\v\f\r"
_PLAIN_INT = re.compile(rb"[+-]?[0-9]+")


def c_atoi(text: bytes) -> int:
    """glibc ``atoi``: ``(int) strtol(text, NULL, 10)`` -- leading C whitespace, a sign, digits.

    Stops at the first non-digit (``b"12abc"`` -> 12, ``b"x"`` -> 0); out-of-range values
    saturate to a 64-bit long and then wrap to int32, as the cast does on x86-64 Linux.
    """
    text = text.lstrip(_C_SPACE)
    sign = 1
    if text[:1] in (b"+", b"-"):
        sign = -1 if text[:1] == b"-" else 1
        text = text[1:]
    digits = re.match(rb"[0-9]*", text).group(0)
    value = sign * int(digits) if digits else 0
    value = min(max(value, _LONG_MIN), _LONG_MAX)
    value %= _INT32
    return value - _INT32 if value >= _INT32 // 2 else value


def show(name: bytes) -> str:
    """A file name as users should see it in messages: quoted, tabs/CR/odd bytes escaped."""
    return repr(os.fsdecode(name))


@dataclass(frozen=True)
class ListEntry:
    """One line of a list file: its 1-based line number, the name bytes and the label."""

    line_no: int
    name: bytes
    label: int


@dataclass
class ImageList:
    """A parsed list file: every line in order (even unusable ones) plus per-line warnings.

    Caffe numbers keys by position in this list, so no line is ever dropped here.
    """

    path: Path
    entries: list[ListEntry]
    warnings: list[str] = field(default_factory=list)

    def where(self, entry: ListEntry) -> str:
        return where(self.path, entry.line_no)


def _line_warning(line: bytes, name: bytes, label_text: bytes | None, label: int) -> str | None:
    """Why this line only parses by accident of Caffe's rules, or None when it is clean."""
    if not line.rstrip(b"\r"):
        return "empty line: Caffe opens the root folder itself as the image (skipped)"
    if label_text is None:
        return (
            f"no space before a label: Caffe takes the whole line {show(name)} as the file name "
            f"and atoi(line) = {label} as the label"
        )
    text = label_text[:-1] if label_text.endswith(b"\r") else label_text
    if not text:
        return (
            f"nothing after the last space: Caffe takes {show(name)} as the file name "
            "(trailing space?) and label 0"
        )
    if not _PLAIN_INT.fullmatch(text):
        return f"label {show(text)} is not an integer: Caffe's atoi reads it as {label}"
    if c_atoi(text) != int(text):
        return f"label {show(text)} does not fit in int32: Caffe stores {label}"
    if name.endswith((b" ", b"\t")):
        return f"file name {show(name)} ends with whitespace (two spaces before the label?)"
    return None


def parse_list_bytes(data: bytes, path: str | os.PathLike[str]) -> ImageList:
    """Parse list-file bytes as ``std::getline`` + ``find_last_of(' ')`` + ``atoi`` would."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # getline yields no empty line after a final newline
    result = ImageList(Path(path), [])
    crlf_lines = 0
    for index, line in enumerate(lines):
        pos = line.rfind(b" ")
        if pos < 0:
            name, label_text = line, None
            label = c_atoi(line)
        else:
            name, label_text = line[:pos], line[pos + 1 :]
            label = c_atoi(label_text)
        entry = ListEntry(index + 1, name, label)
        result.entries.append(entry)
        crlf_lines += line.endswith(b"\r")
        warning = _line_warning(line, name, label_text, label)
        if warning:
            result.warnings.append(f"{result.where(entry)}: {warning}")
    if crlf_lines:
        result.warnings.insert(
            0,
            f"{where(path)}: {crlf_lines} line(s) end with CRLF (Windows line endings); Caffe's atoi "
            "ignores the '\\r' after a label, so those lines give the same keys and labels",
        )
    return result


def read_list(path: str | os.PathLike[str]) -> ImageList:
    """Read and parse a list file; a missing, unreadable or empty file is a clear error."""
    p = Path(path)
    data = read_capped(p, "the image list file", MAX_LIST_BYTES)
    parsed = parse_list_bytes(data, p)
    if not parsed.entries:
        raise CaffeCompatError(f"{where(p)}: list file is empty (expected lines 'path label')")
    return parsed
