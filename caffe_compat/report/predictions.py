"""One row per scored sample, decoded the way the legacy report reads the net, and its CSV form.

WHY a separate table: the report is rendered from this table alone, whether it comes from a
``caffe test`` run, from ONNX Runtime on a source, or from a ``predictions.csv`` written
earlier; so re-rendering never re-runs the net and every path gives the same numbers.

Three kinds of net:

- **score** nets (40 classes 60..99, or any ``--labels`` with numeric values): the prediction
  is the expectation Σ_k p_k·value_k (a net unsure between 72 and 74 predicts 73) or the
  value of the argmax class (``--decode``);
- **regression** nets (one output per sample, e.g. SCUT-FBP5500's 1..5 score): the output
  itself, against ``label × label_scale``;
- **classification** nets (any other class count, or ``--labels`` with names): argmax and
  top-5, never a score axis.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.io.inputs import read_capped
from caffe_compat.data.scores import SCORE_CLASSES, SCORE_MIN

TOP_K = 5
DECODES = ("expectation", "argmax", "both")
MODES = ("score", "regression", "classification")


@dataclass(frozen=True)
class LabelMap:
    """What each class index means: a numeric value (score nets) or a name."""

    values: tuple[float, ...] | None = None
    names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.values if self.values is not None else self.names or ())

    def show(self, k: int) -> str:
        """Class ``k`` as a person reads it (the score, the name, or the index)."""
        if self.values is not None and 0 <= k < len(self.values):
            return _show_number(self.values[k])
        if self.names is not None and 0 <= k < len(self.names):
            return self.names[k]
        return str(k)


_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*:\s*(-?\d+(?:\.\d+)?)\s*$")


def parse_labels(spec: str | None, num_classes: int | None) -> LabelMap | None:
    """``--labels``: ``LO:HI`` (one class per step of 1, e.g. 60:99) or a label-map file with one
    class per line (all numbers: a score net; otherwise names, e.g. a synset_words.txt).

    None when not given; the class count must match the net's (``num_classes`` None: any)."""
    if spec is None:
        return None
    match = _RANGE.match(spec)
    if match:
        lo, hi = float(match.group(1)), float(match.group(2))
        if hi < lo or (hi - lo) != int(hi - lo):
            raise CaffeCompatError(f"--labels {spec}: expected LO:HI with HI >= LO a whole number of steps apart")
        label_map = LabelMap(values=tuple(lo + k for k in range(int(hi - lo) + 1)))
    else:
        path = Path(spec)
        if not path.is_file():
            raise CaffeCompatError(f"--labels {spec}: neither LO:HI (e.g. 60:99) nor an existing label-map file")
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise CaffeCompatError(f"{where(path)}: cannot read the label map: {exc}") from None
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            raise CaffeCompatError(f"{where(path)}: the label map is empty")
        blank = next((i for i, line in enumerate(lines, 1) if not line), None)
        if blank is not None:
            raise CaffeCompatError(f"{where(path, blank)}: empty line in the label map (one class per line)")
        numbers = [_number(line) for line in lines]
        label_map = (LabelMap(values=tuple(numbers)) if all(n is not None for n in numbers)  # type: ignore[arg-type]
                     else LabelMap(names=tuple(lines)))
    if num_classes is not None and len(label_map) != num_classes:
        raise CaffeCompatError(f"--labels {spec} gives {len(label_map)} classes but the net's output has {num_classes}")
    return label_map


