"""The ONNX graph being written: nodes, weights and the Caffe-blob -> ONNX-tensor name map.

WHY a map: Caffe rebinds one blob name through in-place layers (conv_1 -> bn_1 -> scale_1 ->
relu_1 all write ``conv_1``), while ONNX tensors are single-assignment. Every top gets its own
tensor; the last layer to write a blob gets the blob's own name, so the graph's final tensors
(and its outputs) carry Caffe's blob names.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from caffe_compat.net.builder import Step
from caffe_compat.net.registry import Shape
from caffe_compat.onnx.transform import InputTransform

FLOAT_TYPES: dict[type, int] = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


class OnnxGraph:
    """Collects what the converters emit; ``dtype`` is the compute type (float32 or float16).

    ``dynamic``: per Caffe blob, the axes whose size follows the batch (empty for a static
    export); converters that write sizes into the graph must read them from the tensor there.
    ``outputs``: the blobs that become graph outputs (they need a tensor of their own name).
    """

    def __init__(self, dtype: type = np.float32, last_writer: dict[str, str] | None = None,
                 blob_names: set[str] | None = None, opset: int = 17,
                 dynamic: dict[str, frozenset[int]] | None = None, outputs: set[str] | None = None) -> None:
        self.dtype = dtype
        self.opset = opset
        self.dynamic = dynamic or {}
        self.outputs = outputs or set()
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[Any] = []
        self.shapes: dict[str, Shape] = {}  # Caffe blob -> its shape as the prototxt builds it
        self._tensor: dict[str, str] = {}  # Caffe blob -> current ONNX tensor
        self._last_writer = last_writer or {}
        self._used: set[str] = set()
        # Blob names are kept for the tensors that carry them (inputs, last writers, outputs).
        self._reserved: set[str] = set(blob_names or ())

    @property
    def onnx_dtype(self) -> int:
        """The compute type as an ONNX TensorProto element type."""
        return FLOAT_TYPES[self.dtype]

    # ------------------------------------------------------------------ names

    def unique(self, name: str) -> str:
        """A tensor/node name not used yet (suffixing ``_1``, ``_2``, ... when needed)."""
        candidate, i = name, 0
        while candidate in self._used or candidate in self._reserved:
            i += 1
            candidate = f"{name}_{i}"
        self._used.add(candidate)
        return candidate

    def has_blob(self, blob: str) -> bool:
        return blob in self._tensor

    def tensor(self, blob: str) -> str:
        """The ONNX tensor that holds a Caffe blob's current value."""
        return self._tensor[blob]

    def claim(self, blob: str) -> str:
        """Use a blob's own name for the tensor that carries it."""
        if blob in self._used:
            raise ValueError(f"tensor name '{blob}' is used twice")
        self._used.add(blob)
        return blob

    def top_name(self, step: Step, index: int) -> str:
        """The tensor name for a layer's top: the blob name if no later layer rewrites it."""
        blob = step.tops[index]
        if self._last_writer.get(blob) == step.name:
            return self.claim(blob)
        return self.unique(f"{blob}@{step.name}")

    def bind(self, blob: str, tensor: str, shape: Shape) -> None:
        self._tensor[blob] = tensor
        self.shapes[blob] = tuple(shape)

    # ------------------------------------------------------------------ emitting

    def add_input(self, blob: str, shape: Shape, dims: Sequence[int | str] | None = None,
                  transform: InputTransform | None = None) -> None:
        """A graph input for a fed blob, ``dims`` its declared shape (symbols for dynamic axes).

        Inputs are float32, or uint8 with a ``transform`` that says so; the transform's float32
        ops run next, then a cast to the compute type when that is not float32.
        """
        name = self.claim(blob)
        elem = TensorProto.UINT8 if transform is not None and transform.uint8 else TensorProto.FLOAT
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape if dims is None else dims)))
        if transform is not None and transform.changes_values:
            name = self._transform(blob, name, transform)
        if self.dtype != np.float32:
            name = self.node("Cast", [name], name=f"{blob}/cast", to=FLOAT_TYPES[self.dtype])
        self.bind(blob, name, shape)

    def _transform(self, blob: str, name: str, transform: InputTransform) -> str:
        """Caffe's ``(pixel - mean) * scale`` in float32, after the cast and channel flip."""
        if transform.uint8:
            name = self.node("Cast", [name], f"{blob}/to_float", to=TensorProto.FLOAT)
        if transform.channel_order == "rgb":  # Caffe nets take BGR
            name = self.node("Gather", [name, self.ints(f"{blob}/bgr", [2, 1, 0])], f"{blob}/rgb_to_bgr", axis=1)
        mean = transform.mean
        if mean is not None:
            array = mean if mean.ndim == 3 else mean.reshape(-1, 1, 1)
            name = self.node("Sub", [name, self.const(f"{blob}/mean", array, np.float32)], f"{blob}/minus_mean")
        if transform.scale != 1.0:
            name = self.node("Mul", [name, self.const(f"{blob}/scale", np.float32(transform.scale), np.float32)],
                             f"{blob}/times_scale")
        return name

    def const(self, name: str, value: np.ndarray | Sequence[float] | float, dtype: Any = None) -> str:
        """A weight or constant; float arrays take the compute type unless ``dtype`` is given."""
        array = np.asarray(value)
        if dtype is None:
            dtype = self.dtype if np.issubdtype(array.dtype, np.floating) else array.dtype
        tensor_name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), tensor_name))
        return tensor_name

    def ints(self, name: str, values: Sequence[int]) -> str:
        """An int64 1-D constant (shapes, axes, slice bounds)."""
        return self.const(name, np.asarray(list(values), np.int64), np.int64)

    def node(self, op: str, inputs: Sequence[str], name: str, outputs: Sequence[str] | int = 1,
             **attrs: Any) -> str | list[str]:
        """Append one node; returns its output name (or the list of names for several)."""
        if isinstance(outputs, int):
            out_names = [self.unique(name if outputs == 1 else f"{name}:{i}") for i in range(outputs)]
        else:
            out_names = list(outputs)
        self.nodes.append(helper.make_node(op, list(inputs), out_names, name=self.unique(f"node:{name}"),
                                           **attrs))
        return out_names[0] if len(out_names) == 1 else out_names
