"""User-facing errors.

Every problem with a user's file or flags is raised as a :class:`CaffeCompatError` whose
message is one clear line naming the file, line or layer; the CLI prints that line and exits
non-zero instead of showing a traceback.
"""

from __future__ import annotations

import os


class CaffeCompatError(Exception):
    """An error caused by user input; its message is shown as-is, on one line."""


def where(path: str | os.PathLike[str], line: int | None = None, column: int | None = None) -> str:
    """Format a location as ``file:line:column`` (the form editors and compilers use)."""
    loc = os.fspath(path)
    if line is not None:
        loc += f":{line}"
        if column is not None:
            loc += f":{column}"
    return loc


def mark_user_code(exc: BaseException, where_: str) -> None:
    """Note where user code (a Python layer) raised ``exc`` without changing it: library code
    lets it pass as itself (its type is what the user's ``except`` catches), and the CLI names
    ``where_`` in its one line (see :func:`user_code_where`)."""
    if not hasattr(exc, "caffe_compat_where"):
        exc.caffe_compat_where = where_  # type: ignore[attr-defined]


def user_code_where(exc: BaseException) -> str | None:
    """Where user code raised ``exc``, or None when the library did."""
    return getattr(exc, "caffe_compat_where", None)
