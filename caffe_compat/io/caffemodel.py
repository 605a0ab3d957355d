"""Read and write .caffemodel files (binary NetParameter with the learned blobs).

``load_caffemodel`` is the fast path: blob payloads go from the file straight into numpy
arrays (one copy, no per-value Python step, no protobuf repeated containers), so a 528 MB
VGG-16 needs about 528 MB of memory. It returns the upgraded net *without* payloads (each
blob keeps its shape fields) plus an ordered mapping layer name -> list of arrays.
``read_caffemodel`` parses everything with protobuf, for byte-faithful tools like
upgrade-net-proto-binary.
"""

from __future__ import annotations

import math
import mmap
import os
from typing import Mapping, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from caffe_compat.atomic import atomic_write
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io import forks
from caffe_compat.io.binary import parse_binary, strip_binary
from caffe_compat.io.blob import (
    blob_header,
    blob_shape,
    file_reader,
    has_legacy_dims,
    raw_values,
    stripped_blob_to_array,
)
from caffe_compat.io.hdf5 import MAGIC as HDF5_MAGIC
from caffe_compat.io.hdf5 import is_hdf5, load_weights_hdf5
from caffe_compat.io.mapped import map_ended, map_started
from caffe_compat.io.upgrade import upgrade_net_on_read
from caffe_compat.io.wire import (
    BLOB,
    BLOB_DATA,
    BLOB_DOUBLE_DATA,
    LENGTH_DELIMITED,
    WireError,
    encode_key,
    encode_varint,
    iter_fields,
)
from caffe_compat.proto import caffe_pb2

Weights = dict[str, list[np.ndarray]]

_LAYER, _LAYERS = 100, 2  # NetParameter.layer (current), NetParameter.layers (V1)
# Where BlobProtos sit in a NetParameter: layer.blobs, layers.blobs, layers.layer.blobs (V0).
_NET_BLOBS = {_LAYER: {7: BLOB}, _LAYERS: {6: BLOB, 1: {50: BLOB}}}
_KIND = "Caffe NetParameter (.caffemodel)"


def _open_error(path: str, exc: OSError) -> CaffeCompatError:
    return CaffeCompatError(f"{path}: cannot read: {exc.strerror}")


def _locate_decode_error(raw: memoryview, path: str) -> CaffeCompatError:
    """protobuf says only "Error parsing message"; name the layer that breaks it."""
    layer_index = 0
    for f in iter_fields(raw, 0, len(raw)):
        if f.number not in (_LAYER, _LAYERS):
            continue
        cls, name_field = (caffe_pb2.LayerParameter, 1) if f.number == _LAYER else (caffe_pb2.V1LayerParameter, 4)
        try:
            cls.FromString(raw[f.value_start : f.end])
        except DecodeError:
            names = [bytes(raw[g.value_start : g.end]).decode("utf-8", "replace")
                     for g in iter_fields(raw, f.value_start, f.end) if g.number == name_field]
            label = f"'{names[0]}'" if names else "(unnamed)"
            return CaffeCompatError(f"{path}: not a valid {_KIND}: layer #{layer_index} {label} does not parse")
        layer_index += 1
    return CaffeCompatError(f"{path}: not a valid {_KIND}: protobuf cannot parse it")


