"""Training logs in Caffe's glog format, so existing Caffe log parsers and dashboards keep working.

Lines look like ``I1123 02:31:52.165109 21498 solver.cpp:239] Iteration 0 (...), loss = 2.34716``:
the classic glog prefix (``Immdd hh:mm:ss.uuuuuu tid file:line]``) that Caffe's
``tools/extra/parse_log.py`` reads, the source locations of the Caffe lines they mirror, and
numbers printed like a C++ ``ostream`` (6 significant digits).
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import IO, Sequence

import tqdm

from caffe_compat.errors import CaffeCompatError


def num(x: float) -> str:
    """A number as C++'s ``operator<<`` prints a float (``%g`` with 6 significant digits)."""
    return f"{x:.6g}"


class CaffeLog:
    """Writes glog-format lines to ``stream`` (stderr by default) and, optionally, to a log file.

    Only the root rank logs (``enabled=False`` elsewhere). While a tqdm progress bar is shown on the
    same terminal, lines go through ``tqdm.write`` so the bar is not torn.
    """

    def __init__(self, stream: IO[str] | None = None, log_file: str | os.PathLike[str] | None = None, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.file = self._open(log_file) if (log_file and enabled) else None
        self.enabled = enabled
        self.progress: tqdm.tqdm | None = None
        self.tid = os.getpid() % 100000

    @staticmethod
    def _open(log_file: str | os.PathLike[str]) -> IO[str]:
        """The log file in append mode (a log grows, like glog's); a bad path is one clear line."""
        try:
            return open(log_file, "a", encoding="utf-8")
        except OSError as exc:
            raise CaffeCompatError(f"{os.fspath(log_file)}: cannot open the log file: {exc.strerror}") from None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def log(self, where: str, message: str, severity: str = "I") -> None:
        """One glog line; ``where`` is Caffe's ``file.cpp:line`` the line corresponds to."""
        if not self.enabled:
            return
        now = datetime.datetime.now()
        line = f"{severity}{now:%m%d %H:%M:%S}.{now.microsecond:06d} {self.tid:5d} {where}] {message}"
        if self.progress is not None:
            tqdm.tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()

    def info(self, where: str, message: str) -> None:
        self.log(where, message, "I")

    def warning(self, where: str, message: str) -> None:
        self.log(where, message, "W")

    def error(self, where: str, message: str) -> None:
        self.log(where, message, "E")

    # The lines Caffe's Solver writes, in its words.
    def train_iteration(self, it: int, per_s: float, lapse: float, display: int, smoothed_loss: float) -> None:
        self.info(
            "solver.cpp:239",
            f"Iteration {it} ({num(per_s)} iter/s, {num(lapse)}s/{display} iters), loss = {num(smoothed_loss)}",
        )

    def net_outputs(self, kind: str, outputs: Sequence[tuple[str, Sequence[float], float]]) -> None:
        """``Train net output #k`` / ``Test net output #k`` lines; one per value of every output blob."""
        where = "solver.cpp:258" if kind == "Train" else "solver.cpp:414"
        k = 0
        for name, values, loss_weight in outputs:
            for v in values:
                extra = f" (* {num(loss_weight)} = {num(loss_weight * v)} loss)" if loss_weight else ""
                self.info(where, f"    {kind} net output #{k}: {name} = {num(v)}{extra}")
                k += 1

    def learning_rate(self, it: int, rate: float) -> None:
        self.info("sgd_solver.cpp:112", f"Iteration {it}, lr = {num(rate)}")

    def testing(self, it: int, net_id: int) -> None:
        self.info("solver.cpp:347", f"Iteration {it}, Testing net (#{net_id})")

    def final_loss(self, it: int, smoothed_loss: float) -> None:
        self.info("solver.cpp:327", f"Iteration {it}, loss = {num(smoothed_loss)}")
