"""The files this process has memory-mapped right now, so a fault in one can still be named.

A read from a mapped file that was cut short (truncated while in use, a damaged LMDB) raises no
exception: the kernel sends SIGBUS. The CLI's last-resort handler (:mod:`caffe_compat.cli.guard`)
prints the files listed here instead of dying without a word.
"""

from __future__ import annotations

import os

#: Mapped file -> why it is mapped ("reading", "writing").
MAPPED: dict[str, str] = {}


def map_started(path: str | os.PathLike[str], why: str) -> None:
    """Record that ``path`` is mapped from now on, for ``why``."""
    MAPPED[os.fspath(path)] = why


def map_ended(path: str | os.PathLike[str]) -> None:
    MAPPED.pop(os.fspath(path), None)
