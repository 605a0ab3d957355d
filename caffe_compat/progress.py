"""Progress: bars that cost nothing when nobody sees them, and Caffe's own progress lines.

Importing tqdm takes 25-50 ms (its version lookup walks the installed distributions): as much as
a whole compute-image-mean run on a small DB. Where no bar is shown (turned off, or stderr is not
a terminal, where tqdm hides it anyway) a silent stand-in counts instead and tqdm is not imported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any


def bar_shown(shown: bool | None) -> bool:
    """Whether a bar is drawn: ``shown``, or by default only on a terminal (tqdm's ``disable=None``)."""
    return sys.stderr.isatty() if shown is None else shown


def progress_bar(iterable: Iterable[Any] | None = None, *, shown: bool | None = None, **tqdm_args: Any) -> Any:
    """``tqdm(iterable, **tqdm_args)`` if :func:`bar_shown`, else a silent counter."""
    if not bar_shown(shown):
        return _SilentBar(iterable)
    from tqdm import tqdm

    return tqdm(iterable, **tqdm_args)


class _SilentBar:
    """The part of tqdm's interface our tools use, doing nothing but counting."""

    def __init__(self, iterable: Iterable[Any] | None) -> None:
        self.iterable = iterable
        self.n = 0

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_SilentBar":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class CaffeCountLog:
    """Caffe's tools' progress lines, e.g. ``Processed 1000 files.``: one each ``every`` items
    and one for the final count unless it was just logged, as scripts around Caffe grep them.

    ``periodic=False`` (a bar shows the progress instead: lines would break it) keeps only the
    final line. Each line is logged once however the count jumps or whoever reports it.
    """

    def __init__(self, every: int, line: Callable[[int], None], periodic: bool = True) -> None:
        self.every, self.line, self.periodic = every, line, periodic
        self.logged = 0

    def reach(self, count: int) -> None:
        """``count`` items are done (any order, any jumps)."""
        if not self.periodic:
            return
        for n in range(self.logged + self.every, count + 1, self.every):
            self.line(n)
            self.logged = n

    def finish(self, count: int) -> None:
        """All ``count`` items are done."""
        self.reach(count)
        if count % self.every or not self.periodic:
            self.line(count)
