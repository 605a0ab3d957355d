"""CSV manifests and plain-text count tables written by the workflow steps.

Every step reports counts as a small fixed-width table (printed by the CLI, returned by the
library) and hands its rows to the next step as a UTF-8 CSV manifest written atomically.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.atomic import atomic_write_bytes


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned text columns with a rule under the header (numbers right-aligned)."""
    body = [[str(c) for c in row] for row in rows]
    widths = [max([_width(h)] + [_width(r[i]) for r in body]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in body) and bool(body) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, width, num in zip(cells, widths, numeric):
            pad = " " * (width - _width(cell))
            out.append(pad + cell if num else cell + pad)
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule] + [line(r) for r in body])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _width(text: str) -> int:
    """Display width: CJK characters take two terminal columns."""
    return sum(2 if ord(ch) >= 0x1100 and not 0xFF61 <= ord(ch) <= 0xFFDC else 1 for ch in text)


def make_folder(path: str | os.PathLike[str]) -> Path:
    """Create an output folder (and its parents); a file in the way is a clear error."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaffeCompatError(f"{folder}: cannot create output folder ({exc.strerror})") from None
    return folder


def write_csv(path: str | os.PathLike[str], fieldnames: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """Write ``rows`` as a UTF-8 CSV atomically (never a half-written manifest)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fieldnames})
    make_folder(Path(path).parent)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def read_csv(path: str | os.PathLike[str], required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a manifest CSV; a missing file or column is a one-line :class:`CaffeCompatError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CaffeCompatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaffeCompatError(f"{path}: cannot read as UTF-8 CSV ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        found = ", ".join(reader.fieldnames or []) or "nothing"
        raise CaffeCompatError(f"{path}:1: missing column(s) {', '.join(missing)} (found {found})")
    return list(reader)
