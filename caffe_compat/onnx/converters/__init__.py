"""The converter registry: one small function per Caffe layer type, like onnx2torch's ``add_converter``.

``@add_converter("Convolution")`` on ``def convert(e: Emit) -> None`` makes the exporter call it
for every ``type: "Convolution"`` layer of the built (TEST-phase) net. A converter reads the
built layer (``e.layer``: parameters already parsed and checked by the net builder, weights
loaded) and emits nodes; the node producing top ``i`` writes ``e.top(i)``. Adding a layer type
means adding one function to the family module here (or any module imported before export).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, TypeVar

from caffe_compat.errors import CaffeCompatError
from caffe_compat.onnx.emit import Emit

Converter = Callable[[Emit], None]
C = TypeVar("C", bound=Converter)

CONVERTERS: dict[str, Converter] = {}

#: Layer types a deploy graph leaves out: training-only heads and data feeding. Their tops are
#: never graph outputs; a data layer's tops that exported layers read become graph inputs.
DROPPED_TYPES = frozenset({
    "Accuracy", "Silence", "SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss",
    "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss",
})


def add_converter(*type_names: str) -> Callable[[C], C]:
    """Function decorator: use this converter for the given Caffe layer types."""

    def deco(fn: C) -> C:
        for type_name in type_names:
            CONVERTERS[type_name] = fn
        return fn

    return deco


def supported_types() -> list[str]:
    _load_builtin()
    return sorted(CONVERTERS)


def converter_for(layer_name: str, type_name: str) -> Converter:
    """The converter of a layer type, or a clear error naming the layer and the supported list."""
    _load_builtin()
    if type_name not in CONVERTERS:
        raise CaffeCompatError(
            f"layer '{layer_name}': type '{type_name}' has no ONNX converter. Supported: "
            f"{', '.join(sorted(CONVERTERS))}. Add one with caffe_compat.onnx.converters.add_converter."
        )
    return CONVERTERS[type_name]


def _load_builtin() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
