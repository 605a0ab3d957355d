"""Write-then-rename, so a crash or a full disk never leaves a half-written user file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from caffe_compat.errors import CaffeCompatError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On any exception the temporary file is removed and an existing ``path`` is untouched.
    A missing or unwritable output folder, ``path`` naming a folder, or a write that fails (a
    full disk) is a :class:`CaffeCompatError` naming ``path`` rather than an ``OSError``.
    """
    target = Path(path)
    if target.is_dir():
        raise CaffeCompatError(f"{target}: cannot write the output: it is a folder")
    if not target.parent.is_dir():
        raise CaffeCompatError(f"{target}: cannot write the output: folder '{target.parent}' does not exist")
    umask = os.umask(0)
    os.umask(umask)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise CaffeCompatError(f"{target}: cannot write the output: {exc.strerror}") from None
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes 0600 files; give the result the mode a plain open() would (0666 & ~umask).
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.filename not in (None, tmp):  # another file's problem, raised inside the block
            raise
        kept = "the previous file is kept" if target.exists() else "nothing written"
        raise CaffeCompatError(f"{target}: cannot write the output: {exc.strerror or exc}; {kept}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)
