"""An LMDB's ``data.mdb`` checked with plain reads before LMDB maps it.

LMDB maps the file and trusts its meta pages: a ``data.mdb`` cut short (an interrupted copy,
a full disk) is mapped past its end, and the first read there kills the process with SIGBUS
instead of raising anything. Reading the two meta pages ourselves tells how long the file
must be, so a truncated database is reported as truncated before LMDB touches it (a file
damaged inside can still fault: see :mod:`caffe_compat.io.mapped`).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from caffe_compat.errors import CaffeCompatError, where

MAGIC = 0xBEEFC0DE
_PAGE_HEADER = 16  # pgno (8), pad (2), flags (2), lower/upper (4)
_P_META = 0x08
_MIN_PAGE, _MAX_PAGE = 512, 65536
# MDB_meta after the page header (64-bit LMDB): magic, version, address, mapsize, then two
# MDB_db of 48 bytes (the free DB's md_pad is the page size), last_pg, txnid.
_META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")


@dataclass(frozen=True)
class LmdbMeta:
    """What the newest meta page of a ``data.mdb`` says, and the file's actual size."""

    page_size: int
    last_page: int
    entries: int
    file_size: int

    @property
    def needed(self) -> int:
        """Bytes the file must hold: every page up to the last one used."""
        return (self.last_page + 1) * self.page_size


def _meta(page: bytes) -> tuple[int, int, int, int] | None:
    """(page size, last page, entries, txnid) of a meta page, None if it is not one."""
    if len(page) < _PAGE_HEADER + _META.size:
        return None
    flags = struct.unpack_from("<H", page, 10)[0]
    fields = _META.unpack_from(page, _PAGE_HEADER)
    if fields[0] != MAGIC or not flags & _P_META:
        return None
    page_size, main_entries, last_page, txnid = fields[4], fields[18], fields[20], fields[21]
    return page_size, last_page, main_entries, txnid


def read_meta(folder: str | os.PathLike[str]) -> LmdbMeta:
    """The newest meta page of ``folder/data.mdb``; a clear error if it is not an LMDB or is
    shorter than its meta pages say (truncated)."""
    folder = Path(folder)
    data = folder / "data.mdb"
    try:
        with open(data, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            first = handle.read(_MAX_PAGE)
            meta0 = _meta(first)
            if meta0 is None or not _MIN_PAGE <= meta0[0] <= _MAX_PAGE or meta0[0] & (meta0[0] - 1):
                what = "empty" if not size else "not an LMDB data file (no LMDB header)"
                raise CaffeCompatError(f"{where(data)}: {what}")
            page_size = meta0[0]
            handle.seek(page_size)
            meta1 = _meta(handle.read(page_size))
    except FileNotFoundError:
        what = "does not exist" if not folder.exists() else "is not an LMDB folder (no data.mdb)"
        raise CaffeCompatError(f"{where(folder)}: {what}") from None
    except IsADirectoryError:
        raise CaffeCompatError(f"{where(data)}: is a folder, not an LMDB data file") from None
    except OSError as exc:
        raise CaffeCompatError(f"{where(data)}: cannot read: {exc.strerror}") from None
    if meta1 is None:
        raise CaffeCompatError(f"{where(data)}: truncated or damaged: its second meta page is missing "
                               f"(the file has {size} bytes)")
    newest = max((meta0, meta1), key=lambda m: m[3])
    meta = LmdbMeta(page_size, newest[1], newest[2], size)
    if size < meta.needed:
        raise CaffeCompatError(
            f"{where(data)}: truncated: the file has {size:,} bytes but its database needs {meta.needed:,} "
            f"({meta.last_page + 1:,} pages of {page_size}); it was cut short (copy it again or rebuild it)")
    return meta


def is_lmdb_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds an LMDB and nothing else (``data.mdb`` starting with an LMDB
    meta page, truncated or not, and maybe ``lock.mdb``)."""
    folder = Path(folder)
    try:
        names = set(os.listdir(folder))
        if "data.mdb" not in names or not names <= {"data.mdb", "lock.mdb"}:
            return False
        with open(folder / "data.mdb", "rb") as handle:
            return _meta(handle.read(_PAGE_HEADER + _META.size)) is not None
    except OSError:
        return False
