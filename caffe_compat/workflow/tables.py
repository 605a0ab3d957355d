"""CSV manifests and plain-text count tables written by the workflow steps.

Every step reports counts as a small fixed-width table (printed by the CLI, returned by the
library) and hands its rows to the next step as a UTF-8 CSV manifest written atomically.

CSV is read strictly: one stray ``"`` opens a quoted cell that swallows every later row into
one cell, which a lenient reader returns as a short, valid-looking table. Bad quoting, a cell
that spans lines looking like rows of their own, and (in manifests) a row with another number
of cells than the header are errors naming the line; files are size-checked before reading.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.errors import CaffeCompatError, where

#: The largest sheet or manifest read (parsed rows take several times the file's size in memory).
MAX_TABLE_BYTES = 128 << 20


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


def read_table_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a sheet or manifest, refused before reading if it is too big to parse."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_TABLE_BYTES:
                raise CaffeCompatError(f"{path}: {size / 2**20:,.0f} MiB is too big for a table "
                                       f"(at most {MAX_TABLE_BYTES >> 20} MiB)")
            return handle.read()
    except FileNotFoundError:
        raise CaffeCompatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaffeCompatError(f"{path}: is a folder, not a table") from None
    except OSError as exc:
        raise CaffeCompatError(f"{path}: cannot read: {exc.strerror}") from None


def parse_delimited(text: str, delimiter: str, path: str | os.PathLike[str]) -> list[tuple[int, list[str]]]:
    """``(line the row starts on, cells)`` for every row of CSV/TSV ``text``, strictly (see the
    module docstring); errors name the line the bad row starts on."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for cells in reader:
            rows.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as exc:
        span = f" (noticed on line {reader.line_num})" if reader.line_num > start else ""
        raise CaffeCompatError(f"{where(path, start)}: malformed row: {exc}{span}; a stray '\"' in a cell? "
                               "(quote a cell with '\"' in it and double its quotes)") from None
    width = max((len(cells) for _, cells in rows[:5]), default=0)
    for line, cells in rows:
        for cell in cells:
            lines = cell.splitlines()
            if width >= 3 and any(part.count(delimiter) >= width - 1 for part in lines[1:]):
                raise CaffeCompatError(
                    f"{where(path, line)}: a quoted cell starting here spans {len(lines)} lines that look like "
                    "rows of their own (a stray '\"' in a cell?)")
    return rows


def read_csv(path: str | os.PathLike[str], required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a manifest CSV; a missing file or column, or a malformed row, is a one-line
    :class:`CaffeCompatError` naming the line."""
    path = Path(path)
    try:
        text = read_table_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaffeCompatError(f"{path}: cannot read as UTF-8 CSV ({exc})") from None
    rows = parse_delimited(text, ",", path)
    header = rows[0][1] if rows else []
    missing = [c for c in required if c not in header]
    if missing:
        found = ", ".join(header) or "nothing"
        raise CaffeCompatError(f"{path}:1: missing column(s) {', '.join(missing)} (found {found})")
    records = []
    for line, cells in rows[1:]:
        if not any(cells):
            continue  # a blank line
        if len(cells) != len(header):
            raise CaffeCompatError(f"{where(path, line)}: {len(cells)} cells, the header has {len(header)} "
                                   "(an unquoted ',' in a cell?)")
        records.append(dict(zip(header, cells)))
    return records
