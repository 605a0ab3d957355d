"""Step 1: clean the annotation sheet (video URL, human score 60..99, gender, age, remark).

The legacy sheet was filled in by people, so rows are dropped for the reasons the
annotators wrote in the remark column (deleted video, no face, several people, ...) or
because the score is "-" or unusable. Every dropped row is counted under its reason so the
team can see what the data set lost, and unusable scores are reported by row number so the
sheet can be fixed. Sheets may be CSV, TSV or XLSX (read with the standard library: an
.xlsx file is a zip of XML parts), with the original Chinese headers or English ones.

Nothing is lost silently: CSV quoting is strict (:func:`~caffe_compat.workflow.tables.parse_delimited`),
a row with more filled cells than the header is dropped with a note naming it (an unquoted
comma would shift its remark), and an .xlsx is read within Excel's limits (columns up to XFD,
parts whose unpacked size is checked before unpacking, rows streamed from the XML).
"""

from __future__ import annotations

import os
import posixpath
import re
import unicodedata
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence
from xml.etree import ElementTree

from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.workflow.media import unique_video_ids
from caffe_compat.workflow.tables import format_table, parse_delimited, read_table_bytes, write_csv

# Remarks that mark a row as unusable, in the annotators' words (a remark containing one drops the row).
DEFAULT_EXCLUDED_REMARKS = ("已删除", "未露脸", "多人出镜", "人脸不全", "疑似非本人作品")
# Score cells meaning "not scored".
DEFAULT_MISSING_SCORES = ("-",)
SCORE_MIN, SCORE_MAX = 60, 99

# Canonical column -> accepted headers (compared after NFKC folding, lower case, no spaces).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "url": ("视频链接", "链接", "视频地址", "地址", "url", "video_url", "video url", "link", "video"),
    "score": ("人工评价颜值", "颜值", "评分", "score", "beauty_score", "rating"),
    "gender": ("人工识别性别", "性别", "gender", "sex"),
    "age": ("人工推测年龄（数字）", "人工推测年龄", "年龄", "age"),
    "remark": ("备注", "remark", "remarks", "note", "notes", "comment"),
}
REQUIRED_COLUMNS = ("url", "score")
_HEADER_SEARCH_ROWS = 5
CLEAN_FIELDS = ("row", "video_id", "url", "score", "gender", "age", "remark")

REASON_MISSING_SCORE = "not scored ('-')"
REASON_NO_URL = "no url"
REASON_NOT_NUMERIC = "score not numeric"
REASON_OUT_OF_RANGE = "score out of range"
REASON_DUPLICATE = "duplicate url"
REASON_MALFORMED = "malformed row"

# Excel's own limits: columns A..XFD, rows 1..1048576; and what we unpack of an .xlsx part.
MAX_COLUMNS, MAX_ROWS = 16384, 1048576
MAX_XLSX_PART_BYTES = 128 << 20
_CELL_REF = re.compile(r"([A-Za-z]{1,3})([0-9]{1,7})")


@dataclass(frozen=True)
class CleanOptions:
    """What counts as a noisy row. ``strict`` turns an unusable score into an error."""

    excluded_remarks: Sequence[str] = DEFAULT_EXCLUDED_REMARKS
    missing_scores: Sequence[str] = DEFAULT_MISSING_SCORES
    score_min: int = SCORE_MIN
    score_max: int = SCORE_MAX
    strict: bool = False
    sheet: str | None = None  # xlsx worksheet name; the first sheet when None


@dataclass
class CleanResult:
    """Kept rows (dicts with :data:`CLEAN_FIELDS`), drops per reason and per-row messages."""

    rows: list[dict[str, str]]
    total: int
    excluded: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def table(self) -> str:
        """Per-reason count table: every reason, the rows kept and the rows read."""
        body = [(reason, n) for reason, n in self.excluded.most_common()]
        body += [("kept", len(self.rows)), ("total rows", self.total)]
        return format_table(("reason", "rows"), body)


