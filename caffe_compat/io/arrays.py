"""NumPy ``.npy`` / ``.npz`` files read with their headers checked before anything is allocated.

``np.load`` trusts a header: one declaring a petabyte array allocates it (a MemoryError, or
the machine swapping) before finding the file is short, and an array of Python objects is
refused with a ValueError that names no file. Here the header is read first; the array must
hold plain numbers and fit in the bytes the file (or the .npz member) actually has.
"""

from __future__ import annotations

import os
import zipfile
from typing import IO

import numpy as np

from caffe_compat.errors import CaffeCompatError

_DEFLATE_MAX_RATIO = 1032  # deflate never unpacks more than this per byte


def _checked_array(handle: IO[bytes], available: int, where: str) -> np.ndarray:
    """Read one .npy stream of ``available`` bytes, header first."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:  # 2.0 and 3.0 share the layout (3.0 allows UTF-8 in field names)
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    except (ValueError, EOFError, OSError) as exc:
        raise CaffeCompatError(f"{where}: not a .npy file ({exc})") from None
    if dtype.hasobject:
        raise CaffeCompatError(f"{where}: holds Python objects ({dtype}), not numbers; refused (loading them "
                               "could run code)")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    left = available - handle.tell()
    if needed > left:
        raise CaffeCompatError(f"{where}: its header declares a {dtype} array of shape {tuple(shape)} "
                               f"({needed:,} bytes) but only {max(left, 0):,} bytes follow (truncated or damaged)")
    array = np.empty(shape, dtype, order="F" if fortran else "C")
    view = memoryview(array.reshape(-1, order="A").view(np.uint8)) if needed else memoryview(b"")
    filled = 0
    while filled < needed:
        got = handle.readinto(view[filled:])
        if not got:
            raise CaffeCompatError(f"{where}: ends after {filled:,} of its {needed:,} bytes (truncated)")
        filled += got
    return array


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """The array in a .npy file (see the module docstring)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            return _checked_array(handle, os.fstat(handle.fileno()).st_size, path)
    except FileNotFoundError:
        raise CaffeCompatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaffeCompatError(f"{path}: is a folder") from None
    except OSError as exc:
        raise CaffeCompatError(f"{path}: cannot read: {exc.strerror}") from None


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Name -> array of every ``.npy`` member of an .npz (see the module docstring)."""
    path = os.fspath(path)
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                where = f"{path}: array '{name}'"
                if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > info.compress_size * _DEFLATE_MAX_RATIO:
                    raise CaffeCompatError(f"{where}: claims to unpack to {info.file_size:,} bytes from "
                                           f"{info.compress_size:,} (damaged or a zip bomb)")
                with archive.open(info) as member:
                    arrays[name] = _checked_array(member, info.file_size, where)
    except FileNotFoundError:
        raise CaffeCompatError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
        raise CaffeCompatError(f"{path}: not a readable .npz ({exc})") from None
    except OSError as exc:
        raise CaffeCompatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return arrays


def is_npz(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zip archive (an .npz) rather than a lone .npy."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False
