"""Caffe's ``type: "Python"`` layers: pycaffe-style classes run unchanged inside our nets.

As Caffe's PythonLayer: ``python_param.module`` is imported from ``sys.path`` (so from
``PYTHONPATH``), ``python_param.layer`` names the class, which is called with the
LayerParameter; ``param_str`` and ``phase`` are set on the object, then ``setup(bottom, top)``
and ``reshape(bottom, top)`` run once when the net is built (that gives the top shapes), and
every forward calls ``reshape`` and ``forward(bottom, top)``; ``backward(top, propagate_down,
bottom)`` runs when autograd needs the bottoms' gradients. ``bottom`` and ``top`` are lists of
:class:`NumpyBlob` (``.data``, ``.diff``, ``.reshape(*shape)``, ``.num``, ``.count``, ...).
Blobs the layer adds with ``self.blobs.add_blob(*shape)`` in ``setup`` become learnable
parameters (saved in caffemodels, updated by the solver, their ``.diff`` set by ``backward``).

A class registered with ``register_layer("Python:<module>.<layer>")`` takes precedence.
"""

from __future__ import annotations

import contextlib
from typing import Iterator
import numpy as np
import torch
from torch import nn

from caffe_compat.errors import CaffeCompatError, mark_user_code
from caffe_compat.net.registry import Layer, Shape, register_layer
from caffe_compat.net.user_code import trusted_layer_class


class LegacyShape:
    """Caffe's Blob::num/channels/height/width: the first four axes, 1 past the last one."""

    shape: tuple[int, ...]

    def _legacy(self, axis: int) -> int:
        shape = self.shape
        return int(shape[axis]) if axis < len(shape) else 1

    @property
    def num(self) -> int:
        return self._legacy(0)

    @property
    def channels(self) -> int:
        return self._legacy(1)

    @property
    def height(self) -> int:
        return self._legacy(2)

    @property
    def width(self) -> int:
        return self._legacy(3)


