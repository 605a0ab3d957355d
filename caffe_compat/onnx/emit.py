"""What a converter sees of one layer: its built Caffe layer, its bottoms' tensors, its tops' names."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.builder import Step
from caffe_compat.net.registry import Layer, Shape
from caffe_compat.onnx.graph import OnnxGraph


class Emit:
    """Helpers bound to one layer; node and constant names are prefixed with the layer's name."""

    def __init__(self, graph: OnnxGraph, step: Step) -> None:
        self.g = graph
        self.step = step
        self._tops: dict[int, str] = {}

    @property
    def layer(self) -> Layer:
        return self.step.layer

    @property
    def name(self) -> str:
        return self.step.name

    def bottom(self, i: int = 0) -> str:
        return self.g.tensor(self.step.bottoms[i])

    def bottoms(self) -> list[str]:
        return [self.g.tensor(b) for b in self.step.bottoms]

    def shape(self, i: int = 0) -> Shape:
        """Bottom ``i``'s shape as the prototxt builds it (see :meth:`dynamic_axes`)."""
        return self.layer.bottom_shapes[i]

    def dynamic_axes(self, i: int = 0) -> frozenset[int]:
        """Axes of bottom ``i`` whose size follows the batch in a dynamic-batch export: a size
        read from :meth:`shape` on one of them must come from the tensor instead (:meth:`dims`)."""
        return self.g.dynamic.get(self.step.bottoms[i], frozenset())

    def static(self, axes: Sequence[int], i: int = 0, why: str = "") -> None:
        """Refuse a dynamic batch when one of ``axes`` of bottom ``i`` follows it."""
        moving = sorted(set(axes) & self.dynamic_axes(i))
        if moving:
            raise CaffeCompatError(
                f"layer '{self.name}' (type {self.step.type}) cannot follow a dynamic batch: {why or 'it needs'} "
                f"the size of axis {moving[0]} of '{self.step.bottoms[i]}' fixed; export with --batch prototxt "
                "or a fixed --batch N")

    def dims(self, i: int, axes: Sequence[int]) -> str:
        """An int64 1-D tensor of bottom ``i``'s sizes on ``axes``, read from the tensor at run time."""
        shape = self.node("Shape", [self.bottom(i)])
        return self.node("Gather", [shape, self.ints(f"axes{i}", axes)], axis=0)

    def alias(self, i: int, tensor: str) -> None:
        """Let top ``i`` be an existing tensor (no node): a plain edge in the graph."""
        self._tops[i] = tensor

    def reduce(self, op: str, x: str, axes: Sequence[int], keepdims: int = 1, top: int | None = None) -> Any:
        """A Reduce* node over ``axes`` (an attribute before the opset that made it an input)."""
        if op == "ReduceSum" or self.g.opset >= 18:
            return self.node(op, [x, self.ints("axes", axes)], top=top, keepdims=keepdims)
        return self.node(op, [x], top=top, axes=list(axes), keepdims=keepdims)

    def top(self, i: int = 0) -> str:
        """The tensor name top ``i`` must be written to."""
        if i not in self._tops:
            self._tops[i] = self.g.top_name(self.step, i)
        return self._tops[i]

    def top_names(self) -> list[str]:
        return [self.top(i) for i in range(len(self.step.tops))]

    def emitted(self) -> set[int]:
        return set(self._tops)

    def blob(self, i: int) -> np.ndarray:
        """Learned blob ``i`` as float32 numpy (normalise in float32 before any fp16 cast)."""
        return self.layer.blobs[i].detach().cpu().numpy().astype(np.float32)

    def const(self, suffix: str, value: Any, dtype: Any = None) -> str:
        return self.g.const(f"{self.name}/{suffix}", value, dtype)

    def ints(self, suffix: str, values: Sequence[int]) -> str:
        return self.g.ints(f"{self.name}/{suffix}", values)

    def node(self, op: str, inputs: Sequence[str], top: int | None = None, outputs: int | Sequence[str] = 1,
             **attrs: Any) -> Any:
        """One node named after the layer; with ``top`` it writes that top's tensor."""
        out: Sequence[str] | int = [self.top(top)] if top is not None else outputs
        return self.g.node(op, inputs, f"{self.name}/{op}" if top is None else self.top(top), out, **attrs)

    def fail(self, message: str) -> CaffeCompatError:
        return CaffeCompatError(f"layer '{self.name}' (type {self.step.type}): cannot export to ONNX: {message}")
