"""Progress bars that cost nothing when nobody sees them.

Importing tqdm takes 25-50 ms (its version lookup walks the installed distributions): as much as
a whole compute-image-mean run on a small DB. Where no bar is shown (turned off, or stderr is not
a terminal, where tqdm hides it anyway) a silent stand-in counts instead and tqdm is not imported.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable[Any] | None = None, *, shown: bool | None = None, **tqdm_args: Any) -> Any:
    """``tqdm(iterable, **tqdm_args)`` if ``shown`` (None: only on a terminal, tqdm's ``disable=None``)."""
    if not (sys.stderr.isatty() if shown is None else shown):
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