def read_sheet(path: str | os.PathLike[str], sheet: str | None = None) -> list[tuple[int, list[str]]]:
    """The rows of a CSV/TSV/XLSX sheet as ``(row number, cells)``, numbered as a spreadsheet shows them."""
    path = Path(path)
    if not path.is_file():
        raise CaffeCompatError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        return _read_xlsx(path, sheet)
    if suffix in (".csv", ".tsv", ".txt"):
        return _read_delimited(path, "\t" if suffix != ".csv" else ",")
    raise CaffeCompatError(f"{path}: unsupported sheet type {suffix!r} (use .csv, .tsv or .xlsx)")


def _read_delimited(path: Path, delimiter: str) -> list[tuple[int, list[str]]]:
    raw = read_table_bytes(path)
    # Chinese Excel exports CSV in GB18030 (GBK) unless told otherwise.
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise CaffeCompatError(f"{path}: neither UTF-8 nor GB18030 text")
    return parse_delimited(text, delimiter, path)


_RELS_NS = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"


def _read_xlsx(path: Path, sheet: str | None) -> list[tuple[int, list[str]]]:
    try:
        with zipfile.ZipFile(path) as zf:
            target = _xlsx_sheet_part(zf, path, sheet)
            strings = _xlsx_shared_strings(zf, path)
            with _xlsx_part(zf, target, path) as part:
                return _xlsx_rows(part, strings, path)
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, EOFError, zlib.error,
            NotImplementedError, RuntimeError) as exc:
        raise CaffeCompatError(f"{path}: not a readable .xlsx workbook ({exc})") from None


def _xlsx_part(zf: zipfile.ZipFile, name: str, path: Path) -> IO[bytes]:
    """An open part of the workbook, refused if it unpacks to more than we read (a zip bomb
    claims a small size, but zipfile stops at the claimed size and fails its CRC check)."""
    size = zf.getinfo(name).file_size
    if size > MAX_XLSX_PART_BYTES:
        raise CaffeCompatError(f"{path}: part {name} unpacks to {size / 2**20:,.0f} MiB "
                               f"(at most {MAX_XLSX_PART_BYTES >> 20} MiB)")
    return zf.open(name)


def _xlsx_rows(part: IO[bytes], strings: list[str], path: Path) -> list[tuple[int, list[str]]]:
    """The worksheet's rows, streamed: each row element is dropped once read."""
    rows = []
    next_row = 1
    for _, row in ElementTree.iterparse(part):
        if row.tag.rsplit("}", 1)[-1] != "row":
            continue
        number = _bounded_int(row.get("r"), next_row, MAX_ROWS, path, "row number")
        next_row = number + 1
        cells: list[str] = []
        for cell in row.iterfind("{*}c"):
            ref = cell.get("r")
            col = _column_index(ref, path) if ref else len(cells)
            if col >= MAX_COLUMNS:
                raise CaffeCompatError(f"{where(path, number)}: more than {MAX_COLUMNS} cells in a row")
            cells.extend([""] * (col + 1 - len(cells)))
            cells[col] = _xlsx_cell_text(cell, strings, path, ref or f"row {number}")
        rows.append((number, cells))
        row.clear()
    return rows


def _bounded_int(text: str | None, default: int, limit: int, path: Path, what: str) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= limit:
        raise CaffeCompatError(f"{path}: {what} {text[:20]!r} is not a number from 1 to {limit}")
    return int(text)


