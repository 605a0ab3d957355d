"""Weights in and out of a built net: Caffe's CopyTrainedLayersFrom and Net::ToProto.

Import matches layers by name; every blob of a matched layer must fit (count and shape, a
legacy 4-d blob matching a target padded with leading 1s), else it is an error naming the
layer and both shapes, unless the caller asks to skip such layers. Layers absent from the
weights keep their filler values; weights for layers the net does not have are ignored. The
report lists all three groups, because silently half-loaded nets are how accuracy gets lost.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.blob import array_to_blob, blob_to_array
from caffe_compat.io.caffemodel import fit_blobs, load_weights
from caffe_compat.proto import caffe_pb2

if TYPE_CHECKING:
    from caffe_compat.net.builder import CaffeNet

log = logging.getLogger(__name__)


def _names(names: Sequence[str], most: int = 8) -> str:
    """A name list short enough for one log line."""
    shown = ", ".join(names[:most])
    return shown + (f", ... (+{len(names) - most} more)" if len(names) > most else "")


@dataclass
class WeightsReport:
    """Which layers of the net got their blobs from where."""

    source: str
    loaded: list[str] = field(default_factory=list)  # blobs copied from the weights
    initialised: list[str] = field(default_factory=list)  # kept their filler values
    ignored: list[str] = field(default_factory=list)  # in the weights, not in the net
    skipped: list[str] = field(default_factory=list)  # did not fit; skipped on request

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} layer(s) loaded from {self.source}"]
        for label, names in (
            ("initialised by fillers", self.initialised),
            ("in the weights but not in the net (ignored)", self.ignored),
            ("skipped for shape mismatch", self.skipped),
        ):
            if names:
                parts.append(f"{label}: {_names(names)}")
        return "; ".join(parts)


def _as_weights(source) -> tuple[str, Mapping[str, Sequence[np.ndarray]]]:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source), load_weights(source)
    if isinstance(source, caffe_pb2.NetParameter):
        where = source.name or "<NetParameter>"
        return where, {
            layer.name: [blob_to_array(b, f"{where}: layer '{layer.name}'") for b in layer.blobs]
            for layer in source.layer
            if len(layer.blobs)
        }
    if isinstance(source, Mapping):
        return "<weights>", {name: [np.asarray(a) for a in arrays] for name, arrays in source.items()}
    raise TypeError(f"weights must be a path, a NetParameter or a mapping, not {type(source).__name__}")


def copy_weights(net: CaffeNet, source, ignore_shape_mismatch: bool = False) -> WeightsReport:
    """Copy blobs into ``net`` by layer name; see the module docstring."""
    where, weights = _as_weights(source)
    report = WeightsReport(where)
    for name, arrays in weights.items():
        layer = net.layer_by_name(name)
        if layer is None:
            report.ignored.append(name)
            continue
        try:
            fitted = fit_blobs(name, arrays, [tuple(b.shape) for b in layer.blobs], where)
        except CaffeCompatError:
            if not ignore_shape_mismatch:
                raise
            report.skipped.append(name)
            continue
        with torch.no_grad():
            for blob, array in zip(layer.blobs, fitted):
                blob.copy_(torch.as_tensor(array))
        if name not in report.loaded:
            report.loaded.append(name)
    report.initialised = [
        s.name for s in net.steps if len(s.layer.blobs) and s.name not in report.loaded
    ]
    if report.ignored and not report.loaded and not report.skipped and report.initialised:
        raise CaffeCompatError(
            f"{where}: none of its {len(report.ignored)} layers ({_names(report.ignored, 3)}) is in net "
            f"'{net.name}' ({_names(report.initialised, 3)}): weights of another net?")
    if report.ignored:
        log.warning("%s: %d layer(s) not in net '%s', their weights are ignored: %s",
                    where, len(report.ignored), net.name, _names(report.ignored))
    return report


def net_to_proto(net: CaffeNet, write_diff: bool = False):
    """Caffe's Net::ToProto: name plus every built layer's parameter and blobs, in order.

    Layers are written as Caffe holds them after set-up (filtered, implicit splits inserted,
    phase set, LossLayer's default loss_weight and BatchNorm's lr_mult 0 specs added), so a
    saved file matches ``net.save()`` from pycaffe byte for byte.
    """
    out = caffe_pb2.NetParameter()
    out.name = net.name
    for step in net.steps:
        layer = out.layer.add()
        layer.CopyFrom(step.layer.param)
        del layer.blobs[:]
        for blob in step.layer.blobs:
            data = blob.detach().to("cpu", torch.float32).numpy()
            diff = None
            if write_diff:
                grad = blob.grad
                diff = np.zeros_like(data) if grad is None else grad.detach().to("cpu", torch.float32).numpy()
            layer.blobs.append(array_to_blob(data, diff=diff))
    return out
