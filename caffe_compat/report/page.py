"""``report.html`` (one self-contained page: every chart and thumbnail is a ``data:`` URI) and
``report.md`` (the same tables, for a pull request or a wiki)."""

from __future__ import annotations

import html
import re
from typing import Callable, Sequence

from caffe_compat.report.galleries import Gallery, caption
from caffe_compat.report.metrics import show_amount
from caffe_compat.report.predictions import Predictions
from caffe_compat.report.videos import WORST_VIDEOS

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.lead{font-size:1.15em}
.charts img{margin:4px;border:1px solid #eee;vertical-align:top}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.card{width:124px;font-size:11px;text-align:center}
.card .pic{width:112px;height:112px;display:flex;align-items:center;justify-content:center;background:#eee;margin:auto}
.card img{max-width:112px;max-height:112px}
.card .key{color:#777;overflow-wrap:anywhere}.card .flags{color:#b04}.note{color:#666}"""


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _within(metrics: dict, k: str) -> str:
    """``within 0.5 label units`` / ``within 5 score points``: the threshold in the label's units."""
    return f"within {show_amount(int(k) * metrics['unit'])} {metrics['unit_name']}"


def summary_rows(metrics: dict) -> list[tuple[str, str]]:
    """The headline numbers, in reading order, each with its unit."""
    if metrics["mode"] == "classification":
        return [("samples", str(metrics["samples"])), ("accuracy (top-1)", _pct(metrics["accuracy"])),
                ("top-5 accuracy", _pct(metrics["top5_accuracy"]))]
    unit = f" ({metrics['unit_name']})"
    step = show_amount(metrics["unit"])
    exact = ("exact (rounded prediction = ground truth)" if metrics["mode"] == "score"
             else f"exact (prediction and ground truth round to the same {step} {metrics['unit_name']})")
    rows = [("samples", str(metrics["samples"])), ("MAE" + unit, _num(metrics["mae"])),
            ("RMSE" + unit, _num(metrics["rmse"])), ("Pearson r (PC, no unit)", _num(metrics["pearson"])),
            ("bias (mean error)" + unit, _num(metrics["bias"], 3)), (exact, _pct(metrics["exact_rate"])),
            (_within(metrics, "1"), _pct(metrics["within"]["1"])), (_within(metrics, "5"), _pct(metrics["within"]["5"])),
            ("baseline MAE (always the mean ground truth)" + unit, _num(metrics["mae_predict_mean"]))]
    if "videos" in metrics:
        videos = metrics["videos"]
        rows += [("videos (frames grouped by the video their key names)", str(videos["count"])),
                 ("MAE of each video's mean prediction" + unit, _num(videos["video_mae"])),
                 ("per-frame MAE" + unit, _num(videos["frame_mae"])),
                 ("videos flagged label_suspect (frames agree, label does not)", str(videos["label_suspect"]))]
    if metrics["mode"] == "score":
        rows += [("top-1 accuracy (argmax class)", _pct(metrics["top1_accuracy"])),
                 ("top-5 accuracy", _pct(metrics["top5_accuracy"])),
                 ("MAE of the argmax score" + unit, _num(metrics["mae_argmax"]))]
        if "argmax_decode" in metrics:
            other = metrics["argmax_decode"]
            rows += [(f"argmax decode: MAE{unit} / exact / {_within(metrics, '5')}",
                      f"{other['mae']:.4f} / {_pct(other['exact_rate'])} / {_pct(other['within']['5'])}")]
    return rows


def headline(metrics: dict) -> list[str]:
    """The figures ``caffe-compat test`` logs after Caffe's lines (PC / MAE / RMSE for
    regression; MAE / exact / within 5 for scores; accuracy for classifiers)."""
    if metrics["mode"] == "classification":
        return [f"Report: accuracy = {_pct(metrics['accuracy'])}, top-5 accuracy = {_pct(metrics['top5_accuracy'])} "
                f"on {metrics['samples']} samples"]
    unit = metrics["unit_name"]
    if metrics["mode"] == "regression":
        return [f"Report: PC = {_num(metrics['pearson'])}, MAE = {_num(metrics['mae'])} {unit}, "
                f"RMSE = {_num(metrics['rmse'])} {unit} on {metrics['samples']} samples"]
    return [f"Report: MAE = {_num(metrics['mae'])} {unit}, exact = {_pct(metrics['exact_rate'])}, "
            f"{_within(metrics, '5')} = {_pct(metrics['within']['5'])} on {metrics['samples']} samples"]


def lead(metrics: dict) -> str:
    """The legacy report's sentence: "MAE 2.45 score points, 52% exactly right, 84% within 5 score points"."""
    if metrics["mode"] == "classification":
        return f"accuracy {_pct(metrics['accuracy'])}, top-5 {_pct(metrics['top5_accuracy'])} on {metrics['samples']} samples"
    unit = metrics["unit_name"]
    if metrics["mode"] == "score":
        return (f"MAE {metrics['mae']:.4f} {unit} on {metrics['samples']} samples; {_pct(metrics['exact_rate'])} exactly "
                f"right, {_pct(metrics['within']['5'])} {_within(metrics, '5')}")
    return (f"MAE {metrics['mae']:.4f} {unit}, RMSE {metrics['rmse']:.4f} {unit}, PC {_num(metrics['pearson'])} on "
            f"{metrics['samples']} samples; {_pct(metrics['within']['5'])} {_within(metrics, '5')}")


def _tables(metrics: dict, flags: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by the HTML and the Markdown."""
    out = []
    if metrics["mode"] == "classification":
        out.append(("Per class", ["class", "count", "predicted", "precision", "recall"],
                    [[str(r["class"]), str(r["count"]), str(r["predicted"]), _pct(r["precision"]), _pct(r["recall"])]
                     for r in metrics["per_class"]]))
    else:
        unit, name = metrics["unit"], metrics["unit_name"]
        out.append((f"Within k {name}", [f"k ({name})", *(show_amount(int(k) * unit) for k in metrics["within"])],
                    [["share of samples", *(_pct(v) for v in metrics["within"].values())]]))
        out.append((f"Per class (ground truth rounded to {show_amount(unit)} {name})",
                    ["class", "count", f"MAE ({name})", f"bias ({name})"],
                    [[str(r["class"]), str(r["count"]), _num(r["mae"], 3), f"{r['bias']:+.3f}"]
                     for r in metrics["per_class"]]))
        out.append(("Score percentiles (a score of S is better than X% of the set)",
                    ["percentile", f"ground truth ({name})", "better than", f"prediction ({name})", "better than"],
                    [[f"{r['percentile']}%", f"{r['truth']:.3f}", _pct(r["truth_better_than"]),
                      f"{r['prediction']:.3f}", _pct(r["prediction_better_than"])] for r in metrics["percentiles"]]))
    if "videos" in metrics:
        name = metrics["unit_name"]
        out.append((f"Worst videos (of {metrics['videos']['count']})",
                    ["video", "frames", f"ground truth ({name})", f"mean prediction ({name})", f"error ({name})",
                     f"per-frame MAE ({name})", f"spread of the frames ({name}, std)", "label suspect"],
                    [[r["video"], str(r["frames"]), f"{r['truth']:.3f}", f"{r['mean_prediction']:.3f}",
                      f"{r['error']:+.3f}", f"{r['frame_mae']:.3f}", f"{r['spread']:.3f}", "yes" if r["suspect"] else ""]
                     for r in metrics["videos"]["rows"][:WORST_VIDEOS]]))
    if flags:
        what = "error rate" if metrics["mode"] == "classification" else f"mean |error| ({metrics['unit_name']})"
        out.append(("Errors per quality flag", ["flag", "samples", f"{what}, flagged", f"{what}, others"],
                    [[r["flag"], str(r["count"]), _num(r["mean_error"], 3), _num(r["mean_error_others"], 3)]
                     for r in flags]))
    return out


def _html_table(header: Sequence[str] | None, rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A table; ``header`` None: none (the run's settings read as a list of name / value)."""
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(f"<{tag}{' class=l' if i < left else ''}>{html.escape(v)}</{tag}>" for i, v in enumerate(values))

    head = "" if header is None else "<tr>" + cells("th", header) + "</tr>"
    return "<table>" + head + "".join("<tr>" + cells("td", r) + "</tr>" for r in rows) + "</table>"


_KEY_BREAKS = re.compile(r"([/_\-.])")


def key_html(key: str) -> str:
    """A record key that wraps only after its separators (``/``, ``_``, ``-``, ``.``), never mid-word."""
    return "".join(html.escape(part) + ("<wbr>" if _KEY_BREAKS.fullmatch(part) else "")
                   for part in _KEY_BREAKS.split(key) if part)


def render_html(title: str, info: Sequence[tuple[str, str]], metrics: dict, charts: dict[str, tuple[str, str]],
                flags: list[dict], galleries: Sequence[Gallery], pred: Predictions,
                thumbnail: Callable[[int], str] | None, notes: Sequence[str]) -> str:
    """The whole page; ``thumbnail(row)`` gives a row's picture as a data URI (None: no pictures)."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class=lead>{html.escape(lead(metrics))}</p>",
             _html_table(None, [list(r) for r in info], left=2),
             "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes),
             "<h2>Summary</h2>", _html_table(["metric", "value"], [list(r) for r in summary_rows(metrics)])]
    parts.append("<h2>Charts</h2><div class=charts>")
    parts += [f'<img id="chart-{cid}" src="{uri}" alt="{html.escape(name)}" title="{html.escape(name)}">'
              for cid, (name, uri) in charts.items()]
    parts.append("</div>")
    if galleries:
        parts.append("<h2>Galleries</h2>")
        if thumbnail is None:
            parts.append("<p class=note>no pictures: the images' source is not available (give --source)</p>")
    for gallery in galleries:
        parts.append(f'<h3>{html.escape(gallery.title)} ({len(gallery.rows)})</h3><div class=gallery id="{gallery.id}">')
        if not gallery.rows:
            parts.append("<p class=note>none</p>")
        for row in gallery.rows:
            picture = (f'<div class=pic><img src="{thumbnail(row)}" alt="{html.escape(pred.keys[row])}"></div>'
                       if thumbnail else "")
            flags_text = ", ".join(pred.flags[row]) if pred.flags else ""
            parts.append(f'<div class=card data-row="{row}">{picture}<div>{html.escape(caption(pred, row))}</div>'
                         f'<div class=key>{key_html(pred.keys[row])}</div>'
                         f'<div class=flags>{html.escape(flags_text)}</div></div>')
        parts.append("</div>")
    for name, header, rows in _tables(metrics, flags):
        parts += [f"<h2>{html.escape(name)}</h2>", _html_table(header, rows)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|&!])")


def md_escape(text: str) -> str:
    """``text`` as literal Markdown: keys, label names and flags come from users' files, and raw
    HTML (``<script>``, ``<img onerror>``) or links in them would run in viewers that render it."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def render_markdown(title: str, info: Sequence[tuple[str, str]], metrics: dict, flags: list[dict],
                    notes: Sequence[str]) -> str:
    """report.md: the lead sentence and every table (charts and pictures are in report.html)."""

    def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
        esc = [[md_escape(v) for v in r] for r in [list(header), *rows]]
        return ["| " + " | ".join(esc[0]) + " |", "|" + " --- |" * len(header), *("| " + " | ".join(r) + " |" for r in esc[1:])]

    lines = [f"# {md_escape(title)}", "", md_escape(lead(metrics)), "", *table(["setting", "value"], info), ""]
    lines += [f"> {md_escape(n)}" for n in notes] + ([""] if notes else [])
    lines += ["## Summary", "", *table(["metric", "value"], summary_rows(metrics)), ""]
    for name, header, rows in _tables(metrics, flags):
        lines += [f"## {name}", "", *table(header, rows), ""]
    lines.append("Charts and the galleries of best and worst cases: report.html.")
    return "\n".join(lines) + "\n"