def _xlsx_sheet_part(zf: zipfile.ZipFile, path: Path, sheet: str | None) -> str:
    """Zip member of the named (or first) worksheet, found through the workbook's relationships."""
    with _xlsx_part(zf, "xl/workbook.xml", path) as part:
        workbook = ElementTree.parse(part).getroot()
    sheets = list(workbook.iterfind(".//{*}sheet"))
    if not sheets:
        raise CaffeCompatError(f"{path}: workbook has no worksheet")
    chosen = sheets[0] if sheet is None else next((s for s in sheets if s.get("name") == sheet), None)
    if chosen is None:
        names = ", ".join(s.get("name", "?") for s in sheets)
        raise CaffeCompatError(f"{path}: no worksheet named {sheet!r} (has {names})")
    with _xlsx_part(zf, "xl/_rels/workbook.xml.rels", path) as part:
        rels = ElementTree.parse(part).getroot()
    target = next((r.get("Target", "") for r in rels.iterfind(".//{*}Relationship") if r.get("Id") == chosen.get(_RELS_NS)), "")
    if not target:
        raise CaffeCompatError(f"{path}: worksheet {chosen.get('name')!r} has no part in the workbook")
    return target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join("xl", target))


def _xlsx_shared_strings(zf: zipfile.ZipFile, path: Path) -> list[str]:
    if "xl/sharedStrings.xml" not in zf.namelist():
        return []
    strings = []
    with _xlsx_part(zf, "xl/sharedStrings.xml", path) as part:
        for _, node in ElementTree.iterparse(part):
            if node.tag.rsplit("}", 1)[-1] == "si":
                strings.append(_rich_text(node))
                node.clear()
    return strings


def _rich_text(node: ElementTree.Element) -> str:
    """Text of a string item: its own <t> or its runs' <t>, without phonetic (rPh) hints."""
    parts = []
    for child in node:
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "t":
            parts.append(child.text or "")
        elif tag == "r":
            parts.extend(t.text or "" for t in child.iterfind(".//{*}t"))
    return "".join(parts)


def _xlsx_cell_text(cell: ElementTree.Element, strings: list[str], path: Path, ref: str) -> str:
    kind = cell.get("t", "n")
    if kind == "inlineStr":
        inline = cell.find("{*}is")
        return _rich_text(inline) if inline is not None else ""
    value = cell.find("{*}v")
    text = value.text if value is not None and value.text is not None else ""
    if kind == "s" and text:
        if not text.isdigit() or int(text) >= len(strings):
            raise CaffeCompatError(f"{path}: cell {ref}: shared string {text[:20]!r} is not one of the "
                                   f"workbook's {len(strings)}")
        return strings[int(text)]
    if kind == "b":
        return "TRUE" if text == "1" else "FALSE"
    if kind == "n" and text:
        try:
            number = float(text)
        except ValueError:
            raise CaffeCompatError(f"{path}: cell {ref}: {text[:20]!r} is marked as a number but is not one") from None
        return str(int(number)) if number.is_integer() else text
    return text


def _column_index(ref: str, path: Path) -> int:
    """0-based column of a cell reference such as ``AB12`` (Excel's columns end at XFD)."""
    match = _CELL_REF.fullmatch(ref)
    if match is None:
        raise CaffeCompatError(f"{path}: cell reference {ref[:20]!r} is not a column and a row such as 'B7'")
    index = 0
    for ch in match.group(1).upper():
        index = index * 26 + (ord(ch) - ord("A") + 1)
    if index > MAX_COLUMNS:
        raise CaffeCompatError(f"{path}: cell {ref}: past Excel's last column XFD")
    return index - 1


def _fold(text: str) -> str:
    """Header/cell comparison form: full-width to ASCII (NFKC), lower case, no spaces."""
    return "".join(unicodedata.normalize("NFKC", text).lower().split())


def match_columns(header: Sequence[str]) -> dict[str, int]:
    """Canonical column name -> index in ``header`` for every column it names."""
    folded = [_fold(h) for h in header]
    found: dict[str, int] = {}
    for name, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if _fold(alias) in folded:
                found[name] = folded.index(_fold(alias))
                break
    return found


