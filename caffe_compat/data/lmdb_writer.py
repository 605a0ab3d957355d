"""Building an LMDB atomically: never a half-written database under the user's name.

The database is written in a temporary directory beside the target and renamed into place
only when complete, so Ctrl-C, a crash or ``kill -9`` leaves the previous state (old DB or
nothing) intact. A kill -9 can leave a ``.<name>.<host>-<pid>.*.tmp`` directory behind; the
next build of the same target removes it once that process is gone. The map size grows
automatically (doubling) instead of failing with ``MDB_MAP_FULL``.

Values go straight into LMDB's writable map, and a page of a sparse file first touched on a
full disk kills the process with SIGBUS instead of failing a write. So the disk space each
commit can take is allocated (``posix_fallocate``) before the commit: a full disk is then a
clear error and the temporary directory is removed. ``--overwrite`` replaces only an LMDB
(a folder holding ``data.mdb`` and perhaps ``lock.mdb``, nothing else) or an empty folder.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import lmdb

from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.io.lmdb_file import is_lmdb_folder
from caffe_compat.io.mapped import map_ended, map_started

log = logging.getLogger(__name__)
INITIAL_MAP_SIZE = 1 << 30


def _owner_tag() -> str:
    """``<host>-<pid>``: in temporary names, so a later run can tell whether their maker still runs."""
    return f"{_HOST}-{os.getpid()}"


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_STALE = re.compile(r"\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.(?P<kind>tmp|old)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(target: Path) -> None:
    """Remove the temporary folders an interrupted build of ``target`` left behind (its process
    is gone), restoring a previous DB that an interrupted ``--overwrite`` had moved aside."""
    prefix = f".{target.name}."
    try:
        names = [n for n in os.listdir(target.parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        found = _STALE.fullmatch(name[len(prefix) - 1 :])
        if found is None or found["host"] != _HOST or _alive(int(found["pid"])):
            continue
        stale = target.parent / name
        if found["kind"] == "old" and (stale / "db").is_dir() and not target.exists():
            os.replace(stale / "db", target)
            log.warning(f"{where(target)}: restored the previous database, moved aside by a build that was interrupted")
        shutil.rmtree(stale, ignore_errors=True)
        log.warning(f"{where(target)}: removed {name}, left by a build that was interrupted (pid {found['pid']})")


class LMDBBuilder:
    """Collects (key, value) pairs into a temporary LMDB; :meth:`finish` renames it into place."""

    def __init__(self, target: Path, map_size: int = INITIAL_MAP_SIZE, commit_every: int = 1000) -> None:
        self.target = target
        self.commit_every = commit_every
        self.map_size = map_size
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_owner_tag()}.", suffix=".tmp", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # a normal directory once renamed, not mkdtemp's 0700
        map_started(self.tmp / "data.mdb", "writing")
        self.data_fd = -1
        try:
            # writemap: values go straight into the map (a third of the CPU of a malloc'd copy);
            # its crash-safety caveat does not matter for a DB that is only renamed once complete.
            self.env = lmdb.open(str(self.tmp), map_size=map_size, subdir=True, meminit=False,
                                 map_async=True, sync=False, writemap=True)
            self.page_size = self.env.stat()["psize"]
            self.data_fd = os.open(self.tmp / "data.mdb", os.O_RDWR)
        except BaseException:
            if hasattr(self, "env"):
                self.env.close()
            map_ended(self.tmp / "data.mdb")
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.pending: list[tuple[bytes, bytes]] = []
        self.count = 0

    def put(self, key: bytes, value: bytes) -> None:
        self.pending.append((key, value))
        if len(self.pending) >= self.commit_every:
            self.commit()

    def _reserve(self) -> None:
        """Allocate on disk every page the pending pairs can take (see the module docstring).

        An upper bound: a value too big for a leaf takes whole overflow pages and its key a
        leaf node; leaves split half full, so inline pairs count twice; plus pages for the
        branches and free list a transaction rewrites.
        """
        page = self.page_size
        inline_max = (page - 16) // 2 - 10
        need = 64 * page
        for key, value in self.pending:
            if len(key) + len(value) + 8 > inline_max:
                need += -(-(len(value) + 16) // page) * page + 2 * (len(key) + 24)
            else:
                need += 2 * (len(key) + len(value) + 16)
        used = (self.env.info()["last_pgno"] + 1) * page
        need = min(need, self.map_size - used)
        if need <= 0 or not hasattr(os, "posix_fallocate"):  # macOS has none: pages fault in as they come
            return
        try:
            os.posix_fallocate(self.data_fd, used, need)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                return  # a file system that cannot reserve space: write without reserving, as before
            raise CaffeCompatError(
                f"{where(self.target)}: cannot write the database: {exc.strerror} "
                f"(needed {need:,} more bytes in {str(self.target.parent)!r}); nothing written") from None

    def commit(self) -> None:
        """Write the pending pairs in one transaction, doubling the map until they fit."""
        while self.pending:
            self._reserve()
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
            except lmdb.Error as exc:
                raise CaffeCompatError(f"{where(self.target)}: cannot write the database: {exc}; nothing written") from None
            self.count += len(self.pending)
            self.pending.clear()

    def finish(self, overwrite: bool) -> None:
        """Commit, flush to disk and move the finished DB to the target name."""
        self.commit()
        try:
            self.env.sync(True)
            used = (self.env.info()["last_pgno"] + 1) * self.page_size
            self.close()
            data = self.tmp / "data.mdb"
            if data.stat().st_size > used:  # writemap sized the file to the whole map; keep what is used
                os.truncate(data, used)
        except (OSError, lmdb.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc
            raise CaffeCompatError(f"{where(self.target)}: cannot write the database: {reason}; nothing written") from None
        if self.target.exists() or self.target.is_symlink():
            if not overwrite:
                raise CaffeCompatError(f"{where(self.target)}: already exists (pass --overwrite to replace it)")
            check_replaceable(self.target)
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.{_owner_tag()}.", suffix=".old",
                                        dir=self.target.parent))
            os.replace(self.target, old / "db")
            try:
                os.replace(self.tmp, self.target)
            except BaseException:
                os.replace(old / "db", self.target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)

    def close(self) -> None:
        """Close the environment and the file handle used for reserving space (idempotent)."""
        with contextlib.suppress(lmdb.Error):
            self.env.close()
        if self.data_fd >= 0:
            os.close(self.data_fd)
            self.data_fd = -1
        map_ended(self.tmp / "data.mdb")

    def abort(self) -> None:
        self.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_replaceable(target: Path) -> None:
    """``--overwrite`` replaces an LMDB or an empty folder, never anything else: a slip of the
    DB argument (the image folder, a home directory) must not delete a user's files."""
    if target.is_symlink() or not target.is_dir():
        raise CaffeCompatError(f"{where(target)}: exists and is not an LMDB folder; will not replace it")
    try:
        names = sorted(os.listdir(target))
    except OSError as exc:
        raise CaffeCompatError(f"{where(target)}: cannot look inside: {exc.strerror}; will not replace it") from None
    if names and not is_lmdb_folder(target):
        others = [n for n in names if n not in ("data.mdb", "lock.mdb")]
        shown = ", ".join(repr(n) for n in others[:3]) + (", ..." if len(others) > 3 else "")
        what = f"it holds {len(names)} entries ({shown})" if others else "its data.mdb is not an LMDB file"
        raise CaffeCompatError(f"{where(target)}: is not an LMDB ({what}); --overwrite replaces only an "
                               "LMDB, remove it yourself if you mean it")


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse an existing target (unless overwrite, and then only an LMDB) or an unwritable
    parent before any work (after clearing what interrupted builds of it left)."""
    remove_stale(target)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise CaffeCompatError(f"{where(target)}: already exists (pass --overwrite to replace it)")
    if target.exists() or target.is_symlink():
        check_replaceable(target)
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
    except (OSError, lmdb.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise CaffeCompatError(f"{where(path)}: cannot create the database: {reason}") from None
    try:
        yield builder
        builder.finish(overwrite)
    except BaseException:
        builder.abort()
        raise