def default_labels(num_classes: int) -> LabelMap | None:
    """The face-score nets' 60..99 for 40 classes; None (plain classification) otherwise."""
    if num_classes == SCORE_CLASSES:
        return LabelMap(values=tuple(float(SCORE_MIN + k) for k in range(SCORE_CLASSES)))
    return None


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _show_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Predictions:
    """The scored samples, in source order.

    ``index``: the record's position in its source (LMDB key order or list-file line order).
    ``label``: the source's label (class index; the raw label for regression). ``truth``:
    the ground truth as a value (score or regression; the class index for classification).
    ``prediction``: the decoded prediction (expectation or argmax value; the output for
    regression; the argmax class for classification).
    """

    mode: str
    keys: tuple[str, ...]
    index: np.ndarray
    label: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    expectation: np.ndarray | None = None
    argmax: np.ndarray | None = None  # class index
    topk: np.ndarray | None = None  # (N, k) class indices, most probable first
    topk_prob: np.ndarray | None = None
    label_map: LabelMap | None = None
    decode: str = "expectation"
    flags: tuple[tuple[str, ...], ...] | None = None  # None: not computed

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def errors(self) -> np.ndarray:
        """prediction − truth (score and regression modes)."""
        return self.prediction - self.truth

    def argmax_values(self) -> np.ndarray:
        """The argmax class as a value (score nets)."""
        assert self.argmax is not None and self.label_map is not None and self.label_map.values is not None
        return np.asarray(self.label_map.values, np.float64)[self.argmax]

    def with_flags(self, flags: Sequence[Sequence[str]] | None) -> "Predictions":
        if flags is not None and len(flags) != len(self):
            raise ValueError(f"{len(flags)} flag sets for {len(self)} samples")
        return replace(self, flags=None if flags is None else tuple(tuple(f) for f in flags))

    def show_class(self, k: int) -> str:
        return self.label_map.show(int(k)) if self.label_map is not None else str(int(k))


def _check_rows(n_out: int, labels: np.ndarray, keys: Sequence[str], index: np.ndarray) -> None:
    if n_out == 0:
        raise CaffeCompatError("report: no samples to score (the test source is empty)")
    if not (n_out == len(labels) == len(keys) == len(index)):
        raise CaffeCompatError(f"report: {n_out} outputs for {len(labels)} labels and {len(keys)} keys")


