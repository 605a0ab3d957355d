"""The layer registry: one small class per Caffe layer type, registered by its type name.

Mirrors Caffe's ``layer_factory``: ``@register_layer("Convolution")`` on a :class:`Layer`
subclass makes the net builder use it for every ``type: "Convolution"`` layer. Users add
their own types (and Caffe's ``type: "Python"`` layers, keyed by ``python_param.layer``)
the same way, from any module imported before the net is built.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import nn

from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import TEST, TRAIN  # noqa: F401  (re-exported: layers name phases from here)

Shape = tuple[int, ...]



class Layer(nn.Module):
    """Base of every Caffe layer.

    Built once from its ``LayerParameter`` (``self.param``), the shapes of its bottoms and the
    phase. Learnable and state blobs live in ``self.blobs`` in Caffe's order (the order of a
    caffemodel's ``blobs``), so weight import/export is a by-index copy. ``forward`` takes the
    bottom tensors in prototxt order and returns a tuple of top tensors.

    Rules the net builder (``caffe_compat.net.builder.CaffeNet``) relies on:

    - ``param`` is the layer's own copy; a layer may change it the way Caffe's LayerSetUp
      changes ``layer_param_`` (BatchNorm appends ``lr_mult: 0`` param specs). It is what
      ``CaffeNet.to_net_parameter`` writes, so snapshots match Caffe's.
    - Read blobs as ``self.blobs[i]`` at forward time: Caffe's named-param sharing replaces
      entries of ``self.blobs`` with the owner layer's Parameter after construction.
    - A blob created with ``requires_grad=False`` is state that backprop never changes (the
      BatchNorm statistics); the builder sets ``requires_grad`` of the others from the
      ParamSpec (``lr_mult > 0`` or ``force_backward``).
    - ``forward`` must not read ``self.param`` (protobuf containers break ``torch.compile``
      graphs): copy what it needs into plain attributes in ``__init__``.
    - ``forward`` must not modify its bottoms in place (prototxt in-place layers are handled by
      the builder rebinding the blob name); it may return views.
    - ``is_loss`` layers get Caffe's LossLayer defaults from the builder: ``loss_weight: 1``
      on top 0 when none is given, and an anonymous top when the prototxt names none.
    """

    #: True for layers that Caffe treats as losses (default ``loss_weight: 1`` on top 0).
    is_loss: bool = False
    #: True for data sources (Data, ImageData, ...): no bottoms; the builder takes their tops
    #: from the caller's inputs when given, else calls :meth:`next_batch`.
    is_source: bool = False
    #: Set by the net for layers with :meth:`running_updates`: the net applies them all at once
    #: after its forward instead of each layer applying its own (two ops per net, not per layer).
    defer_running_updates: bool = False
    #: Bottoms whose axis 0 is a batch of its own, not the images' (the ROIs of ROIPooling): a
    #: dynamic-batch ONNX export gives a net input read there its own symbolic size.
    own_batch_bottoms: tuple[int, ...] = ()

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__()
        self.param = param
        self.name: str = param.name
        self.phase = phase
        self.bottom_shapes: list[Shape] = [tuple(s) for s in bottom_shapes]
        self.blobs = nn.ParameterList()

    def top_shapes(self) -> list[Shape]:
        """Shapes of the tops for ``self.bottom_shapes`` (shape inference, clear errors, inspect)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement top_shapes")

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:  # pragma: no cover
        raise NotImplementedError

    def running_updates(self) -> list[RunningUpdate]:
        """State blobs this layer's forward moves as ``blob = decay * blob + value`` (BatchNorm's
        running statistics in TRAIN), ``value`` being a buffer the forward fills. Empty for the
        layers whose forward changes no state."""
        return []

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """The next batch of a source layer's tops (only for ``is_source`` layers)."""
        raise self.fail("this layer reads no data by itself; pass its tops as inputs")

    def fail(self, message: str) -> CaffeCompatError:
        """An error naming this layer, for bad parameters or shapes."""
        return CaffeCompatError(f"layer '{self.name}' (type {self.param.type}): {message}")


RunningUpdate = tuple[torch.Tensor, float, torch.Tensor]  # (blob, decay, value)


@torch.no_grad()
def apply_running_updates(updates: Sequence[RunningUpdate]) -> None:
    """``blob = decay * blob + value`` for every update, as two foreach ops per decay value
    (Caffe's axpby: the product is rounded before the sum, as here)."""
    by_decay: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for blob, decay, value in updates:
        blobs, values = by_decay.setdefault(decay, ([], []))
        blobs.append(blob)
        values.append(value)
    for decay, (blobs, values) in by_decay.items():
        torch._foreach_mul_(blobs, decay)
        torch._foreach_add_(blobs, values)


class FusedLayers(nn.Module):
    """Consecutive layers of a net run as one call: a faster forward with the same tops.

    Made by a fusion rule (:func:`register_fusion`) when the net plans its forward. The layers
    themselves, their blobs and Caffe's per-layer view (``net.steps``) stay as they are; only
    the forward pass calls this instead of them. Holds its layers in a plain list: the net
    owns them as modules.
    """

    is_source = False

    def __init__(self, layers: Sequence[Layer]) -> None:
        super().__init__()
        self.parts = list(layers)

    def fail(self, message: str) -> CaffeCompatError:
        names = " + ".join(f"'{layer.name}'" for layer in self.parts)
        return CaffeCompatError(f"layers {names} (run fused): {message}")


#: A fusion rule: given the net's steps (objects with ``layer``, ``bottoms``, ``tops``,
#: ``loss_weights``, ``stop_gradient``) and a position, either None or the number of steps from
#: there that one :class:`FusedLayers` replaces, with that module. The fused call takes the
#: first step's bottoms and gives the last step's tops.
FusionRule = Callable[[Sequence[Any], int], "tuple[int, FusedLayers] | None"]
FUSIONS: list[FusionRule] = []


def register_fusion(rule: FusionRule) -> FusionRule:
    """Make every net try ``rule`` when it plans its forward pass (see :data:`FusionRule`)."""
    FUSIONS.append(rule)
    return rule


LAYERS: dict[str, type[Layer]] = {}
L = TypeVar("L", bound=type[Layer])


def register_layer(*type_names: str) -> Callable[[L], L]:
    """Class decorator: make the builder use this class for the given Caffe type names."""

    def deco(cls: L) -> L:
        for type_name in type_names:
            LAYERS[type_name] = cls
        return cls

    return deco


def layer_class(param) -> type[Layer]:
    """The class for a LayerParameter, or a clear error naming the layer and the supported list."""
    import caffe_compat.net.layers  # noqa: F401  (registers the built-in layers)

    key = param.type
    if key == "Python":
        key = f"Python:{param.python_param.module}.{param.python_param.layer}"
        if key not in LAYERS:  # pycaffe-style classes, imported from python_param.module
            key = "Python"
    if key not in LAYERS:
        supported = ", ".join(sorted(k for k in LAYERS if not k.startswith("Python:")))
        raise CaffeCompatError(
            f"layer '{param.name}': unknown type '{key}'. Supported: {supported}. "
            "Register your own with caffe_compat.net.registry.register_layer."
        )
    return LAYERS[key]
