"""The CLI's one rule: a command succeeds, or ends with ONE ``caffe-compat: error: ...`` line.

Library code raises :class:`~caffe_compat.errors.CaffeCompatError` naming the file, line,
record or layer; this is the single place where everything else is also turned into a line
instead of a traceback or a silent death:

- ``OSError`` (a full disk, a folder where a file should be) names its file when it has one;
  ``MemoryError`` says so;
- SIGTERM and SIGHUP raise :class:`Terminated`, so ``finally`` blocks and ``except
  BaseException`` clean-ups (temporary files and LMDB folders) run before the exit;
- SIGBUS, which a memory map raises when its file is shorter than it claims (LMDB files are
  checked before mapping, see :mod:`caffe_compat.io.lmdb_file`, so this is the last resort),
  prints a line naming the mapped files (:mod:`caffe_compat.io.mapped`) instead of a silent death;
- an exception the user's own code raised (a Python layer's, see
  :func:`~caffe_compat.errors.mark_user_code`) names the layer and method, type and message;
- any other exception is a bug: one line saying so (``CAFFE_COMPAT_DEBUG=1`` shows the
  traceback instead).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Iterator

import click

from caffe_compat.errors import CaffeCompatError, user_code_where

PREFIX = "caffe-compat: error: "
_DEBUG = "CAFFE_COMPAT_DEBUG"
_installed = False


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds the command so its clean-ups run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame) -> None:  # noqa: ARG001 - signal API
    raise Terminated(signum)


def _bus_message() -> bytes:
    from caffe_compat.io.mapped import MAPPED

    files = ", ".join(f"{path} ({why})" for path, why in MAPPED.items()) or "a memory-mapped file"
    return (f"{PREFIX}{files}: bus error while accessing the memory map: the file is damaged or shorter "
            "than it claims (truncated, or the disk is full); nothing was written\n").encode("utf-8", "replace")


def _on_bus(signum: int) -> None:  # noqa: ARG001 - runs as a C signal handler: write, then leave at once
    os.write(2, _bus_message())
    os._exit(1)


_BUS_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int)
_BUS_HANDLER = _BUS_HANDLER_TYPE(_on_bus)


def _set_bus_handler(handler: int | None) -> int | None:
    """Install a C-level SIGBUS handler (Python's own handlers run too late: the faulting read
    would repeat forever); return the previous one, None where libc's signal() is missing."""
    try:
        libc = ctypes.CDLL(None)
        install = libc.signal
    except (OSError, AttributeError):
        return None
    install.restype = ctypes.c_void_p
    install.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return install(signal.SIGBUS, handler)


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """Our handlers while a command runs (main thread, outermost command only), then the old ones."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    old = {sig: signal.signal(sig, _raise_terminated) for sig in wanted}
    old_bus = _set_bus_handler(ctypes.cast(_BUS_HANDLER, ctypes.c_void_p).value) if hasattr(signal, "SIGBUS") else None
    _installed = True
    try:
        yield
    finally:
        _installed = False
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if old_bus is not None:
            _set_bus_handler(old_bus)


def one_line(message: str) -> str:
    """A message as one line. A DataLoader worker's error arrives with the worker's traceback
    in it: only its last line (the error itself) is kept."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    if len(lines) > 1 and any(line.startswith("Original Traceback") for line in lines):
        last = lines[-1]
        for name in ("caffe_compat.errors.CaffeCompatError: ", "CaffeCompatError: "):
            if last.startswith(name):
                last = last[len(name):]
        return f"{last} (in a data loader worker)"
    return " ".join(lines)


def _os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    name = exc.filename
    if name is None:
        return reason
    return f"{os.fsdecode(name) if isinstance(name, bytes) else name}: {reason}"


def _fail(message: str, code: int = 1) -> None:
    with contextlib.suppress(OSError):
        click.echo(PREFIX + one_line(message), err=True)
    sys.exit(code)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Run a command under the one rule (see the module docstring)."""
    with _signals():
        try:
            yield
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except CaffeCompatError as exc:
            _fail(str(exc))
        except Terminated as exc:
            _fail(f"terminated by {signal.Signals(exc.signum).name}; temporary files removed, "
                  "nothing half-written", 128 + exc.signum)
        except BrokenPipeError:  # `caffe-compat inspect ... | head`: the reader left
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            _fail("the output pipe was closed before everything was written")
        except OSError as exc:
            if os.environ.get(_DEBUG):
                raise
            _fail(_os_error(exc))
        except MemoryError:
            _fail("out of memory: the input asks for more than this machine has (a damaged or hostile file?)")
        except Exception as exc:  # noqa: BLE001 - the one place every other failure becomes a line
            if os.environ.get(_DEBUG):
                raise
            _fail(_unexpected(exc))


def _unexpected(exc: Exception) -> str:
    """An exception no library code turned into a located error: what it most likely means."""
    kind = type(exc)
    where = user_code_where(exc)
    if where:
        return f"{where} raised {kind.__name__}: {exc}"
    if kind.__module__.split(".")[0] == "lmdb":
        return f"damaged or unreadable LMDB ({kind.__name__}: {exc})"
    if kind.__name__ == "DecodeError":
        return f"a file is not the protobuf it should be ({exc})"
    return (f"unexpected {kind.__name__}: {exc} (a bug in caffe-compat: please report it with the command; "
            f"{_DEBUG}=1 shows the traceback)")
