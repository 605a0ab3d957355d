"""Option helpers so Caffe's gflags spellings keep working (``-weights x`` and ``--weights=x``)."""

from __future__ import annotations

from typing import Any, Callable

import click


def caffe_option(name: str, *extra: str, **kwargs: Any) -> Callable:
    """A click option reachable as ``--name`` and Caffe's single-dash ``-name``."""
    return click.option(f"--{name}", f"-{name}", *extra, **kwargs)
