"""Reading Caffe Datum LMDBs: a streaming cursor and a PyTorch ``Dataset``.

Environments are opened read-only with ``lock=False`` (Caffe's own readers never write, and a
read-only mount or another process's lock file must not stop training) and lazily, once per
process and database: LMDB (and py-lmdb's guard) forbid opening the same files twice in one
process, so every reader shares one handle, and a handle inherited through ``fork`` (DataLoader
workers) is dropped and reopened in the child, never used there.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Iterator

import lmdb
import numpy as np

from caffe_compat.data.datum import datum_array, parse_datum, raw_datum_view
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.io.lmdb_file import read_meta
from caffe_compat.io.mapped import map_ended, map_started
from caffe_compat.proto import caffe_pb2


class SharedEnv:
    """One process's read-only handle on one LMDB, closed as soon as nothing uses it."""

    def __init__(self, env: lmdb.Environment, path: Path) -> None:
        self.env = env
        self.path = path
        self.pid = os.getpid()
        map_started(path / "data.mdb", "reading")

    def __del__(self) -> None:
        self.env.close()
        map_ended(self.path / "data.mdb")


_OPEN: "weakref.WeakValueDictionary[tuple, SharedEnv]" = weakref.WeakValueDictionary()


def open_readonly(path: str | os.PathLike[str]) -> SharedEnv:
    """This process's shared read-only handle on an LMDB directory, or a clear error naming it.

    Keep the returned object while reading; the environment closes when the last user drops it.
    """
    p = Path(path)
    data = p / "data.mdb"
    read_meta(p)  # a truncated file would be mapped past its end: SIGBUS on the first read there
    st = data.stat()
    key = (os.path.realpath(p), st.st_dev, st.st_ino)
    shared = _OPEN.get(key)
    if shared is not None and shared.pid == os.getpid():
        return shared
    if shared is not None:  # inherited through fork: release the parent's mapping, never use it
        shared.env.close()
    try:
        env = lmdb.open(str(p), readonly=True, lock=False, meminit=False, max_readers=512)
    except lmdb.Error as exc:
        raise CaffeCompatError(f"{where(p)}: cannot open LMDB: {exc}") from None
    shared = _OPEN[key] = SharedEnv(env, p)
    return shared


def iter_records(path: str | os.PathLike[str], buffers: bool = False) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) in key order, streamed (bounded memory whatever the DB size).

    ``buffers=True`` yields zero-copy memoryviews, valid only until the next item: for callers
    that consume each value at once (the mean), it saves copying every datum.
    """
    shared = open_readonly(path)
    try:
        with shared.env.begin(buffers=buffers) as txn:
            yield from txn.cursor()
    except lmdb.Error as exc:
        raise CaffeCompatError(f"{where(path)}: damaged LMDB: {exc}") from None


def count_records(path: str | os.PathLike[str]) -> int:
    shared = open_readonly(path)  # held while in use: dropping it closes the environment
    return shared.env.stat()["entries"]


class LMDBDataset:
    """Datums of a Caffe LMDB by position in key order: ``(CxHxW array, label)``.

    A map-style dataset (``__len__`` + ``__getitem__``) that torch's DataLoader takes as it is;
    it does not subclass torch's ``Dataset`` so that LMDB-only tools (compute-image-mean,
    inspect) start without importing torch.

    The keys are read once at construction into one bytes blob plus offsets (an ImageNet-sized
    DB costs a few tens of MB, pickles to spawned workers quickly and is not touched page by
    page by reference counting in forked ones); each process opens its own environment on
    first access. ``flag`` is the OpenCV decode mode for encoded datums.
    """

    def __init__(self, path: str | os.PathLike[str], flag: int = -1) -> None:
        self.path = Path(path)
        self.flag = flag
        shared = open_readonly(self.path)
        try:
            with shared.env.begin() as txn:
                keys = list(txn.cursor().iternext(keys=True, values=False))
        except lmdb.Error as exc:
            raise CaffeCompatError(f"{where(self.path)}: damaged LMDB: {exc}") from None
        self._key_blob = b"".join(keys)
        self._key_ends = np.cumsum([len(k) for k in keys], dtype=np.int64)
        self._shared: SharedEnv | None = None
        self._txn: lmdb.Transaction | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_shared=None, _txn=None, _pid=-1)
        return state

    def __len__(self) -> int:
        return len(self._key_ends)

    def key(self, index: int) -> bytes:
        """The LMDB key of the record at ``index`` (position in key order)."""
        start = int(self._key_ends[index - 1]) if index else 0
        return self._key_blob[start : int(self._key_ends[index])]

    @property
    def keys(self) -> list[bytes]:
        return [self.key(i) for i in range(len(self))]

    def _view(self, index: int) -> memoryview:
        """The serialized Datum at ``index``, zero-copy: valid while this dataset lives here."""
        if self._pid != os.getpid():
            self._txn = None  # never reuse a transaction inherited through fork (NOLOCK: dropping it is local)
            self._shared = open_readonly(self.path)
            self._txn = self._shared.env.begin(buffers=True)
            self._pid = os.getpid()
        key = self.key(index)
        try:
            value = self._txn.get(key)
        except lmdb.Error as exc:
            raise self._error(index, f"damaged LMDB: {exc}") from None
        if value is None:
            raise CaffeCompatError(f"{where(self.path)}: key {key!r} vanished")
        return value

    def value(self, index: int) -> bytes:
        """The serialized Datum at ``index``."""
        return bytes(self._view(index))

    def borrow(self, index: int) -> tuple[np.ndarray, int]:
        """Like ``self[index]`` but raw datums come as read-only views into the database map,
        valid only while this dataset lives in this process (what batch building needs)."""
        value = self._view(index)
        fast = raw_datum_view(value)
        if fast is not None:
            return fast
        datum = self.datum(index, value)
        try:
            return datum_array(datum, self.flag), datum.label
        except ValueError as exc:
            raise self._error(index, exc) from None

    def datum(self, index: int, value: memoryview | None = None) -> caffe_pb2.Datum:
        """The parsed Datum at ``index``; an error naming its key if it is not one."""
        try:
            return parse_datum(bytes(self._view(index) if value is None else value))
        except ValueError as exc:
            raise self._error(index, exc) from None

    def _error(self, index: int, exc: Exception | str) -> CaffeCompatError:
        key = self.key(index).decode("utf-8", "backslashreplace")
        return CaffeCompatError(f"{where(self.path)}: record '{key}': {exc}")

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        image, label = self.borrow(index)
        return (image.copy() if not image.flags.owndata else image), label
