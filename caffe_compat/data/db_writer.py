"""A new Caffe database of either backend (Caffe's ``db::GetDB(backend)`` + ``db::NEW``).

Caffe's tools take ``--backend lmdb|leveldb`` and write the same keys and values to either;
so do ours, atomically in both cases (built under a temporary name beside the target, renamed
into place only when complete). ``overwrite`` replaces only a database of the same backend.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Protocol

from caffe_compat.data.leveldb import build_leveldb, is_leveldb
from caffe_compat.data.lmdb_writer import build_lmdb, check_target
from caffe_compat.errors import CaffeCompatError, where

BACKENDS = ("lmdb", "leveldb")


class DBWriter(Protocol):
    def put(self, key: bytes, value: bytes) -> None: ...


def check_backend(backend: str) -> str:
    """The backend's name, or Caffe's ``Unknown database backend`` as one clear error."""
    if backend.lower() not in BACKENDS:
        raise CaffeCompatError(f"--backend {backend}: unknown database backend (Caffe's are lmdb and leveldb)")
    return backend.lower()


def check_db_target(target: str | os.PathLike[str], backend: str, overwrite: bool = False) -> None:
    """Refuse, before any work, a target :func:`build_db` would refuse at the end."""
    path = Path(target)
    if check_backend(backend) == "lmdb":
        check_target(path, overwrite)
        return
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise CaffeCompatError(f"{where(path)}: already exists (pass --overwrite to replace it)")
        if path.is_symlink() or not is_leveldb(path):
            raise CaffeCompatError(f"{where(path)}: exists and is not a LevelDB folder; --overwrite replaces "
                                   "only a LevelDB, remove it yourself if you mean it")
    if not path.parent.is_dir():
        raise CaffeCompatError(f"{where(path)}: parent directory {str(path.parent)!r} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CaffeCompatError(f"{where(path)}: cannot write into {str(path.parent)!r} (permission denied)")


@contextlib.contextmanager
def build_db(target: str | os.PathLike[str], backend: str, overwrite: bool = False) -> Iterator[DBWriter]:
    """``with build_db(path, "leveldb") as db: db.put(k, v)``: the finished database appears at
    ``path`` only when the block completes; on any error nothing (or the old one) is there."""
    path = Path(target)
    if check_backend(backend) == "lmdb":
        with build_lmdb(path, overwrite) as db:  # which makes its own checks
            yield db
        return
    check_db_target(path, backend, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent))
    try:
        with build_leveldb(staging / "db") as db:
            yield db
        check_db_target(path, backend, overwrite)  # still replaceable after the (long) build
        old = staging / "old"
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(staging / "db", path)
        except BaseException:
            if old.exists():
                os.replace(old, path)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
