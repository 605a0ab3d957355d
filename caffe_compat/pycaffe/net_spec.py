"""pycaffe's ``caffe.net_spec``: write nets in Python, get a NetParameter (``str()`` is prototxt).

``L.Convolution(bottom, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))``
makes a layer; keyword arguments go to the layer's own ``<type>_param`` message when it has
such a field, else to the LayerParameter (``param=[...]``, ``include=...``, ``loss_weight``);
``ntop=N`` gives N tops, ``in_place=True`` writes the top over the bottom. Unnamed layers and
tops are named ``<Type><k>``; a ``NetSpec`` names them after the attributes they are assigned
to. The output is the same NetParameter pycaffe's net_spec gives for the same code.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from caffe_compat.proto import caffe_pb2


def _param_fields() -> dict[str, str]:
    """Layer type -> its ``*_param`` field, from the message types (ConvolutionParameter ->
    convolution_param), as pycaffe derives it."""
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields
    return {f.message_type.name[: -len("Parameter")]: f.name for f in fields
            if f.name.endswith("_param") and f.message_type is not None}


_PARAM_FIELDS = _param_fields()


def assign_proto(proto, name: str, value: Any) -> None:
    """Set field ``name`` of ``proto`` from Python values: dicts fill messages, lists fill
    repeated fields (a lone value is a one-item list there)."""
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                message = field.add()
                for key, sub in item.items():
                    assign_proto(message, key, sub)
        else:
            field.extend(value)
    elif isinstance(value, dict):
        for key, sub in value.items():
            assign_proto(field, key, sub)
    else:
        setattr(proto, name, value)


class Top:
    """One output blob of a layer (its ``n``-th top)."""

    def __init__(self, fn: "Function", n: int) -> None:
        self.fn, self.n = fn, n

    def to_proto(self) -> caffe_pb2.NetParameter:
        return to_proto(self)

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer: its type, bottoms (Tops) and parameters."""

    def __init__(self, type_name: str, inputs: tuple, params: dict[str, Any]) -> None:
        for i, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(f"{type_name} input {i} is not a Top (type is {type(bottom)})")
        self.type_name = type_name
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _auto(self, key: Any, names: dict, autonames: Counter) -> str:
        if key not in names:
            autonames[self.type_name] += 1
            names[key] = f"{self.type_name}{autonames[self.type_name]}"
        return names[key]

    def _name(self, names: dict, autonames: Counter) -> str:
        """A layer is named after its first top (or ``<Type><k>`` when it has none)."""
        if self not in names:
            names[self] = self._auto(self.tops[0], names, autonames) if self.ntop else self._auto(self, names, autonames)
        return names[self]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottoms.append(layers[bottom.fn].top[bottom.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._auto(top, names, autonames) for top in self.tops)
        layer.name = self._name(names, autonames)
        for key, value in self.params.items():
            if key.endswith("param") or self.type_name not in _PARAM_FIELDS:
                assign_proto(layer, key, value)
                continue
            try:
                assign_proto(getattr(layer, _PARAM_FIELDS[self.type_name]), key, value)
            except AttributeError:
                assign_proto(layer, key, value)
        layers[self] = layer


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer the given tops need."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Tops assigned as attributes (``n.conv1 = L.Convolution(...)``) name their layers."""

    def __init__(self) -> None:
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name: str, value: Top) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Top:
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    __setitem__ = __setattr__
    __getitem__ = __getattr__

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {top: name for name, top in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``layers.Convolution(...)``: any attribute is a layer type."""

    def __getattr__(self, type_name: str):
        def make(*bottoms: Top, **params: Any):
            fn = Function(type_name, bottoms, params)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        return make


class Parameters:
    """``params.Pooling.MAX``: enum values of ``<Name>Parameter`` messages."""

    def __getattr__(self, name: str):
        message = getattr(caffe_pb2, name + "Parameter")

        class Values:
            def __getattr__(self, value: str):
                return getattr(message, value)

        return Values()


layers = Layers()
params = Parameters()