def _find_header(rows: list[tuple[int, list[str]]], path: str | os.PathLike[str]) -> tuple[int, dict[str, int]]:
    """Index of the header row and its columns. The header is the first of the first few rows
    naming every required column, so a title row above the table is allowed."""
    for i, (_, cells) in enumerate(rows[:_HEADER_SEARCH_ROWS]):
        found = match_columns(cells)
        if all(c in found for c in REQUIRED_COLUMNS):
            return i, found
    number, header = rows[0]
    missing = [c for c in REQUIRED_COLUMNS if c not in match_columns(header)]
    wanted = "; ".join(f"{c} (one of {', '.join(COLUMN_ALIASES[c])})" for c in missing)
    present = ", ".join(h for h in header if h.strip()) or "nothing"
    raise CaffeCompatError(f"{where(path, number)}: missing column(s): {wanted}; header has {present}")


def clean_annotations(
    sheet: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    options: CleanOptions = CleanOptions(),
) -> CleanResult:
    """Drop noisy rows of ``sheet`` and, if ``output`` is given, write the kept rows as CSV.

    The header is the first row (of the first five) naming a URL and a score column. Each
    dropped row counts under the first reason that applies: an excluded remark, a "-" score,
    no URL, an unusable score, a repeated URL.
    """
    rows = [(n, cells) for n, cells in read_sheet(sheet, options.sheet) if any(c.strip() for c in cells)]
    if not rows:
        raise CaffeCompatError(f"{sheet}: the sheet is empty")
    start, columns = _find_header(rows, sheet)
    rows = rows[start:]
    missing_marks = {_fold(m) for m in options.missing_scores}
    result = CleanResult(rows=[], total=len(rows) - 1)
    seen_urls: set[str] = set()
    # a CSV/TSV row with filled cells past the header's was split by an unquoted delimiter
    width = len(rows[0][1]) if Path(sheet).suffix.lower() in (".csv", ".tsv", ".txt") else None
    for number, cells in rows[1:]:
        record = {name: (cells[i].strip() if i < len(cells) else "") for name, i in columns.items()}
        reason, message = _exclusion(record, options, missing_marks, seen_urls)
        if width is not None and any(c.strip() for c in cells[width:]):
            reason, message = REASON_MALFORMED, (f"{len(cells)} cells but the header has {width} (an unquoted "
                                                 "',' in a cell?): row dropped")
        if reason is not None:
            result.excluded[reason] += 1
            if message:
                text = f"{where(sheet, number)}: {message}"
                if options.strict:
                    raise CaffeCompatError(text)
                result.messages.append(text)
            continue
        seen_urls.add(record["url"])
        record["score"] = str(int(float(unicodedata.normalize("NFKC", record["score"]))))
        result.rows.append({"row": str(number), **{k: record.get(k, "") for k in ("url", "score", "gender", "age", "remark")}})
    for row, vid in zip(result.rows, unique_video_ids([r["url"] for r in result.rows])):
        row["video_id"] = vid
    if output is not None:
        write_csv(output, CLEAN_FIELDS, result.rows)
    return result


def _exclusion(
    record: dict[str, str], options: CleanOptions, missing_marks: set[str], seen_urls: set[str]
) -> tuple[str | None, str]:
    """(reason, message) for a row to drop, ``(None, "")`` to keep it; messages name bad scores."""
    remark = record.get("remark", "")
    for phrase in options.excluded_remarks:
        if phrase and phrase in remark:
            return phrase, ""
    score = record["score"]
    if _fold(score) in missing_marks:
        return REASON_MISSING_SCORE, ""
    if not record["url"]:
        return REASON_NO_URL, ""
    try:
        value = float(unicodedata.normalize("NFKC", score))
    except ValueError:
        return REASON_NOT_NUMERIC, f"score {score!r} is not a number"
    if not value.is_integer():
        return REASON_NOT_NUMERIC, f"score {score!r} is not a whole number"
    if not options.score_min <= value <= options.score_max:
        return REASON_OUT_OF_RANGE, f"score {score} is outside {options.score_min}..{options.score_max}"
    if record["url"] in seen_urls:
        return REASON_DUPLICATE, ""
    return None, ""
