"""Parse a Caffe training log (ours or real Caffe's) and draw loss / accuracy curves as a PNG.

Reads only the message part of each line, so any glog prefix works (classic ``I1123 ...`` or
glog 0.6's ``I20261123 ...``), as do logs with the prefix stripped.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.errors import CaffeCompatError

_NUM = r"([-+]?(?:[0-9.]+(?:[eE][-+]?\d+)?|nan|-nan|inf|-inf))"
_TRAIN = re.compile(rf"Iteration (\d+)(?: \([^)]*\))?, loss = {_NUM}")
_LR = re.compile(rf"Iteration (\d+), lr = {_NUM}")
_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_TEST_OUT = re.compile(rf"Test net output #(\d+): (\S+) = {_NUM}")
_TRAIN_OUT = re.compile(rf"Train net output #(\d+): (\S+) = {_NUM}")


@dataclass
class TrainingLog:
    """The numbers in a Caffe training log, keyed by iteration."""

    train_loss: list[tuple[int, float]] = field(default_factory=list)  # the logged (smoothed) loss
    train_outputs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    lr: list[tuple[int, float]] = field(default_factory=list)
    # test net id -> output name -> [(iteration, value)]
    tests: dict[int, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)


def _float(text: str) -> float:
    return float(text.replace("-nan", "nan"))


def parse_log(path: str | os.PathLike[str]) -> TrainingLog:
    """Everything plot-log draws, from a log file."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CaffeCompatError(f"{path}: cannot read log ({exc.strerror})") from None
    log = TrainingLog()
    last_iter, test_net = 0, 0
    for line in text.splitlines():
        if m := _TESTING.search(line):
            last_iter, test_net = int(m.group(1)), int(m.group(2))
        elif m := _TEST_OUT.search(line):
            log.tests.setdefault(test_net, {}).setdefault(m.group(2), []).append((last_iter, _float(m.group(3))))
        elif m := _TRAIN_OUT.search(line):
            log.train_outputs.setdefault(m.group(2), []).append((last_iter, _float(m.group(3))))
        elif m := _LR.search(line):
            log.lr.append((int(m.group(1)), _float(m.group(2))))
        elif m := _TRAIN.search(line):
            last_iter = int(m.group(1))
            log.train_loss.append((last_iter, _float(m.group(2))))
    return log


def plot_log(log_path: str | os.PathLike[str], out_path: str | os.PathLike[str], title: str | None = None) -> TrainingLog:
    """Draw train loss and every test output (accuracy on a second axis) against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    log = parse_log(log_path)
    if not log.train_loss and not log.tests:
        raise CaffeCompatError(f"{log_path}: no 'Iteration N, loss = X' or 'Test net output' lines: not a Caffe training log")
    fig, loss_ax = plt.subplots(figsize=(9, 5), dpi=100)
    has_accuracy = any("acc" in name.lower() for outputs in log.tests.values() for name in outputs)
    acc_ax = loss_ax.twinx() if has_accuracy else None
    if log.train_loss:
        it, v = zip(*log.train_loss)
        loss_ax.plot(it, v, label="train loss", color="tab:blue", linewidth=1)
    colours = iter(["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"])
    for net_id, outputs in sorted(log.tests.items()):
        for name, points in sorted(outputs.items()):
            it, v = zip(*points)
            is_acc = "acc" in name.lower()
            ax = acc_ax if is_acc else loss_ax
            suffix = f" (test #{net_id})" if len(log.tests) > 1 else " (test)"
            ax.plot(it, v, marker="o", markersize=3, linestyle="--" if is_acc else "-", label=name + suffix, color=next(colours, None))
    on_loss_axis = [v for line in loss_ax.get_lines() for v in line.get_ydata() if math.isfinite(v)]
    if on_loss_axis and min(on_loss_axis) > 0 and max(on_loss_axis) > 20 * min(on_loss_axis):
        loss_ax.set_yscale("log")  # e.g. Caffe's huge iteration-0 test loss with fresh BatchNorm
    loss_ax.set_xlabel("iteration")
    loss_ax.set_ylabel("loss")
    handles, labels = loss_ax.get_legend_handles_labels()
    if acc_ax is not None:  # only logs with test accuracy get the second axis
        acc_ax.set_ylabel("accuracy")
        acc_ax.set_ylim(0, 1.02)
        acc_handles, acc_labels = acc_ax.get_legend_handles_labels()
        handles, labels = handles + acc_handles, labels + acc_labels
    loss_ax.legend(handles, labels, loc="upper right", fontsize=8)
    loss_ax.set_title(title or Path(log_path).name)
    loss_ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out_path, buf.getvalue())
    return log
