"""The library's ``logging`` records as glog lines on stderr, as Caffe's tools print them.

Caffe users grep and parse these (``W1123 16:59:00.123456 12345 weights.py:93] ...``), so every
subcommand shows the library's INFO and WARNING records in that one format.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys


class GlogFormatter(logging.Formatter):
    """``<severity><mmdd hh:mm:ss.uuuuuu> <tid> <file>:<line>] <message>``."""

    def format(self, record: logging.LogRecord) -> str:
        now = datetime.datetime.fromtimestamp(record.created)
        severity = {"WARNING": "W", "ERROR": "E", "CRITICAL": "F"}.get(record.levelname, "I")
        where = f"{os.path.basename(record.pathname)}:{record.lineno}"
        return (f"{severity}{now:%m%d %H:%M:%S}.{now.microsecond:06d} {os.getpid() % 100000:5d} "
                f"{where}] {record.getMessage()}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def log_library_to_stderr() -> None:
    """Install the glog handler on the ``caffe_compat`` logger once."""
    logger = logging.getLogger("caffe_compat")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(GlogFormatter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
