"""Caffe's LevelDB databases through plyvel: read them as a Data source, write features, convert.

LevelDB lets one process at a time open a database (it locks it), while training reads batches
in several worker processes; so a Data layer reads a LevelDB's records into memory once (keys in
order, values as they are), which suits the LevelDBs Caffe's examples make (MNIST siamese pairs,
CIFAR-10). One bigger than :data:`MAX_IN_MEMORY` gets a clear message naming the command that
turns it into an LMDB with the same keys and values (``caffe-compat convert-db``), which every
tool reads in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from caffe_compat.data.datum import datum_array, parse_datum, raw_datum_view
from caffe_compat.data.lmdb_writer import build_lmdb
from caffe_compat.errors import CaffeCompatError, where

MAX_IN_MEMORY = 2 << 30  # bytes of database files read into memory for training

# LevelDB's write-ahead log (db/log_format.h): 32 KiB blocks of records, each with a 7-byte
# header (checksum, 2-byte length, type); FIRST and MIDDLE fragments continue in the next record.
_LOG_BLOCK, _LOG_HEADER, _FIRST, _MIDDLE = 32768, 7, 2, 3


def is_leveldb(path: str | os.PathLike[str]) -> bool:
    """A LevelDB folder: it has CURRENT (and no LMDB data.mdb)."""
    p = Path(path)
    return (p / "CURRENT").is_file() and not (p / "data.mdb").exists()


def _log_cut_short(log: Path) -> bool:
    """Whether a LevelDB log ends inside a record. LevelDB itself drops such a tail without a
    word even with paranoid checks (it takes it for a write interrupted by a crash), and the
    records after the cut are lost; a database copied or downloaded short looks the same."""
    pending = False
    with open(log, "rb") as handle:
        while block := handle.read(_LOG_BLOCK):
            pos = 0
            while len(block) - pos >= _LOG_HEADER:
                length, kind = int.from_bytes(block[pos + 4:pos + 6], "little"), block[pos + 6]
                if kind == 0 and length == 0 and not any(block[pos:]):
                    break  # zero padding to the end of the block
                pos += _LOG_HEADER + length
                if pos > len(block):
                    return True
                pending = kind in (_FIRST, _MIDDLE)
            if len(block) < _LOG_BLOCK and pos < len(block):
                return True  # a header cut in two (a full block may end in up to 6 bytes of padding)
    return pending


def _reason(exc: Exception) -> str:
    """plyvel's message (it carries LevelDB's status as bytes)."""
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _open(path: Path, create: bool = False):
    import plyvel

    if not create:
        for log in sorted(path.glob("*.log")):
            if _log_cut_short(log):
                raise CaffeCompatError(f"{where(path)}: LevelDB log {log.name} ends inside a record (the file was cut "
                                       "short, e.g. by an interrupted copy): the records after the cut are lost")
    try:
        # paranoid_checks: a damaged record is an error, never silently skipped.
        return plyvel.DB(str(path), create_if_missing=create, error_if_exists=create, paranoid_checks=True)
    except (plyvel.Error, OSError) as exc:
        raise CaffeCompatError(f"{where(path)}: cannot open LevelDB: {_reason(exc)}") from None


def iter_leveldb(path: str | os.PathLike[str]) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) in key order (LevelDB's bytewise order, as LMDB's)."""
    p = Path(path)
    if not is_leveldb(p):
        raise CaffeCompatError(f"{where(p)}: not a LevelDB folder (no CURRENT file)")
    import plyvel

    db = _open(p)
    try:
        yield from db.iterator(verify_checksums=True)
    except plyvel.Error as exc:
        raise CaffeCompatError(f"{where(p)}: damaged LevelDB: {_reason(exc)}") from None
    finally:
        db.close()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


class LevelDBDataset:
    """A LevelDB's Datums by position in key order: ``(CxHxW array, label)`` (LMDBDataset's API)."""

    def __init__(self, path: str | os.PathLike[str], flag: int = -1) -> None:
        self.path = Path(path)
        self.flag = flag
        size = _size(self.path) if self.path.is_dir() else 0
        if size > MAX_IN_MEMORY:
            raise CaffeCompatError(
                f"{where(self.path)}: a LevelDB of {size / 2**30:.1f} GiB is too big to read into memory; convert it "
                f"once with `caffe-compat convert-db {self.path} {self.path}_lmdb` and use the LMDB as the source")
        records = list(iter_leveldb(self.path))
        self._keys = [k for k, _ in records]
        self._values = [v for _, v in records]

    def __len__(self) -> int:
        return len(self._values)

    def key(self, index: int) -> bytes:
        return self._keys[index]

    def value(self, index: int) -> bytes:
        return self._values[index]

    def datum(self, index: int):
        return parse_datum(self._values[index])

    def borrow(self, index: int) -> tuple[np.ndarray, int]:
        value = self._values[index]
        fast = raw_datum_view(memoryview(value))
        if fast is not None:
            return fast
        datum = parse_datum(value)
        try:
            return datum_array(datum, self.flag), datum.label
        except ValueError as exc:
            key = self.key(index).decode("utf-8", "backslashreplace")
            raise CaffeCompatError(f"{where(self.path)}: datum '{key}': {exc}") from None

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        image, label = self.borrow(index)
        return (image.copy() if not image.flags.owndata else image), label


@contextlib.contextmanager
def build_leveldb(target: str | os.PathLike[str]) -> Iterator:
    """``with build_leveldb(path) as db: db.put(k, v)``: written beside ``path`` and renamed into
    place only when complete (an existing ``path`` is an error, as Caffe's ``db::NEW``)."""
    path = Path(target)
    if path.exists() or path.is_symlink():
        raise CaffeCompatError(f"{where(path)}: already exists")
    if not path.parent.is_dir():
        raise CaffeCompatError(f"{where(path)}: folder '{path.parent}' does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        db = _open(tmp / "db", create=True)
        try:
            yield db
        finally:
            db.close()
        os.replace(tmp / "db", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_leveldb_to_lmdb(source: str | os.PathLike[str], target: str | os.PathLike[str],
                            overwrite: bool = False) -> int:
    """Copy every record of a LevelDB into a new LMDB (same keys, same values); the count,
    checked against what the LMDB holds before it is moved into place."""
    count = 0
    with build_lmdb(target, overwrite=overwrite) as db:
        for key, value in iter_leveldb(source):
            db.put(key, value)
            count += 1
        db.commit()
        written = db.env.stat()["entries"]
        if written != count:
            raise CaffeCompatError(f"{where(target)}: read {count} records from {source} but the LMDB holds "
                                   f"{written}; nothing written")
    return count
