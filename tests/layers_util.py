"""Build one layer straight from its prototxt text, without a net (for per-layer unit tests)."""

from __future__ import annotations

import torch
from google.protobuf import text_format

from caffe_compat.net.registry import TEST, Layer, layer_class
from caffe_compat.proto import caffe_pb2


def make_layer(text: str, *bottom_shapes: tuple[int, ...], phase: int = TEST) -> Layer:
    """The registered layer for a ``layer { ... }`` body given as text, with these bottom shapes."""
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param)
    if not param.bottom:
        param.bottom.extend(f"b{i}" for i in range(len(bottom_shapes)))
    if not param.top:
        param.top.append("t0")
    if not param.name:
        param.name = param.type.lower()
    return layer_class(param)(param, list(bottom_shapes), phase)


def run(layer: Layer, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Forward, checking every top against the layer's own shape inference."""
    tops = layer(*bottoms)
    assert [tuple(t.shape) for t in tops] == [tuple(s) for s in layer.top_shapes()]
    return tops
