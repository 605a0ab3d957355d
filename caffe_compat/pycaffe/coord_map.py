"""pycaffe's ``caffe.coord_map``: how coordinates of one NetSpec top map onto another's.

FCN nets use ``crop(top_from, top_to)`` to align an upsampled score map with the input: walking
the net spec back from both tops, each spatial layer maps ``out = scale * in + shift`` along its
axis; composing the maps up to a common ancestor gives the offset for a Crop layer. Same rules,
names and exceptions as Caffe's ``python/caffe/coord_map.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from caffe_compat.pycaffe.net_spec import Function, Top, layers as L

#: Layers that keep every coordinate where it is.
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN",
                       "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH",
                       "Threshold"]

Map = tuple[Any, Any, Any]  # (axis or None, scale, shift): out coord [i * scale] <- in coord [i] ...


class UndefinedMapException(Exception):
    """The layer has no coordinate mapping (the walk stops there)."""


class AxisMismatchException(Exception):
    """Two mappings act on different axes."""


def conv_params(fn: Function) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Axis, stride, effective kernel extent ((k - 1) * dilation + 1) and pad of a conv-like layer."""
    params = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(params)
    assert not legacy, "cropping does not support legacy _h/_w params"
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (params.get("axis", 1), np.array(params.get("stride", 1), ndmin=1), (kernel - 1) * dilation + 1,
            np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn: Function) -> tuple[int, np.ndarray]:
    """Axis (default 2: the spatial axes of N, C, H, W) and offsets of a Crop layer."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn: Function) -> Map:
    """The mapping of one layer; the identity (None, 1, 0) for pointwise layers."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # axis - 1: the last axis that is not a coordinate
    raise UndefinedMapException


def compose(base_map: Map, next_map: Map) -> Map:
    """``base_map`` then ``next_map``: scales multiply, the further shift is scaled by the first scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(coord_map: Map) -> Map:
    """The backward mapping (for the gradient): de-scaled and un-shifted."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _mapped_bottoms(top: Top) -> tuple[Top, ...]:
    """The bottoms the walk follows: all of them, but only the cropped one of a Crop layer."""
    return top.fn.inputs[:1] if top.fn.type_name == "Crop" else top.fn.inputs


def _walk(start: Top):
    """Every ancestor of ``start`` reachable through mappable layers, each with its composed map."""
    maps: dict[Top, Map] = {start: (None, 1, 0)}
    frontier = [start]
    while frontier:
        top = frontier.pop()
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(top):
            maps[bottom] = compose(maps[top], step)
            frontier.append(bottom)


def coord_map_from_to(top_from: Top, top_to: Top) -> Map:
    """The mapping from ``top_from``'s coordinates to ``top_to``'s, through their common ancestor."""
    from_maps = dict(_walk(top_from))
    for top, to_map in _walk(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from: Top, top_to: Top) -> Top:
    """A Crop layer that crops ``top_from`` to ``top_to``, with the axis and offsets the mapping gives."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    assert (a == 1).all(), f"scale mismatch on crop (a = {a})"
    assert (b <= 0).all(), f"cannot crop negative offset (b = {b})"
    assert (np.round(b) == b).all(), f"cannot crop noninteger offset (b = {b})"
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=list(-np.round(b).astype(int))))
