"""Drawing a NetParameter as a graph, as Caffe's ``python/caffe/draw.py`` and ``draw_net.py`` do.

The same picture as Caffe's: one node per layer (labelled with name, type and, for convolution
and pooling, kernel/stride/pad), one octagon per blob, edges labelled with the batch size or
``num_output``; layers filtered by phase with Caffe's include/exclude rule. Built with pydot and
rendered by Graphviz's ``dot`` program, which comes from the OS, so its absence is one clear
error naming the package to install. Only the NetParameter is read: nothing is built or imported.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
           "InnerProduct": "#CC33FF"}
_LEARNED = ("Convolution", "Deconvolution", "InnerProduct")


class GraphvizMissing(CaffeCompatError, FileNotFoundError):
    """Graphviz's ``dot`` is not installed (a FileNotFoundError, as pydot raises, and ours)."""


class DotFailed(CaffeCompatError, AssertionError):
    """``dot`` refused the graph or the format (an AssertionError, as pydot raises, and ours)."""


def _pydot() -> Any:
    try:
        import pydot
    except ImportError:
        raise CaffeCompatError("drawing nets needs pydot: pip install pydot") from None
    return pydot


def get_pooling_types_dict() -> dict[int, str]:
    """Pooling method number -> name (MAX, AVE, STOCHASTIC)."""
    return {v.number: name for name, v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name.items()}


def get_edge_label(layer: caffe_pb2.LayerParameter) -> str:
    """A top edge's label: the batch of a Data layer, the outputs of a convolution or inner product."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer: caffe_pb2.LayerParameter) -> tuple[float, float]:
    """The learning rate multipliers of the weights and biases of a learned layer."""
    if layer.type not in _LEARNED:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    mults = [p.lr_mult for p in layer.param]
    if len(mults) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    return tuple(mults + [1.0] * (2 - len(mults)))  # type: ignore[return-value]


def get_layer_label(layer: caffe_pb2.LayerParameter, rankdir: str, display_lrm: bool = False) -> str:
    """A layer node's label; words on one line when the graph runs vertically, else stacked."""
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    if layer.type == "Pooling":
        parts = [layer.name, f"({layer.type} {get_pooling_types_dict()[layer.pooling_param.pool]})"]
    else:
        parts = [layer.name, f"({layer.type})"]
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            p = layer.pooling_param
            kernel, stride, pad = p.kernel_size, p.stride, p.pad
        else:
            c = layer.convolution_param
            kernel = c.kernel_size[0] if len(c.kernel_size) else 1
            stride = c.stride[0] if len(c.stride) else 1
            pad = c.pad[0] if len(c.pad) else 0
        parts.append(separator.join([f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in _LEARNED:
        lrm0, lrm1 = get_layer_lr_mult(layer)
        if lrm0 or lrm1:
            parts.append(f"lr mult: {lrm0:.1f}, {lrm1:.1f}")
    return '"%s"' % separator.join(parts)  # quoted, or dot misreads the colons


def choose_color_by_layertype(layertype: str) -> str:
    return _COLORS.get(layertype, LAYER_STYLE_DEFAULT["fillcolor"])


def _included(layer: caffe_pb2.LayerParameter, phase: int) -> bool:
    """draw.py's phase rule: only include/exclude phases count (not stages or levels)."""
    if layer.include and layer.exclude:
        raise ValueError(f"layer {layer.name} has both include and exclude specified.")
    included = not layer.include or any(rule.phase == phase for rule in layer.include)
    return included and not any(rule.phase == phase for rule in layer.exclude)


def get_pydot_graph(caffe_net: caffe_pb2.NetParameter, rankdir: str, label_edges: bool = True,
                    phase: int | None = None, display_lrm: bool = False):
    """The pydot graph of ``caffe_net``'s layers (those of ``phase``, or all when None) and blobs."""
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str, str]] = []
    for layer in caffe_net.layer:
        if phase is not None and not _included(layer, phase):
            continue
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        node = f"{layer.name}_{layer.type}"
        if len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]:
            nodes[node] = pydot.Node(label, **NEURON_LAYER_STYLE)  # an in-place neuron layer
        else:
            nodes[node] = pydot.Node(label, **{**LAYER_STYLE_DEFAULT,
                                               "fillcolor": choose_color_by_layertype(layer.type)})
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((bottom + "_blob", node, '""'))
        for top in layer.top:  # as Caffe's: a blob last named as a top is drawn unstyled
            nodes[top + "_blob"] = pydot.Node(top)
            edges.append((node, top + "_blob", get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def draw_net(caffe_net: caffe_pb2.NetParameter, rankdir: str, ext: str = "png", phase: int | None = None,
             display_lrm: bool = False) -> bytes:
    """The picture of ``caffe_net`` in format ``ext`` (png, svg, pdf, dot, ...: any of ``dot -T``), as
    bytes; ``raw`` is the graph's dot source, before Graphviz lays it out."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext == "raw":  # the dot source, to feed to Graphviz by hand (what draw.py documents for '.raw')
        return graph.to_string().encode()
    if shutil.which("dot") is None:
        raise GraphvizMissing("drawing nets needs Graphviz's 'dot' program, which is not on PATH: install "
                              "Graphviz (apt-get install graphviz, brew install graphviz, conda install graphviz)")
    try:
        return graph.create(format=ext)
    except AssertionError as exc:  # pydot's way of saying dot exited non-zero; its stderr ends the message
        said = [line for line in str(exc).replace("\\n", "\n").splitlines() if line.strip(" b'\"")]
        raise DotFailed(f"Graphviz's dot could not draw format '{ext}': "
                        f"{said[-1].strip(' b') if said else 'it failed'}") from None


def draw_net_to_file(caffe_net: caffe_pb2.NetParameter, filename: str | os.PathLike[str], rankdir: str = "LR",
                     phase: int | None = None, display_lrm: bool = False) -> None:
    """Draw ``caffe_net`` into ``filename`` in the format its extension names ('.raw': dot source)."""
    name = os.fspath(filename)
    ext = name[name.rfind(".") + 1:]
    atomic_write_bytes(name, draw_net(caffe_net, rankdir, ext, phase, display_lrm))
