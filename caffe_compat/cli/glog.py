"""The library's ``logging`` records as glog lines on stderr, as Caffe's tools print them.

Caffe users grep and parse these (``W1123 16:59:00.123456 12345 weights.py:93] ...``), so every
subcommand shows the library's INFO and WARNING records in that one format.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import socket
import sys
from typing import IO

from caffe_compat.errors import CaffeCompatError


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


def log_library_to_stderr(program: str = "caffe-compat") -> None:
    """Install the glog handler on the ``caffe_compat`` logger once; apply glog's environment."""
    logger = logging.getLogger("caffe_compat")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(GlogFormatter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    apply_glog_env(program)


# ---------------------------------------------------------------------------- glog's environment

_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_GLOG_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} ")


class GlogSink:
    """Stands in for ``sys.stderr``: drops glog lines below ``GLOG_minloglevel`` (with the lines
    the same write continues them with) and copies the kept ones to a glog log file. Anything
    else (progress bars, error lines) passes through to the terminal untouched."""

    def __init__(self, stream: IO[str], min_level: int, log_file: IO[str] | None) -> None:
        self._stream = stream
        self._min_level = min_level
        self._file = log_file
        self._record: bool | None = None  # inside a kept (True) or dropped (False) glog record

    def write(self, text: str) -> int:
        if _GLOG_LINE.match(text):
            self._record = _SEVERITY[text[0]] >= self._min_level
        elif not text.strip("\n") and self._record is not None:
            pass  # the newline print() writes after a record belongs to it
        else:
            self._record = None
        if self._record is not False:
            self._stream.write(text)
        if self._record and self._file is not None:
            self._file.write(text)
            self._file.flush()
        if text.endswith("\n"):
            self._record = None
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise CaffeCompatError(f"{name}={value!r}: expected a number") from None


def _open_log_file(folder: str, program: str) -> IO[str]:
    """``<program>.<host>.<user>.log.INFO.<yyyymmdd-hhmmss>.<pid>`` with glog's header, and the
    ``<program>.INFO`` link to it, in ``folder``."""
    if not os.path.isdir(folder):
        raise CaffeCompatError(f"GLOG_log_dir '{folder}': folder does not exist")
    now = datetime.datetime.now()
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "invalid-user"
    name = f"{program}.{socket.gethostname()}.{user}.log.INFO.{now:%Y%m%d-%H%M%S}.{os.getpid()}"
    try:
        handle = open(os.path.join(folder, name), "a", encoding="utf-8")
    except OSError as exc:
        raise CaffeCompatError(f"GLOG_log_dir '{folder}': cannot create a log file: {exc.strerror}") from None
    handle.write(f"Log file created at: {now:%Y/%m/%d %H:%M:%S}\nRunning on machine: {socket.gethostname()}\n"
                 "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n")
    link = os.path.join(folder, f"{program}.INFO")
    with contextlib.suppress(OSError):
        if os.path.islink(link):
            os.unlink(link)
        os.symlink(name, link)
    return handle


def apply_glog_env(program: str) -> None:
    """Honour glog's ``GLOG_minloglevel`` (0 INFO .. 3 FATAL: lines below it are dropped),
    ``GLOG_log_dir`` (also write the log into a glog-named file there) and ``GLOG_logtostderr``
    (1: the terminal only, no file), as Caffe's tools do. Without ``GLOG_log_dir`` no file is
    written (glog would default to /tmp)."""
    if isinstance(sys.stderr, GlogSink):
        return
    min_level = _env_int("GLOG_minloglevel", 0)
    folder = os.environ.get("GLOG_log_dir", "")
    to_file = bool(folder) and not _env_int("GLOG_logtostderr", 0)
    if min_level <= 0 and not to_file:
        return
    sys.stderr = GlogSink(sys.stderr, min_level, _open_log_file(folder, program) if to_file else None)
