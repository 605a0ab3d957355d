"""BlobProto <-> numpy, and .binaryproto files (mean images and other single blobs).

Shapes follow Caffe's ``Blob::FromProto``: a blob with any of the legacy num/channels/height/
width fields set is 4-d (num, channels, height, width) even if it also has ``shape``; otherwise
``shape.dim``. Values come from ``double_data`` when it is non-empty, else from ``data``;
``double_data`` stays float64, ``data`` is float32.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.binary import parse_binary
from caffe_compat.io.wire import BLOB_DATA, BLOB_DOUBLE_DATA, Payload, encode_length_delimited, split_blob, take_marker
from caffe_compat.proto import caffe_pb2

BLOB_DIFF, BLOB_DOUBLE_DIFF = 6, 9
_LEGACY_FIELDS = ("num", "channels", "height", "width")

# Copies ``len(dest)`` bytes found at byte ``offset`` of the source into ``dest``.
Reader = Callable[[int, memoryview], None]


def buffer_reader(buf: memoryview | bytes) -> Reader:
    view = memoryview(buf)

    def read(offset: int, dest: memoryview) -> None:
        dest[:] = view[offset : offset + len(dest)]

    return read


def file_reader(handle) -> Reader:
    """Reads straight into the destination array: the kernel copies from its page cache, so
    neither a mapping nor an intermediate bytes object adds to the process's memory."""

    def read(offset: int, dest: memoryview) -> None:
        handle.seek(offset)
        if handle.readinto(dest) != len(dest):
            raise CaffeCompatError(f"{handle.name}: file shrank while being read (byte {offset})")

    return read


class BlobShapeError(CaffeCompatError, ValueError):
    """A blob's values do not fill its shape: a located error for the CLI, and the ValueError
    pycaffe code expects (pycaffe's numpy reshape raises that)."""


def has_legacy_dims(blob: caffe_pb2.BlobProto) -> bool:
    return any(blob.HasField(name) for name in _LEGACY_FIELDS)


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """The shape Caffe gives this blob (legacy 4-d dims win over ``shape``)."""
    if has_legacy_dims(blob):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(blob.shape.dim)


def payload_array(payload: Payload, read: Reader, shape: Sequence[int], where: str) -> np.ndarray:
    """Assemble a blob's values from its payload chunks, without a per-value Python step."""
    chunks, dtype = (payload.double_data, "<f8") if payload.double_data else (payload.data, "<f4")
    itemsize = np.dtype(dtype).itemsize
    nbytes = sum(length for _, length in chunks)
    if nbytes % itemsize:
        raise CaffeCompatError(f"{where}: blob payload of {nbytes} bytes is not a whole number of values")
    count = nbytes // itemsize
    expected = math.prod(shape)
    if count != expected:
        raise BlobShapeError(
            f"{where}: shape {tuple(shape)} needs {expected} values but the blob holds {count}"
        )
    out = np.empty(count, dtype=dtype)
    dest = memoryview(out).cast("B")
    pos = 0
    for offset, length in chunks:
        read(offset, dest[pos : pos + length])
        pos += length
    return out.astype(np.float64 if dtype == "<f8" else np.float32, copy=False).reshape(tuple(shape))


def stripped_blob_to_array(blob: caffe_pb2.BlobProto, payloads: list[Payload], read: Reader, where: str) -> np.ndarray:
    """Values of a blob from a skeleton made by wire.strip_payloads (or of an ordinary blob)."""
    marker = take_marker(blob)
    if marker is None:
        return blob_to_array(blob, where)
    return payload_array(payloads[marker], read, blob_shape(blob), where)


def blob_to_array(blob: caffe_pb2.BlobProto, where: str = "blob") -> np.ndarray:
    """Values of ``blob`` as a numpy array of :func:`blob_shape`."""
    raw = blob.SerializeToString()
    _, payload = split_blob(memoryview(raw), 0, len(raw))
    return payload_array(payload, buffer_reader(raw), blob_shape(blob), where)


def raw_values(arr: np.ndarray, dtype: str) -> memoryview:
    """Little-endian bytes of ``arr`` as ``dtype`` (a view of its memory when no conversion is needed)."""
    return memoryview(np.ascontiguousarray(arr, dtype=dtype).reshape(-1).view(np.uint8))


def blob_header(shape: Sequence[int], legacy_dims: bool = False) -> caffe_pb2.BlobProto:
    """A BlobProto with ``shape`` and no values: legacy num/channels/height/width (at most 4
    axes, padded with leading 1s, as compute_image_mean writes them) or ``shape.dim``."""
    blob = caffe_pb2.BlobProto()
    shape = tuple(int(d) for d in shape)
    if legacy_dims:
        if len(shape) > 4:
            raise CaffeCompatError(f"legacy blob dims hold at most 4 axes, got shape {shape}")
        for name, dim in zip(_LEGACY_FIELDS, (1,) * (4 - len(shape)) + shape):
            setattr(blob, name, dim)
    elif shape:  # a 0-axis blob has no `shape` at all, as Blob::ToProto writes it
        blob.shape.dim.extend(shape)
    return blob


def array_to_blob(
    arr: np.ndarray, legacy_dims: bool = False, diff: np.ndarray | None = None, double: bool = False
) -> caffe_pb2.BlobProto:
    """A BlobProto holding ``arr`` (and optionally ``diff``), shaped as :func:`blob_header`.

    Values are stored as float32 ``data`` unless ``double`` (float64 ``double_data``, as
    Caffe's Blob<double> writes).
    """
    arr = np.asarray(arr)
    blob = blob_header(arr.shape, legacy_dims)
    dtype, data_field, diff_field = ("<f8", BLOB_DOUBLE_DATA, BLOB_DOUBLE_DIFF) if double else ("<f4", BLOB_DATA, BLOB_DIFF)
    encoded = encode_length_delimited(data_field, raw_values(arr, dtype))
    if diff is not None:
        diff = np.asarray(diff)
        if diff.shape != arr.shape:
            raise CaffeCompatError(f"blob diff shape {diff.shape} differs from data shape {arr.shape}")
        encoded += encode_length_delimited(diff_field, raw_values(diff, dtype))
    blob.MergeFromString(encoded)
    return blob


def read_binaryproto(path: str | os.PathLike[str]) -> np.ndarray:
    """The array in a .binaryproto file (e.g. a mean image: shape (1, C, H, W))."""
    kind = "BlobProto (.binaryproto)"
    try:
        blob = parse_binary(Path(path).read_bytes(), caffe_pb2.BlobProto, path, kind)
    except OSError as exc:
        raise CaffeCompatError(f"{os.fspath(path)}: cannot read: {exc.strerror}") from None
    except DecodeError:
        raise CaffeCompatError(f"{os.fspath(path)}: not a valid {kind}: its shape does not parse") from None
    return blob_to_array(blob, where=os.fspath(path))


def write_binaryproto(path: str | os.PathLike[str], arr: np.ndarray, legacy_dims: bool = False) -> None:
    """Write ``arr`` as a .binaryproto (``legacy_dims`` as compute_image_mean writes it)."""
    atomic_write_bytes(path, array_to_blob(arr, legacy_dims=legacy_dims).SerializeToString())
