"""Input files a user names, opened only when they are regular files, and read with a size cap.

A FIFO named as an input blocks the reader forever and a device such as ``/dev/zero`` never
ends, so both are refused by name before anything is read; the file is opened non-blocking
and checked on the open descriptor, so nothing can be swapped in between check and read.
"""

from __future__ import annotations

import os
import stat

from caffe_compat.errors import CaffeCompatError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path: str | os.PathLike[str], what: str) -> int:
    """The size of ``path`` if it is a regular file (a symlink to one is fine); else one clear line."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CaffeCompatError(f"{os.fspath(path)}: {what} does not exist") from None
    except OSError as exc:
        raise CaffeCompatError(f"{os.fspath(path)}: cannot read {what}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CaffeCompatError(f"{os.fspath(path)}: is {_kind(info.st_mode)}, not a regular file; {what} must be a file")
    return info.st_size


def read_capped(path: str | os.PathLike[str], what: str, cap: int) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CaffeCompatError(f"{name}: {what} does not exist") from None
    except OSError as exc:
        raise CaffeCompatError(f"{name}: cannot read {what}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CaffeCompatError(f"{name}: is {_kind(info.st_mode)}, not a regular file; {what} must be a file")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > cap:
            raise CaffeCompatError(f"{name}: {what} of {info.st_size:,} bytes is over the {cap:,}-byte limit")
        try:
            data = handle.read(cap + 1)
        except OSError as exc:
            raise CaffeCompatError(f"{name}: cannot read {what}: {exc.strerror}") from None
    if len(data) > cap:  # grew while we read it
        raise CaffeCompatError(f"{name}: {what} is over the {cap:,}-byte limit")
    return data
