"""The report's numbers, from a :class:`~caffe_compat.report.predictions.Predictions` table.

Score and regression nets are judged as regressors (the team's questions: how many points off,
how often exactly right, how often within k points); classification nets by accuracy. Every
number is a plain function of the table, so a report re-rendered from ``predictions.csv``
equals the one written by the run.

The *unit* of a score net is one point (classes 60..99). A regression net gets the power of ten
one tenth of its ground-truth range (0.1 for a 1..5 score), so "exact", "within k" and the
per-class rows read the same way at any scale.
"""

from __future__ import annotations

import math

import numpy as np

from caffe_compat.report.predictions import Predictions

WITHIN_K = tuple(range(1, 11))
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


def unit_of(pred: Predictions) -> float:
    """One point of a score net; for regression 10^floor(log10(range)) / 10 of the ground truth."""
    if pred.mode != "regression":
        return 1.0
    span = float(np.ptp(pred.truth)) if len(pred) else 0.0
    return 10.0 ** math.floor(math.log10(span)) / 10 if span > 0 else 1.0


def unit_name(mode: str) -> str:
    """What the report's errors and thresholds are counted in: a score net's points, or the
    regression ground truth's own units (label × label scale)."""
    return "score points" if mode == "score" else "label units"


def show_amount(value: float) -> str:
    """A threshold in the label's units without float noise (0.30000000000000004 -> 0.3)."""
    return f"{round(value, 10):g}"


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's r; None when either side is constant (standard JSON has no NaN)."""
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def in_units(values: np.ndarray, unit: float) -> np.ndarray:
    """Values rounded to whole units (the score "classes" of a regression net)."""
    return np.rint(np.asarray(values, np.float64) / unit).astype(np.int64)


def value_metrics(truth: np.ndarray, prediction: np.ndarray, unit: float) -> dict:
    """MAE, RMSE, Pearson, bias, exact and within-k rates of one decoding (rates in [0, 1])."""
    err = prediction - truth
    abs_err = np.abs(err)
    return {
        "samples": int(len(truth)),
        "mae": float(abs_err.mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "pearson": pearson(prediction, truth),
        "bias": float(err.mean()),
        "exact_rate": float((in_units(prediction, unit) == in_units(truth, unit)).mean()),
        "within": {str(k): float((abs_err <= k * unit).mean()) for k in WITHIN_K},
        "mean_truth": float(truth.mean()),
        "mae_predict_mean": float(np.abs(truth - truth.mean()).mean()),  # baseline: always the mean
    }


def per_class(truth: np.ndarray, prediction: np.ndarray, unit: float) -> list[dict]:
    """Per ground-truth class (score, or regression truth rounded to the unit): count, MAE, bias."""
    cls = in_units(truth, unit)
    err = prediction - truth
    rows = []
    for c in np.unique(cls):
        mask = cls == c
        rows.append({"class": _value(c * unit), "count": int(mask.sum()), "mae": float(np.abs(err[mask]).mean()),
                     "bias": float(err[mask].mean())})
    return rows


def value_confusion(truth: np.ndarray, prediction: np.ndarray, unit: float) -> dict:
    """Ground truth (rows) against the rounded prediction (columns) over the range both span."""
    t, p = in_units(truth, unit), in_units(prediction, unit)
    lo, hi = int(min(t.min(), p.min())), int(max(t.max(), p.max()))
    matrix = np.zeros((hi - lo + 1, hi - lo + 1), np.int64)
    np.add.at(matrix, (t - lo, p - lo), 1)
    return {"axis": [_value(v * unit) for v in range(lo, hi + 1)], "matrix": matrix.tolist()}


def percentile_table(truth: np.ndarray, prediction: np.ndarray) -> list[dict]:
    """"A score of S is better than X% of the set": the ground-truth and predicted scores at
    each percentile, and the share of the set strictly below each."""
    rows = []
    for q in PERCENTILES:
        t, p = float(np.percentile(truth, q)), float(np.percentile(prediction, q))
        rows.append({"percentile": q, "truth": t, "prediction": p,
                     "truth_better_than": float((truth < t).mean()), "prediction_better_than": float((prediction < p).mean())})
    return rows


def classification_metrics(pred: Predictions) -> dict:
    """Accuracy, top-5, per-class precision / recall / count and the confusion matrix."""
    labels = pred.label.astype(np.int64)
    argmax = pred.argmax.astype(np.int64)
    size = int(max(labels.max(), argmax.max(), pred.topk.max() if pred.topk is not None else 0)) + 1
    if pred.label_map is not None:
        size = max(size, len(pred.label_map))
    matrix = np.zeros((size, size), np.int64)
    np.add.at(matrix, (labels, argmax), 1)
    top5 = (pred.topk[:, :5] == labels[:, None]).any(axis=1).mean() if pred.topk is not None else None
    rows = []
    for c in range(size):
        predicted, actual, hit = int(matrix[:, c].sum()), int(matrix[c].sum()), int(matrix[c, c])
        if predicted or actual:
            rows.append({"class": pred.show_class(c), "index": c, "count": actual, "predicted": predicted,
                         "precision": hit / predicted if predicted else None,
                         "recall": hit / actual if actual else None})
    return {"samples": int(len(labels)), "accuracy": float((argmax == labels).mean()),
            "top5_accuracy": None if top5 is None else float(top5), "per_class": rows,
            "confusion": {"axis": [pred.show_class(c) for c in range(size)], "matrix": matrix.tolist()}}


def all_metrics(pred: Predictions) -> dict:
    """Everything ``report.json`` holds about the predictions."""
    if pred.mode == "classification":
        return {"mode": "classification", **classification_metrics(pred)}
    unit = unit_of(pred)
    out: dict = {"mode": pred.mode, "unit": unit, "unit_name": unit_name(pred.mode), "decode": pred.decode,
                 **value_metrics(pred.truth, pred.prediction, unit)}
    if pred.mode == "score":
        argmax_values = pred.argmax_values()
        out["top1_accuracy"] = float((pred.argmax == pred.label).mean())
        out["top5_accuracy"] = float((pred.topk[:, :5] == pred.label[:, None]).any(axis=1).mean())
        out["mae_argmax"] = float(np.abs(argmax_values - pred.truth).mean())
        if pred.decode == "both":
            out["argmax_decode"] = value_metrics(pred.truth, argmax_values, unit)
    out["per_class"] = per_class(pred.truth, pred.prediction, unit)
    out["confusion"] = value_confusion(pred.truth, pred.prediction, unit)
    out["percentiles"] = percentile_table(pred.truth, pred.prediction)
    return out


def flag_table(pred: Predictions) -> list[dict]:
    """Per quality flag: how many samples carry it and their mean error against the others'."""
    if pred.flags is None:
        return []
    names = sorted({f for flags in pred.flags for f in flags})
    wrong = _error_size(pred)
    rows = []
    for name in names:
        mask = np.array([name in flags for flags in pred.flags])
        rows.append({"flag": name, "count": int(mask.sum()), "mean_error": float(wrong[mask].mean()),
                     "mean_error_others": float(wrong[~mask].mean()) if (~mask).any() else None})
    return rows


def _error_size(pred: Predictions) -> np.ndarray:
    """Per sample: |prediction − truth| (scores, regression) or 1 − [argmax correct]."""
    if pred.mode == "classification":
        return (pred.argmax != pred.label).astype(np.float64)
    return np.abs(pred.errors)


def _value(x: float) -> float | int:
    """A class value for JSON: an int when whole (60, not 60.0)."""
    x = round(float(x), 10)
    return int(x) if x.is_integer() else x