def from_probabilities(prob: np.ndarray, labels: np.ndarray, keys: Sequence[str], index: np.ndarray,
                       label_map: LabelMap | None, decode: str = "expectation") -> Predictions:
    """Score or classification rows from an (N, K) probability matrix and the class labels."""
    if decode not in DECODES:
        raise CaffeCompatError(f"--decode {decode}: choose from {', '.join(DECODES)}")
    prob = np.asarray(prob, np.float64).reshape(len(prob), -1)
    labels = np.asarray(labels).reshape(-1)
    index = np.asarray(index, np.int64).reshape(-1)
    _check_rows(len(prob), labels, keys, index)
    num_classes = prob.shape[1]
    if label_map is not None and len(label_map) != num_classes:
        raise CaffeCompatError(f"--labels gives {len(label_map)} classes but the net's output has {num_classes}")
    bad = np.flatnonzero((labels != np.round(labels)) | (labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise CaffeCompatError(
            f"record '{keys[i]}': label {labels[i]:g} is not a class index 0..{num_classes - 1} of the "
            f"{num_classes}-class output ({len(bad)} such labels; a regression net needs one output per sample)")
    labels = labels.astype(np.int64)
    order = np.argsort(-prob, axis=1, kind="stable")[:, :TOP_K]
    top_prob = np.take_along_axis(prob, order, axis=1)
    argmax = order[:, 0]
    if label_map is not None and label_map.values is not None:
        values = np.asarray(label_map.values, np.float64)
        expectation = prob @ values
        prediction = values[argmax] if decode == "argmax" else expectation
        return Predictions("score", tuple(keys), index, labels, values[labels], prediction, expectation, argmax,
                           order, top_prob, label_map, decode)
    return Predictions("classification", tuple(keys), index, labels, labels.astype(np.float64),
                       argmax.astype(np.float64), None, argmax, order, top_prob, label_map, decode)


def from_regression(values: np.ndarray, labels: np.ndarray, keys: Sequence[str], index: np.ndarray,
                    label_scale: float = 1.0) -> Predictions:
    """Regression rows: one output per sample against ``label × label_scale``."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    labels = np.asarray(labels, np.float64).reshape(-1)
    index = np.asarray(index, np.int64).reshape(-1)
    _check_rows(len(values), labels, keys, index)
    if values.shape[1] != 1:
        raise CaffeCompatError(f"regression needs one output per sample, got {values.shape[1]}")
    truth = np.array([float(f"{t:.12g}") for t in labels * float(label_scale)])  # 2.8, not 2.8000000000000003
    return Predictions("regression", tuple(keys), index, labels, truth, values[:, 0], decode="value")


# --------------------------------------------------------------------------- predictions.csv

_BASE = ("index", "key", "label", "ground_truth")
_MODE_COLUMNS = {"score": ("expectation", "argmax", "prediction"), "regression": ("prediction",),
                 "classification": ("argmax",)}


def _topk_columns(k: int) -> tuple[str, ...]:
    return tuple(c for i in range(1, k + 1) for c in (f"top{i}_class", f"top{i}_prob"))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def sheet_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula (``=``, ``+``, ``-``,
    ``@``, tab, CR, as OWASP lists) gets a leading ``'``; so does one starting with ``'`` itself,
    so :func:`unsheet_cell` gives every text back unchanged."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def unsheet_cell(text: str) -> str:
    """The text :func:`sheet_cell` was given."""
    return text[1:] if text.startswith("'") else text


def _csv_line(cells: Sequence[str]) -> str:
    """One CSV line ending in LF. The writer is given CRLF so that it quotes a cell holding a lone
    CR as well as one holding LF (with LF alone it leaves CR bare, which splits the row on reading)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(cells)
    return buf.getvalue()[:-2] + "\n"


def to_csv(pred: Predictions) -> str:
    """``predictions.csv``: one row per sample; floats in full precision (``repr``), so a report
    re-rendered from the CSV has the same numbers."""
    buf = io.StringIO()
    k = pred.topk.shape[1] if pred.topk is not None else 0
    buf.write(_csv_line([*_BASE, *_MODE_COLUMNS[pred.mode], *_topk_columns(k), "flags"]))
    for i in range(len(pred)):
        label = repr(float(pred.label[i])) if pred.mode == "regression" else str(int(pred.label[i]))
        truth = sheet_cell(pred.show_class(pred.label[i])) if pred.mode == "classification" else repr(float(pred.truth[i]))
        row = [str(int(pred.index[i])), sheet_cell(pred.keys[i]), label, truth]
        if pred.mode == "score":
            row += [repr(float(pred.expectation[i])), _show_number(pred.argmax_values()[i]),
                    repr(float(pred.prediction[i]))]
        elif pred.mode == "regression":
            row += [repr(float(pred.prediction[i]))]
        else:
            row += [sheet_cell(pred.show_class(pred.argmax[i]))]
        for j in range(k):
            row += [str(int(pred.topk[i, j])), repr(float(pred.topk_prob[i, j]))]
        row.append("" if pred.flags is None else sheet_cell(";".join(pred.flags[i])))
        buf.write(_csv_line(row))
    return buf.getvalue()


def read_csv(path: str | os.PathLike[str], decode: str | None = None,
             label_map: LabelMap | None = None) -> Predictions:
    """A ``predictions.csv`` back into :class:`Predictions` (mode from its columns).

    Needs ``key``, ``ground_truth`` and ``prediction`` (regression), ``expectation`` +
    ``argmax`` (score) or ``argmax`` + ``label`` (classification); ``index``, top-k and
    ``flags`` are used when present.
    """
    path = Path(path)
    raw = read_capped(path, "the predictions CSV", MAX_CSV_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CaffeCompatError(f"{where(path)}: not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)  # csv's own field cap (128 KiB) stops a field that runs on and on
    except csv.Error as exc:
        raise CaffeCompatError(f"{where(path, reader.line_num)}: {exc}") from None
    if not rows:
        raise CaffeCompatError(f"{where(path)}: empty file (expected a header line)")
    header, body = rows[0], [r for r in rows[1:] if r]
    column = {name: i for i, name in enumerate(header)}
    mode = ("score" if "expectation" in column else "regression" if "prediction" in column
            else "classification" if "argmax" in column else None)
    required = {"score": ("key", "label", "ground_truth", "expectation", "argmax"),
                "regression": ("key", "ground_truth", "prediction"),
                "classification": ("key", "label", "argmax")}.get(mode or "", ("key", "ground_truth"))
    missing = [c for c in required if c not in column]
    if mode is None or missing:
        need = ", ".join(missing) if missing else "'prediction', 'expectation' or 'argmax'"
        raise CaffeCompatError(f"{where(path)}:1: missing column(s) {need} (has: {', '.join(header)})")
    if not body:
        raise CaffeCompatError(f"{where(path)}: no rows after the header")

    def cells(name: str, parse=float) -> list:
        out = []
        for line_no, row in enumerate(rows[1:], 2):
            if not row:
                continue
            if len(row) != len(header):
                raise CaffeCompatError(f"{where(path, line_no)}: {len(row)} fields, the header has {len(header)}")
            try:
                out.append(parse(row[column[name]]))
            except ValueError as exc:
                why = f" ({exc.args[0]})" if exc.args and parse in _RANGED else ""
                raise CaffeCompatError(f"{where(path, line_no)}: column '{name}': bad value "
                                       f"{row[column[name]][:40]!r}{why}") from None
        return out

    keys = tuple(cells("key", unsheet_cell))
    index = np.asarray(cells("index", _index) if "index" in column else range(len(keys)), np.int64)
    flags = (tuple(tuple(f for f in s.split(";") if f) for s in cells("flags", unsheet_cell)) if "flags" in column else None)
    k = 0
    while f"top{k + 1}_class" in column and f"top{k + 1}_prob" in column:
        k += 1
    topk = np.asarray([cells(f"top{j}_class", _class) for j in range(1, k + 1)], np.int64).T.reshape(len(keys), k) if k else None
    topk_prob = (np.asarray([cells(f"top{j}_prob", _finite) for j in range(1, k + 1)], np.float64).T.reshape(len(keys), k)
                 if k else None)
    if mode == "regression":
        labels = np.asarray(cells("label", _finite) if "label" in column else cells("ground_truth", _finite), np.float64)
        return Predictions("regression", keys, index, labels, np.asarray(cells("ground_truth", _finite)),
                           np.asarray(cells("prediction", _finite)), decode="value", flags=flags)
    labels = np.asarray(cells("label", _class), np.int64)
    if mode == "score":
        truth = np.asarray(cells("ground_truth", _finite))
        argmax_value = np.asarray(cells("argmax", _finite))
        expectation = np.asarray(cells("expectation", _finite))
        label_map = label_map or _values_from_rows(labels, truth, topk)
        if label_map.values is None or len(label_map) <= max(int(labels.max()), int(topk.max()) if k else 0):
            raise CaffeCompatError(f"--labels gives {len(label_map)} classes, fewer than {path.name} uses")
        values = np.asarray(label_map.values)
        argmax = topk[:, 0] if k else np.searchsorted(values, argmax_value)
        decode = decode or "expectation"
        prediction = argmax_value if decode == "argmax" else expectation
        return Predictions("score", keys, index, labels, truth, prediction, expectation, argmax, topk, topk_prob,
                           label_map, decode, flags)
    argmax_text = cells("argmax", unsheet_cell)
    argmax = topk[:, 0] if k else np.asarray(cells("argmax", _class), np.int64)
    if label_map is None:  # class names: from the ground truth and argmax columns where they are not indices
        known = dict(zip(argmax.tolist(), argmax_text))
        if "ground_truth" in column:
            known.update(zip(labels.tolist(), cells("ground_truth", unsheet_cell)))
        size = max([*known, *(topk.reshape(-1).tolist() if k else [])]) + 1
        if any(known.get(c, str(c)) != str(c) for c in range(size)):
            label_map = LabelMap(names=tuple(known.get(c, str(c)) for c in range(size)))
    return Predictions("classification", keys, index, labels, labels.astype(np.float64), argmax.astype(np.float64),
                       None, argmax, topk, topk_prob, label_map, "argmax", flags)


MAX_CSV_BYTES = 1 << 30  # a predictions.csv of a million samples is about 200 MB
MAX_CLASSES = 1 << 20  # class indices in a CSV; the report builds a table of this many classes


def _index(text: str) -> int:
    value = int(text)
    if not 0 <= value < 1 << 63:
        raise ValueError("a record index is 0 .. 2^63-1")
    return value


def _class(text: str) -> int:
    value = int(text)
    if not 0 <= value < MAX_CLASSES:
        raise ValueError(f"a class index is 0 .. {MAX_CLASSES - 1:,}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


_RANGED = (_index, _class, _finite)


def _values_from_rows(labels: np.ndarray, truth: np.ndarray, topk: np.ndarray | None) -> LabelMap:
    """Class values of a score CSV when ``--labels`` is not given: value = label + offset, the
    offset the rows share (60 for the face-score nets); a clear error otherwise."""
    offsets = np.unique(truth - labels)
    if len(offsets) != 1:
        raise CaffeCompatError("the CSV's ground_truth is not label + a constant offset: pass --labels")
    size = max(int(labels.max()), int(topk.max()) if topk is not None and topk.size else 0) + 1
    size = max(size, SCORE_CLASSES if offsets[0] == SCORE_MIN else 0)
    return LabelMap(values=tuple(float(offsets[0] + c) for c in range(size)))