def load_caffemodel(path: str | os.PathLike[str], upgrade: bool = True) -> tuple[caffe_pb2.NetParameter, Weights]:
    """The net (blobs without values) and its weights: layer name -> arrays, in file order.

    The net is upgraded as Caffe does on load unless ``upgrade`` is false; the weights of a
    V0/V1 file are then keyed by the names of its legacy ``layers``.

    Arrays have the file's blob shapes (legacy blobs are 4-d; see :func:`fit_blobs`) and are
    float32 (float64 for ``double_data`` blobs). Layers without blobs are not in the mapping.
    """
    path = os.fspath(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise _open_error(path, exc) from None
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise CaffeCompatError(f"{path}: not a valid {_KIND}: the file is empty")
        if handle.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
            raise CaffeCompatError(f"{path}: an HDF5 weights file (.caffemodel.h5), not a binary {_KIND}; "
                                   "it loads as weights (-weights, copy_from) but holds no net definition")
        map_started(path, "reading")
        try:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as buf:
                skeleton, payloads = strip_binary(buf, caffe_pb2.NetParameter, _NET_BLOBS, path, _KIND)
                skeleton = forks.net_to_ours(skeleton, _dialect(skeleton, path))
                try:
                    net = caffe_pb2.NetParameter.FromString(skeleton)
                except DecodeError:
                    raise _locate_decode_error(memoryview(skeleton), path) from None
                if upgrade:
                    upgrade_net_on_read(net, path)
                read = file_reader(handle)
                weights: Weights = {}
                for layer in _layers_with_blobs(net):
                    arrays = [
                        stripped_blob_to_array(blob, payloads, read, f"{path}: layer '{layer.name}' blob {i}")
                        for i, blob in enumerate(layer.blobs)
                    ]
                    if arrays:
                        weights[layer.name] = arrays
        finally:
            map_ended(path)
    return net, weights


def _dialect(raw: bytes | memoryview, path: str):
    """The file's dialect (caffe_compat.proto.dialects): --dialect, else told by its layers."""
    try:
        return forks.choose(raw)
    except CaffeCompatError as exc:
        raise CaffeCompatError(f"{path}: {exc}") from None
    except WireError:
        return forks.dialects.get("bvlc")  # the parse that follows names the broken byte


def caffemodel_dialect(path: str | os.PathLike[str]) -> str:
    """The name of the dialect a .caffemodel is read in (and is written back in as a template)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            with memoryview(mapped) as view:
                return _dialect(view, path).name
    except (OSError, ValueError) as exc:
        raise CaffeCompatError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _layers_with_blobs(net: caffe_pb2.NetParameter) -> list:
    """Current layers, or legacy V1 layers (their V0 ``layer`` when present), as stored."""
    legacy = [v1.layer if v1.HasField("layer") else v1 for v1 in net.layers]
    return list(net.layer) + legacy


def load_weights(path: str | os.PathLike[str]) -> Weights:
    """Ordered mapping layer name -> list of blob arrays (see :func:`load_caffemodel`); Caffe's
    HDF5 weights (``.caffemodel.h5``) too, recognised by their signature."""
    if is_hdf5(path):
        return load_weights_hdf5(path)
    return load_caffemodel(path)[1]


def read_caffemodel_raw(path: str | os.PathLike[str]) -> caffe_pb2.NetParameter:
    """The whole NetParameter as stored (no upgrade), parsed by protobuf."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        return parse_binary(forks.net_to_ours(raw, _dialect(raw, path)), caffe_pb2.NetParameter, path, _KIND)
    except DecodeError:
        raise _locate_decode_error(memoryview(raw), path) from None


def read_caffemodel(path: str | os.PathLike[str]) -> caffe_pb2.NetParameter:
    """The whole NetParameter, values included, upgraded (ReadNetParamsFromBinaryFileOrDie)."""
    net = read_caffemodel_raw(path)
    upgrade_net_on_read(net, path)
    return net


_BLOBS = 7  # LayerParameter.blobs


def _split_before(raw: bytes, descriptor, number: int) -> tuple[bytes, bytes]:
    """``raw`` cut where field ``number`` belongs: before the first later or unknown field
    (protobuf writes known fields in number order, unknown ones last)."""
    view = memoryview(raw)
    for f in iter_fields(view, 0, len(view)):
        if f.number > number or f.number not in descriptor.fields_by_number:
            return raw[: f.start], raw[f.start :]
    return raw, b""


def _blob_parts(template: caffe_pb2.BlobProto | None, array: np.ndarray) -> list[bytes | memoryview]:
    """Wire pieces of one BlobProto for ``array``, its values as a view of the array's memory.

    The blob keeps the template's shape style (legacy dims or ``shape``) when the counts agree.
    """
    array = np.asarray(array)
    legacy = template is not None and has_legacy_dims(template) and math.prod(blob_shape(template)) == array.size
    double = array.dtype == np.float64
    shape = blob_shape(template) if legacy else array.shape
    header = blob_header(shape, legacy_dims=legacy).SerializeToString()
    field_number = BLOB_DOUBLE_DATA if double else BLOB_DATA
    before, after = _split_before(header, caffe_pb2.BlobProto.DESCRIPTOR, field_number)
    values = raw_values(array, "<f8" if double else "<f4")
    return [before, encode_key(field_number, LENGTH_DELIMITED) + encode_varint(len(values)), values, after]


def _layer_parts(layer: caffe_pb2.LayerParameter, arrays: Sequence[np.ndarray],
                 dialect: forks.Dialect) -> list[bytes | memoryview]:
    """Wire pieces of ``layer`` with its blobs replaced by ``arrays`` (values not copied),
    fork fields at ``dialect``'s numbers."""
    bare = caffe_pb2.LayerParameter()
    bare.CopyFrom(layer)
    del bare.blobs[:]
    before, after = _split_before(bare.SerializeToString(), caffe_pb2.LayerParameter.DESCRIPTOR, _BLOBS)
    parts: list[bytes | memoryview] = [before]
    for i, array in enumerate(arrays):
        blob = _blob_parts(layer.blobs[i] if i < len(layer.blobs) else None, array)
        parts.append(encode_key(_BLOBS, LENGTH_DELIMITED) + encode_varint(sum(len(p) for p in blob)))
        parts += blob
    parts.append(forks.layer_to_fork(after, layer.type, dialect))
    return parts


def write_caffemodel(
    path: str | os.PathLike[str], net: caffe_pb2.NetParameter, weights: Mapping[str, Sequence[np.ndarray]] | None = None,
    dialect: str | None = None,
) -> None:
    """Write ``net`` as a .caffemodel, its blobs replaced by ``weights`` where given.

    Without ``weights`` the file is exactly ``net.SerializeToString()``. With them, the bytes
    are those of serialising the merged NetParameter, but written piece by piece with each
    array's memory as the payload: writing a 528 MB model needs no second copy of it.
    Float64 arrays are stored as ``double_data``; cast to float32 for the usual file. Fork
    fields go to ``dialect``'s numbers (default: the fork their fields need; see
    :func:`caffe_compat.io.forks.dialect_of_net`).
    """
    path = os.fspath(path)
    fork = forks.dialect_of_net(net, dialect)
    if weights is None:
        if not fork.moves or len(net.layers):
            with atomic_write(path) as handle:
                handle.write(net.SerializeToString())
            return
        weights = {}
    names = {layer.name for layer in net.layer}
    unknown = [name for name in weights if name not in names]
    if unknown:
        raise CaffeCompatError(f"{path}: weights name layers not in the net: {', '.join(unknown)}")
    if len(net.layers):
        raise CaffeCompatError(f"{path}: upgrade the V1 net before writing weights into it")
    header = caffe_pb2.NetParameter()
    header.CopyFrom(net)
    header.ClearField("layer")
    before, after = _split_before(header.SerializeToString(), caffe_pb2.NetParameter.DESCRIPTOR, _LAYER)
    layer_key = encode_key(_LAYER, LENGTH_DELIMITED)
    with atomic_write(path) as handle:
        handle.write(before)
        for layer in net.layer:
            if layer.name in weights:
                parts = _layer_parts(layer, weights[layer.name], fork)
            else:
                parts = [forks.layer_to_fork(layer.SerializeToString(), layer.type, fork)]
            handle.write(layer_key + encode_varint(sum(len(p) for p in parts)))
            for part in parts:
                handle.write(part)
        handle.write(after)


def fit_blobs(
    layer: str, arrays: Sequence[np.ndarray], target_shapes: Sequence[Sequence[int]], source: str | os.PathLike[str]
) -> list[np.ndarray]:
    """Check a caffemodel layer's arrays against the net's blob shapes, as Net::CopyTrainedLayersFrom.

    A legacy 4-d blob matches a target of up to 4 axes whose shape padded with leading 1s
    equals it (Caffe's Blob::ShapeEquals); it is reshaped to the target.
    """
    source = os.fspath(source)
    if len(arrays) != len(target_shapes):
        raise CaffeCompatError(
            f"{source}: layer '{layer}': the caffemodel has {len(arrays)} blobs but the net's layer needs "
            f"{len(target_shapes)}"
        )
    fitted = []
    for i, (array, target) in enumerate(zip(arrays, target_shapes)):
        target = tuple(int(d) for d in target)
        legacy_match = array.ndim == 4 and len(target) <= 4 and (1,) * (4 - len(target)) + target == array.shape
        if array.shape != target and not legacy_match:
            raise CaffeCompatError(
                f"{source}: layer '{layer}': cannot copy param {i}: shape mismatch, the caffemodel has "
                f"{array.shape} but the net needs {target} (rename the layer to learn it from scratch)"
            )
        fitted.append(array.reshape(target))
    return fitted
