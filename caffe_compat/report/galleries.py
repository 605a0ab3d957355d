"""Which samples the report shows as pictures: the legacy report's good and bad cases.

Score and regression nets: the best cases with error 0 and error 1 (|prediction − truth|
rounded to whole units, titled in the label's own units: "under 0.05 label units", "0.5 to
1.5 score points"; smallest errors first; when there are none, the smallest errors
whatever they are), the worst cases (largest first), and the worst cases of each quality flag. Classification nets: the most confident right and wrong
answers, and the wrong ones of each flag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caffe_compat.report.metrics import show_amount, unit_name, unit_of
from caffe_compat.report.predictions import Predictions

GALLERY = 16
PER_FLAG = 8


@dataclass(frozen=True)
class Gallery:
    """A titled row of samples (positions in the Predictions table), in display order."""

    id: str
    title: str
    rows: tuple[int, ...]


def select_galleries(pred: Predictions, size: int = GALLERY, per_flag: int = PER_FLAG) -> list[Gallery]:
    """The galleries of the report, each in display order."""
    if pred.mode == "classification":
        confidence = pred.topk_prob[:, 0] if pred.topk_prob is not None else np.zeros(len(pred))
        right = pred.argmax == pred.label
        order = np.lexsort((np.arange(len(pred)), -confidence))  # most confident first, stable
        wrong_order = [int(i) for i in order if not right[i]]
        out = [Gallery("right", "Right, most confident", tuple(int(i) for i in order if right[i])[:size]),
               Gallery("worst", "Wrong, most confident", tuple(wrong_order[:size]))]
        flagged_rows = wrong_order
    else:
        size_of_error = np.abs(pred.errors)
        unit, name = unit_of(pred), unit_name(pred.mode)
        whole = np.rint(size_of_error / unit).astype(np.int64)
        half, one_and_half = show_amount(unit / 2), show_amount(1.5 * unit)
        best = np.lexsort((np.arange(len(pred)), size_of_error))  # smallest error first, stable
        worst = np.lexsort((np.arange(len(pred)), -size_of_error))  # largest error first
        out = [Gallery("best0", f"Best: |error| under {half} {name}",
                       tuple(int(i) for i in best if whole[i] == 0)[:size]),
               Gallery("best1", f"Best: |error| {half} to {one_and_half} {name}",
                       tuple(int(i) for i in best if whole[i] == 1)[:size])]
        if not out[0].rows and not out[1].rows:  # a weak net: still show its best cases
            out.append(Gallery("best", f"Best cases (none within {one_and_half} {name})",
                               tuple(int(i) for i in best[:size])))
        out.append(Gallery("worst", "Worst cases", tuple(int(i) for i in worst[:size])))
        flagged_rows = [int(i) for i in worst]
    for flag in sorted({f for flags in pred.flags or () for f in flags}):
        rows = tuple(i for i in flagged_rows if flag in pred.flags[i])[:per_flag]
        if rows:
            out.append(Gallery(f"flag-{flag}", f"Worst with flag '{flag}'", rows))
    return out


def caption(pred: Predictions, row: int) -> str:
    """gt/pred as in the legacy report ("gt 72 / pred 73.4"), or classes for classifiers."""
    if pred.mode == "classification":
        prob = f" {pred.topk_prob[row, 0]:.2f}" if pred.topk_prob is not None else ""
        return f"gt {pred.show_class(pred.label[row])} / pred {pred.show_class(pred.argmax[row])}{prob}"
    digits = 1 if pred.mode == "score" else 2
    truth = pred.truth[row]
    shown = f"{truth:.0f}" if float(truth).is_integer() else f"{truth:.{digits + 1}f}"
    return f"gt {shown} / pred {pred.prediction[row]:.{digits}f} (error {pred.errors[row]:+.{digits}f})"
