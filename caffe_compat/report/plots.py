"""The report's charts as PNG ``data:`` URIs (matplotlib figures, no pyplot state), so the HTML
page is one self-contained file."""

from __future__ import annotations

import base64
import io

import numpy as np

from caffe_compat.report.metrics import WITHIN_K, unit_of
from caffe_compat.report.predictions import Predictions

DPI = 80


def _figure(width: float = 5.6, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    return fig, fig.subplots()


def _uri(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _what(pred: Predictions) -> tuple[str, str]:
    """Axis names: ("human score", "predicted score (expectation)") and the like."""
    if pred.mode == "regression":
        return "ground truth", "prediction"
    return "human score", f"predicted score ({'argmax' if pred.decode == 'argmax' else 'expectation'})"


def value_plots(pred: Predictions, metrics: dict) -> dict[str, tuple[str, str]]:
    """Score / regression charts: {id: (title, data URI)}."""
    truth, prediction, unit = pred.truth, pred.prediction, unit_of(pred)
    true_name, pred_name = _what(pred)
    out: dict[str, tuple[str, str]] = {}

    lo = min(truth.min(), prediction.min()) - unit / 2
    hi = max(truth.max(), prediction.max()) + unit / 2
    bins = np.arange(np.floor(lo / unit) * unit, hi + unit, unit)
    if len(bins) > 61:
        bins = np.linspace(lo, hi, 61)
    fig, ax = _figure()
    ax.hist(truth, bins=bins, alpha=0.6, label=true_name)
    ax.hist(prediction, bins=bins, alpha=0.6, label=pred_name)
    ax.set(xlabel="score", ylabel="samples", title="distribution of ground truth and prediction")
    ax.legend()
    out["histograms"] = ("Ground truth and prediction", _uri(fig))

    fig, ax = _figure(4.6, 4.4)
    ax.scatter(truth, prediction, s=10, alpha=0.5)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=true_name, ylabel=pred_name,
           title=f"prediction vs ground truth (r = {metrics['pearson']:.3f})" if metrics["pearson"] is not None
           else "prediction vs ground truth")
    out["scatter"] = ("Scatter", _uri(fig))

    err = prediction - truth
    fig, ax = _figure()
    span = max(abs(err).max(), unit)
    ax.hist(err, bins=np.linspace(-span, span, 41))
    ax.axvline(0, color="k", lw=1)
    ax.set(xlabel=f"prediction − ground truth (MAE {metrics['mae']:.3f})", ylabel="samples", title="error")
    out["errors"] = ("Error histogram", _uri(fig))

    fig, ax = _figure()
    ks = np.arange(0, WITHIN_K[-1] + 1)
    rates = [float((np.abs(err) <= k * unit).mean()) for k in ks]
    ax.plot(ks * unit, rates, "o-")
    ax.set(xlabel="k (|error| ≤ k)", ylabel="share of samples", ylim=(0, 1.02), title="cumulative: within k")
    ax.grid(alpha=0.3)
    out["within"] = ("Within k", _uri(fig))

    rows = metrics["per_class"]
    fig, ax = _figure(max(5.6, 0.18 * len(rows) + 1.5), 3.6)
    x = np.arange(len(rows))
    ax.bar(x, [r["mae"] for r in rows], label="MAE")
    ax.plot(x, [r["bias"] for r in rows], "r.", label="bias (mean error)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, [str(r["class"]) for r in rows], rotation=90, fontsize=7)
    ax.set(xlabel=true_name, ylabel="points", title="per-class MAE")
    ax.legend()
    out["per_class"] = ("Per-class MAE", _uri(fig))

    out["confusion"] = ("Confusion", _confusion(metrics["confusion"], true_name, f"rounded {pred_name}"))
    return out


def classification_plots(pred: Predictions, metrics: dict) -> dict[str, tuple[str, str]]:
    """Classification charts: confusion, per-class precision/recall, confidence histogram."""
    out: dict[str, tuple[str, str]] = {"confusion": ("Confusion", _confusion(metrics["confusion"], "true class",
                                                                            "predicted class (argmax)"))}
    rows = metrics["per_class"]
    fig, ax = _figure(max(5.6, 0.22 * len(rows) + 1.5), 3.6)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["precision"] or 0 for r in rows], 0.4, label="precision")
    ax.bar(x + 0.2, [r["recall"] or 0 for r in rows], 0.4, label="recall")
    ax.set_xticks(x, [str(r["class"]) for r in rows], rotation=90, fontsize=7)
    ax.set(ylim=(0, 1.05), title="per-class precision and recall")
    ax.legend()
    out["per_class"] = ("Per-class precision / recall", _uri(fig))
    if pred.topk_prob is not None:
        fig, ax = _figure()
        right = pred.argmax == pred.label
        conf = pred.topk_prob[:, 0]
        ax.hist([conf[right], conf[~right]], bins=np.linspace(0, 1, 21), label=["correct", "wrong"], stacked=True)
        ax.set(xlabel="top-1 probability", ylabel="samples", title="confidence")
        ax.legend()
        out["confidence"] = ("Confidence", _uri(fig))
    return out


def _confusion(confusion: dict, ylabel: str, xlabel: str) -> str:
    matrix = np.asarray(confusion["matrix"])
    axis = confusion["axis"]
    side = min(7.5, 3 + 0.12 * len(axis))
    fig, ax = _figure(side + 1, side)
    image = ax.imshow(matrix, origin="lower", cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8)
    step = max(1, len(axis) // 20)
    ticks = np.arange(0, len(axis), step)
    ax.set_xticks(ticks, [str(axis[t]) for t in ticks], rotation=90, fontsize=7)
    ax.set_yticks(ticks, [str(axis[t]) for t in ticks], fontsize=7)
    ax.set(xlabel=xlabel, ylabel=ylabel, title="confusion (count)")
    return _uri(fig)

