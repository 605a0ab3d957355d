"""Building an LMDB atomically: never a half-written database under the user's name.

The database is written in a temporary directory beside the target and renamed into place
only when complete, so Ctrl-C, a crash or ``kill -9`` leaves the previous state (old DB or
nothing) intact; a kill -9 can only leave a ``.<name>.*.tmp`` directory behind. The map size
grows automatically (doubling) instead of failing with ``MDB_MAP_FULL``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import lmdb

from caffe_compat.errors import CaffeCompatError, where

INITIAL_MAP_SIZE = 1 << 30


class LMDBBuilder:
    """Collects (key, value) pairs into a temporary LMDB; :meth:`finish` renames it into place."""

    def __init__(self, target: Path, map_size: int = INITIAL_MAP_SIZE, commit_every: int = 1000) -> None:
        self.target = target
        self.commit_every = commit_every
        self.map_size = map_size
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # a normal directory once renamed, not mkdtemp's 0700
        # writemap: values go straight into the map (a third of the CPU of a malloc'd copy);
        # its crash-safety caveat does not matter for a DB that is only renamed once complete.
        self.env = lmdb.open(str(self.tmp), map_size=map_size, subdir=True, meminit=False,
                             map_async=True, sync=False, writemap=True)
        self.pending: list[tuple[bytes, bytes]] = []
        self.count = 0

    def put(self, key: bytes, value: bytes) -> None:
        self.pending.append((key, value))
        if len(self.pending) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Write the pending pairs in one transaction, doubling the map until they fit."""
        while self.pending:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key, value)
            except lmdb.MapFullError:
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)
                continue
            except lmdb.BadValsizeError:
                bad = next(k for k, _ in self.pending if len(k) > self.env.max_key_size())
                raise CaffeCompatError(
                    f"{where(self.target)}: key {bad[:60]!r}... is {len(bad)} bytes, LMDB allows "
                    f"{self.env.max_key_size()} (shorten the file names in the list)"
                ) from None
            self.count += len(self.pending)
            self.pending.clear()

    def finish(self, overwrite: bool) -> None:
        """Commit, flush to disk and move the finished DB to the target name."""
        self.commit()
        self.env.sync(True)
        used = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        self.env.close()
        data = self.tmp / "data.mdb"
        if data.stat().st_size > used:  # writemap sized the file to the whole map; keep what is used
            os.truncate(data, used)
        if self.target.exists():
            if not overwrite:
                raise CaffeCompatError(f"{where(self.target)}: already exists (pass --overwrite to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".old", dir=self.target.parent))
            os.replace(self.target, old / "db")
            try:
                os.replace(self.tmp, self.target)
            except BaseException:
                os.replace(old / "db", self.target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)

    def abort(self) -> None:
        with contextlib.suppress(lmdb.Error):
            self.env.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse an existing target (unless overwrite) or an unwritable parent before any work."""
    if target.exists() and not overwrite:
        raise CaffeCompatError(f"{where(target)}: already exists (pass --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise CaffeCompatError(f"{where(target)}: exists and is not a directory; will not replace it")
    parent = target.parent
    if not parent.is_dir():
        raise CaffeCompatError(f"{where(target)}: parent directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CaffeCompatError(f"{where(target)}: cannot write into {str(parent)!r} (permission denied)")


@contextlib.contextmanager
def build_lmdb(target: str | os.PathLike[str], overwrite: bool = False,
               map_size: int = INITIAL_MAP_SIZE) -> Iterator[LMDBBuilder]:
    """``with build_lmdb(path) as db: db.put(k, v)`` -- renamed into place only on success."""
    path = Path(target)
    check_target(path, overwrite)
    try:
        builder = LMDBBuilder(path, map_size)
    except OSError as exc:
        raise CaffeCompatError(f"{where(path)}: cannot create the database: {exc.strerror}") from None
    try:
        yield builder
        builder.finish(overwrite)
    except BaseException:
        builder.abort()
        raise
