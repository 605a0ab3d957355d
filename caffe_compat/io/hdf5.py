"""Caffe's HDF5 files through h5py: ``.caffemodel.h5``, ``.solverstate.h5``, HDF5Data sources.

Layouts are Caffe's (``Net::ToHDF5``, ``SGDSolver::SnapshotSolverStateToHDF5``):

- weights: group ``data``, one group per layer, datasets ``"0"``, ``"1"``, ... in blob
  order; a blob shared with an earlier layer (a named ParamSpec) is written only by its owner;
- solver state: int datasets ``iter`` and ``current_step`` (shape (1,)), string dataset
  ``learned_net``, group ``history`` with datasets ``"0"``, ``"1"``, ...;
- data files: one dataset per top of the HDF5Data layer, rows along axis 0.

Reading never follows anything out of the file: only hard links, numeric datasets stored in
the file itself (no external or virtual storage), so a file can make us read nothing but its
own numbers. Writes go through :func:`caffe_compat.atomic.atomic_write`.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from caffe_compat.atomic import atomic_write
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.blob import blob_to_array
from caffe_compat.io.inputs import check_regular

MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_VALUES = 2**31 - 1  # Caffe's Blob::Reshape CHECK_LE(count_, INT_MAX)
MAX_EXPANSION = 1100  # bytes of values per stored byte of a compressed (filtered) dataset


def is_hdf5(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with the HDF5 signature (how Caffe's files are laid out)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


@contextlib.contextmanager
def open_hdf5(path: str | os.PathLike[str], what: str) -> Iterator[Any]:
    """``path`` opened read-only with h5py; one clear line when it cannot be."""
    import h5py

    path = os.fspath(path)
    check_regular(path, what)
    if not is_hdf5(path):
        raise CaffeCompatError(f"{path}: not an HDF5 file (no HDF5 signature at its start); expected {what}")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise CaffeCompatError(f"{path}: cannot open {what}: {exc}") from None
    with handle:
        yield handle


def _member(group, name: str, where: str, kind: str):
    """``group[name]`` if it is a hard link to a ``kind`` ("dataset" or "group")."""
    import h5py

    link = group.get(name, getlink=True)
    if link is None:
        raise CaffeCompatError(f"{where}: no {kind} '{name}'")
    if not isinstance(link, h5py.HardLink):
        raise CaffeCompatError(f"{where}: '{name}' is a {type(link).__name__}; only objects stored in the file are read")
    obj = group[name]
    wanted = h5py.Dataset if kind == "dataset" else h5py.Group
    if not isinstance(obj, wanted):
        raise CaffeCompatError(f"{where}: '{name}' is not a {kind}")
    return obj


def _numeric(group, name: str, where: str):
    """The dataset ``name`` after checking it holds numbers stored in this file (Caffe reads
    H5T_FLOAT and H5T_INTEGER classes only)."""
    dataset = _member(group, name, where, "dataset")
    if dataset.dtype.kind not in "fiub":
        raise CaffeCompatError(f"{where}: dataset '{name}' holds {dataset.dtype} values; Caffe reads only numbers")
    plist = dataset.id.get_create_plist()
    if dataset.is_virtual or plist.get_external_count():
        raise CaffeCompatError(f"{where}: dataset '{name}' keeps its values in other files; only data stored in the file is read")
    _check_stored(dataset, plist.get_nfilters(), f"{where}: dataset '{name}'")
    return dataset


def _check_stored(dataset, filters: int, where: str) -> None:
    """Refuse, before anything is allocated, a dataset declaring more values than its file can
    hold: a few KB declaring 800,000,000 floats in chunks never written would otherwise be read
    as gigabytes of fill values. Unfiltered data is stored byte for byte; compressed data may
    expand at most :data:`MAX_EXPANSION` times (deflate's limit is about 1032)."""
    count = math.prod(dataset.shape)
    if count > MAX_VALUES:
        raise CaffeCompatError(f"{where} declares {count:,} values, more than a Caffe blob holds ({MAX_VALUES:,})")
    declared = count * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if declared > (stored * MAX_EXPANSION if filters else stored):
        raise CaffeCompatError(f"{where} declares {dataset.shape} ({declared:,} bytes) but the file stores only "
                               f"{stored:,} bytes of it (unwritten chunks or a file cut short)")


def read_array(group, name: str, where: str) -> np.ndarray:
    """A numeric dataset's values."""
    return np.asarray(_numeric(group, name, where)[()])


def _read_string(group, name: str, where: str) -> str:
    dataset = _member(group, name, where, "dataset")
    if dataset.dtype.kind not in "SO" or dataset.shape != ():
        raise CaffeCompatError(f"{where}: '{name}' is not a string")
    value = dataset[()]
    if not isinstance(value, bytes):
        raise CaffeCompatError(f"{where}: '{name}' is not a string")
    return value.rstrip(b"\0").decode("utf-8", "replace")


def _read_int(group, name: str, where: str) -> int:
    values = read_array(group, name, where)
    if values.dtype.kind not in "iu" or values.size != 1:
        raise CaffeCompatError(f"{where}: '{name}' is not a single integer")
    value = int(values.reshape(-1)[0])
    if not -(2**31) <= value < 2**31:
        raise CaffeCompatError(f"{where}: '{name}' is {value}, past the 32-bit integer Caffe stores")
    return value


def _indexed(group, where: str) -> list[np.ndarray]:
    """Datasets ``"0"``, ``"1"``, ... of a group, in index order (Caffe's blob order)."""
    names = list(group.keys())
    if sorted(names, key=lambda n: (len(n), n)) != [str(i) for i in range(len(names))]:
        raise CaffeCompatError(f"{where}: expected datasets named 0..{len(names) - 1}, found {', '.join(names)}")
    return [read_array(group, str(i), f"{where}/{i}") for i in range(len(names))]


@contextlib.contextmanager
def _create(path: str | os.PathLike[str]) -> Iterator[Any]:
    """A new HDF5 file written to a temporary name and renamed over ``path`` when complete."""
    import h5py

    with atomic_write(path, "w+b") as handle:
        with h5py.File(handle, "w") as h5:
            yield h5


# ---------------------------------------------------------------------------- weights


def load_weights_hdf5(path: str | os.PathLike[str]) -> dict[str, list[np.ndarray]]:
    """Layer name -> float32 arrays from a ``.caffemodel.h5`` (Caffe's CopyTrainedLayersFromHDF5).

    A layer whose group lacks trailing blobs (written by a net that shared them) gets only the
    blobs it has; the net's own sharing fills the rest.
    """
    path = os.fspath(path)
    weights: dict[str, list[np.ndarray]] = {}
    with open_hdf5(path, "a Caffe HDF5 weights file (.caffemodel.h5)") as h5:
        data = _member(h5, "data", path, "group")
        for name in data.keys():
            layer = _member(data, name, f"{path}: data", "group")
            arrays = _indexed(layer, f"{path}: data/{name}")
            if arrays:
                weights[name] = [np.asarray(a, dtype=np.float32) for a in arrays]
    return weights


def write_weights_hdf5(path: str | os.PathLike[str], net_param, write_diff: bool = False) -> None:
    """``net_param`` (a NetParameter with blobs, e.g. ``CaffeNet.to_net_parameter()``) as Caffe's
    ``Net::ToHDF5`` writes it: every layer gets a group; a blob whose ParamSpec name an earlier
    layer already owns is left out of ``data`` (diffs are written for every blob)."""
    owners: set[str] = set()
    with _create(path) as h5:
        data = h5.create_group("data")
        diff = h5.create_group("diff") if write_diff else None
        for layer in net_param.layer:
            group = data.create_group(layer.name)
            diff_group = diff.create_group(layer.name) if diff is not None else None
            for i, blob in enumerate(layer.blobs):
                spec_name = layer.param[i].name if i < len(layer.param) else ""
                values = blob_to_array(blob, f"{os.fspath(path)}: layer '{layer.name}' blob {i}")
                if not spec_name or spec_name not in owners:
                    group.create_dataset(str(i), data=values.astype(np.float32))
                    if spec_name:
                        owners.add(spec_name)
                if diff_group is not None:
                    grads = np.asarray(blob.diff, dtype=np.float32) if len(blob.diff) else np.zeros(values.size, np.float32)
                    diff_group.create_dataset(str(i), data=grads.reshape(values.shape))


# ---------------------------------------------------------------------------- solver state


def write_solverstate_hdf5(path: str | os.PathLike[str], iteration: int, learned_net: str, current_step: int,
                           history: Sequence[np.ndarray]) -> None:
    """A ``.solverstate.h5`` as Caffe's SnapshotSolverStateToHDF5 writes it."""
    with _create(path) as h5:
        h5.create_dataset("iter", data=np.array([iteration], dtype=np.int32))
        raw = learned_net.encode("utf-8")
        # A scalar string sized to hold the NUL, as H5LTmake_dataset_string stores it.
        h5.create_dataset("learned_net", data=np.array(raw, dtype=f"S{len(raw) + 1}"))
        h5.create_dataset("current_step", data=np.array([current_step], dtype=np.int32))
        group = h5.create_group("history")
        for i, values in enumerate(history):
            group.create_dataset(str(i), data=np.asarray(values, dtype=np.float32))


def read_solverstate_hdf5(path: str | os.PathLike[str]) -> tuple[int, str, int, list[np.ndarray]]:
    """``(iter, learned_net or "", current_step, history)`` of a ``.solverstate.h5``."""
    path = os.fspath(path)
    with open_hdf5(path, "a Caffe HDF5 solver state (.solverstate.h5)") as h5:
        iteration = _read_int(h5, "iter", path)
        learned = _read_string(h5, "learned_net", path) if "learned_net" in h5 else ""
        current_step = _read_int(h5, "current_step", path)
        history = [np.asarray(a, dtype=np.float32) for a in _indexed(_member(h5, "history", path, "group"), f"{path}: history")]
    return iteration, learned, current_step, history


# ---------------------------------------------------------------------------- data files


def read_rows(path: str | os.PathLike[str], names: Sequence[str], rows: Sequence[int]) -> dict[str, np.ndarray]:
    """Rows ``rows`` (any order, repeats allowed) of the named datasets of an HDF5Data source, as
    float32: only those rows are read, so a batch costs a batch's memory whatever the file holds."""
    path = os.fspath(path)
    unique, inverse = np.unique(np.asarray(rows, np.int64), return_inverse=True)
    out: dict[str, np.ndarray] = {}
    with open_hdf5(path, "an HDF5 data file") as h5:
        for name in names:
            dataset = _numeric(h5, name, path)
            if dataset.ndim < 1 or not 0 <= unique[0] <= unique[-1] < dataset.shape[0]:
                raise CaffeCompatError(f"{path}: dataset '{name}' of shape {dataset.shape} has no row {unique[-1]} "
                                       "(the file changed while training?)")
            first, last = int(unique[0]), int(unique[-1])
            values = dataset[first:last + 1] if last - first + 1 == len(unique) else dataset[unique.tolist()]
            out[name] = np.asarray(values, dtype=np.float32)[inverse]
    return out


def dataset_shapes(path: str | os.PathLike[str], names: Sequence[str]) -> list[tuple[int, ...]]:
    """The shapes of the named numeric datasets, without reading their values."""
    path = os.fspath(path)
    with open_hdf5(path, "an HDF5 data file") as h5:
        return [tuple(_numeric(h5, name, path).shape) for name in names]


def write_datasets(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write float32 datasets (HDF5Output's ``data`` and ``label``) as one new file."""
    with _create(path) as h5:
        for name, values in arrays.items():
            h5.create_dataset(name, data=np.asarray(values, dtype=np.float32))
