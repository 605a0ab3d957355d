"""The face-score test report: how far the net's expected score is from the human score.

WHY expected score: the net is a 40-way classifier over scores 60..99, but the team judges it as
a regressor. The expected score Σ_k p_k·(score_min + k) uses the whole softmax (a net unsure
between 72 and 74 predicts 73), so MAE / RMSE / Pearson on it are the numbers that matter;
argmax accuracy is shown beside them. The report is a JSON file (machine-readable), a PNG
(scatter of expected vs human score, and the confusion matrix of rounded expected score vs human
score) and an HTML page that shows both.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.atomic import atomic_write, atomic_write_bytes

SCORE_MIN = 60


@dataclass(frozen=True)
class ScoreMetrics:
    """Summary of one evaluation; every rate is a fraction in [0, 1]."""

    samples: int
    mae: float
    rmse: float
    exact_hit_rate: float  # round(expected score) == human score
    within5_rate: float  # |expected score - human score| <= 5
    pearson: float  # NaN when either side is constant
    top1_accuracy: float  # argmax class == label
    mae_argmax: float
    mean_true_score: float
    mae_predict_mean: float  # baseline: always predict the mean human score


def expected_scores(prob: np.ndarray, score_min: int = SCORE_MIN) -> np.ndarray:
    """Σ_k p_k·(score_min + k) per row of an (N, K) probability matrix (float64)."""
    prob = np.asarray(prob, dtype=np.float64).reshape(len(prob), -1)
    return prob @ (score_min + np.arange(prob.shape[1], dtype=np.float64))


def score_metrics(prob: np.ndarray, labels: np.ndarray, score_min: int = SCORE_MIN) -> ScoreMetrics:
    """All report numbers from the ``prob`` blob rows and the integer class labels."""
    prob = np.asarray(prob, dtype=np.float64).reshape(len(prob), -1)
    labels = np.asarray(labels).reshape(-1)
    if len(prob) == 0 or len(prob) != len(labels):
        raise CaffeCompatError(f"report: need one label per prob row (got {len(prob)} rows, {len(labels)} labels)")
    true = score_min + labels.astype(np.float64)
    expected = expected_scores(prob, score_min)
    err = expected - true
    argmax = prob.argmax(axis=1)
    pearson = float("nan")
    if expected.std() > 0 and true.std() > 0:
        pearson = float(np.corrcoef(expected, true)[0, 1])
    return ScoreMetrics(
        samples=int(len(prob)),
        mae=float(np.abs(err).mean()),
        rmse=float(np.sqrt((err**2).mean())),
        exact_hit_rate=float((np.rint(expected) == true).mean()),
        within5_rate=float((np.abs(err) <= 5).mean()),
        pearson=pearson,
        top1_accuracy=float((argmax == labels).mean()),
        mae_argmax=float(np.abs(score_min + argmax - true).mean()),
        mean_true_score=float(true.mean()),
        mae_predict_mean=float(np.abs(true - true.mean()).mean()),
    )


def _plot(path: Path, expected: np.ndarray, true: np.ndarray, num_classes: int, score_min: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax_s, ax_c) = plt.subplots(1, 2, figsize=(11, 5))
    lo, hi = score_min - 1, score_min + num_classes
    ax_s.scatter(true, expected, s=12, alpha=0.6)
    ax_s.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax_s.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="human score", ylabel="expected score Σ p·score",
             title="expected vs human score")
    pred = np.clip(np.rint(expected), score_min, score_min + num_classes - 1).astype(int) - score_min
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (true.astype(int) - score_min, pred), 1)
    ax_c.imshow(conf, origin="lower", cmap="Blues", extent=(score_min - 0.5, score_min + num_classes - 0.5) * 2)
    ax_c.set(xlabel="rounded expected score", ylabel="human score", title="confusion")
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=90)
    plt.close(fig)


def _html(metrics: ScoreMetrics, png_name: str, title: str, rows: list[tuple[int, float, int]]) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    table = [
        ("samples", str(metrics.samples)),
        ("MAE (expected score)", f"{metrics.mae:.4f}"),
        ("RMSE (expected score)", f"{metrics.rmse:.4f}"),
        ("exact hit (rounded expected = human)", pct(metrics.exact_hit_rate)),
        ("within 5 points", pct(metrics.within5_rate)),
        ("Pearson r", f"{metrics.pearson:.4f}"),
        ("top-1 accuracy (argmax)", pct(metrics.top1_accuracy)),
        ("MAE (argmax score)", f"{metrics.mae_argmax:.4f}"),
        ("baseline MAE (always the mean score)", f"{metrics.mae_predict_mean:.4f}"),
    ]
    head = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in table)
    body = "".join(f"<tr><td>{i}</td><td>{t}</td><td>{e:.2f}</td><td>{e - t:+.2f}</td></tr>" for i, e, t in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:3px 8px;text-align:left}}</style></head>
<body><h1>{html.escape(title)}</h1>
<table>{head}</table>
<p><img src="{html.escape(png_name)}" alt="scatter and confusion matrix"></p>
<h2>Per sample</h2>
<table><tr><th>#</th><th>human score</th><th>expected score</th><th>error</th></tr>{body}</table>
</body></html>
"""


def write_report(out_dir: str | os.PathLike[str], prob: np.ndarray, labels: np.ndarray,
                 title: str = "caffe-compat test report", extra: dict | None = None,
                 score_min: int = SCORE_MIN) -> Path:
    """Write ``report.json``, ``report.png`` and ``report.html`` into ``out_dir``; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prob = np.asarray(prob, dtype=np.float64).reshape(len(prob), -1)
    labels = np.asarray(labels).reshape(-1)
    metrics = score_metrics(prob, labels, score_min)
    expected = expected_scores(prob, score_min)
    true = score_min + labels.astype(np.float64)
    _plot(out / "report.png", expected, true, prob.shape[1], score_min)
    summary = asdict(metrics)
    if not np.isfinite(metrics.pearson):
        summary["pearson"] = None  # standard JSON has no NaN
    payload = {
        "metrics": summary,
        "score_min": score_min,
        "num_classes": int(prob.shape[1]),
        "true_scores": true.astype(int).tolist(),
        "expected_scores": expected.tolist(),
        "argmax_scores": (score_min + prob.argmax(axis=1)).tolist(),
        **(extra or {}),
    }
    atomic_write_bytes(out / "report.json", json.dumps(payload, indent=1, allow_nan=False).encode("utf-8"))
    rows = [(i, float(e), int(t)) for i, (e, t) in enumerate(zip(expected, true))]
    page = out / "report.html"
    atomic_write_bytes(page, _html(metrics, "report.png", title, rows).encode("utf-8"))
    return page