class NumpyBlob(LegacyShape):
    """A Caffe Blob as Python layers see it: ``data`` and ``diff`` arrays of one shape."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = np.asarray(data, dtype=np.float32)
        self.diff = np.zeros_like(self.data)

    def reshape(self, *shape: int) -> None:
        """Caffe's Blob::Reshape: new zero-filled storage when the shape changes."""
        shape = tuple(int(d) for d in shape)
        if shape != self.data.shape:
            self.data = np.zeros(shape, np.float32)
            self.diff = np.zeros(shape, np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def count(self) -> int:
        return int(self.data.size)


class BlobVec(list):
    """A Python layer's own blobs (pycaffe's ``self.blobs``)."""

    def add_blob(self, *shape: int) -> None:
        self.append(NumpyBlob(np.zeros(tuple(int(d) for d in shape), np.float32)))


class PythonLayerBase:
    """What ``caffe.Layer`` is to pycaffe code: subclass it and define setup / reshape /
    forward / backward over lists of :class:`NumpyBlob`."""

    def __init__(self, param=None) -> None:
        self.layer_param = param
        self.blobs = BlobVec()
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = 0

    def setup(self, bottom: list[NumpyBlob], top: list[NumpyBlob]) -> None:
        pass

    def reshape(self, bottom: list[NumpyBlob], top: list[NumpyBlob]) -> None:
        pass

    def forward(self, bottom: list[NumpyBlob], top: list[NumpyBlob]) -> None:
        pass

    def backward(self, top: list[NumpyBlob], propagate_down: list[bool], bottom: list[NumpyBlob]) -> None:
        pass

    @property
    def type(self) -> str:
        return "Python"


@contextlib.contextmanager
def _user_code(layer: "Python", method: str) -> Iterator[None]:
    """Let the user's exception pass as itself (pycaffe code catches it by type), noting the
    layer and method for the CLI's one line."""
    try:
        yield
    except CaffeCompatError:
        raise
    except Exception as exc:
        p = layer.param.python_param
        mark_user_code(exc, f"layer '{layer.param.name}' (type Python, {p.module}.{p.layer}.{method})")
        raise


class _RunPython(torch.autograd.Function):
    """One call of the user's forward (and, when autograd asks, its backward) on numpy."""

    @staticmethod
    def forward(ctx, layer: "Python", *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        bottoms = inputs[: layer.num_bottoms]
        device = bottoms[0].device if bottoms else layer.device_anchor.device
        bottom = [NumpyBlob(b.detach().to("cpu", torch.float32).numpy().copy()) for b in bottoms]
        top = [NumpyBlob(np.zeros(shape, np.float32)) for shape in layer.top_shape_list]
        layer.sync_blobs_from_params()
        with _user_code(layer, "reshape"):
            layer.py.reshape(bottom, top)
        with _user_code(layer, "forward"):
            layer.py.forward(bottom, top)
        ctx.layer, ctx.bottom, ctx.top, ctx.device = layer, bottom, top, device
        ctx.dtypes = [b.dtype for b in bottoms]
        return tuple(torch.from_numpy(np.array(t.data, dtype=np.float32)).to(device) for t in top)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):  # type: ignore[override]
        layer: Python = ctx.layer
        for blob, grad in zip(ctx.top, grads):
            blob.diff = np.zeros_like(blob.data) if grad is None else \
                grad.detach().to("cpu", torch.float32).numpy().reshape(blob.data.shape).copy()
        for blob in ctx.bottom:
            blob.diff = np.zeros_like(blob.data)
        for blob in layer.py.blobs:
            blob.diff = np.zeros_like(blob.data)
        wanted = list(ctx.needs_input_grad[1 : 1 + layer.num_bottoms])
        with _user_code(layer, "backward"):
            layer.py.backward(ctx.top, wanted, ctx.bottom)
        bottom_grads = [torch.from_numpy(np.asarray(b.diff, np.float32)).to(ctx.device, dtype)
                        if want else None for b, want, dtype in zip(ctx.bottom, wanted, ctx.dtypes)]
        param_grads = [torch.from_numpy(np.asarray(b.diff, np.float32)).to(p.device)
                       for b, p in zip(layer.py.blobs, layer.blobs)]
        return (None, *bottom_grads, *param_grads)


def user_layer_class(param, fail) -> type:
    """The ``caffe.Layer`` subclass ``python_param.layer`` of ``python_param.module`` (see
    :mod:`caffe_compat.net.user_code` for what is imported when)."""
    return trusted_layer_class(param, PythonLayerBase, fail)


@register_layer("Python")
class Python(Layer):
    """Runs a pycaffe-style layer object (see the module docstring)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        cls = user_layer_class(param, self.fail)
        with _user_code(self, "__init__"):
            self.py = cls(param)
        if not isinstance(getattr(self.py, "blobs", None), list):
            self.py.blobs = BlobVec()
        self.py.param_str = param.python_param.param_str
        self.py.phase = int(phase)
        self.num_bottoms = len(self.bottom_shapes)
        bottom = [NumpyBlob(np.zeros(shape, np.float32)) for shape in self.bottom_shapes]
        top = [NumpyBlob(np.zeros((0,), np.float32)) for _ in param.top]
        with _user_code(self, "setup"):
            self.py.setup(bottom, top)
        with _user_code(self, "reshape"):
            self.py.reshape(bottom, top)
        self.top_shape_list: list[Shape] = [t.shape for t in top]
        for blob in self.py.blobs:
            self.blobs.append(nn.Parameter(torch.from_numpy(blob.data)))  # shares the blob's memory
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)

    def top_shapes(self) -> list[Shape]:
        return list(self.top_shape_list)

    def sync_blobs_from_params(self) -> None:
        """The layer's blobs show the current parameters (a solver update or copy_from may have
        replaced them, or moved them to another device)."""
        for blob, param in zip(self.py.blobs, self.blobs):
            blob.data = param.detach().to("cpu", torch.float32).numpy()

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _RunPython.apply(self, *bottoms, *self.blobs)
