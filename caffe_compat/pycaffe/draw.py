"""pycaffe's ``caffe.draw``: ``draw_net``, ``draw_net_to_file``, ``get_pydot_graph`` (Caffe's
signatures; the drawing itself is :mod:`caffe_compat.net.draw`, which the CLI's draw-net uses too)."""

from caffe_compat.net.draw import (
    BLOB_STYLE,
    LAYER_STYLE_DEFAULT,
    NEURON_LAYER_STYLE,
    choose_color_by_layertype,
    draw_net,
    draw_net_to_file,
    get_edge_label,
    get_layer_label,
    get_layer_lr_mult,
    get_pooling_types_dict,
    get_pydot_graph,
)

__all__ = [
    "BLOB_STYLE", "LAYER_STYLE_DEFAULT", "NEURON_LAYER_STYLE", "choose_color_by_layertype", "draw_net",
    "draw_net_to_file", "get_edge_label", "get_layer_label", "get_layer_lr_mult", "get_pooling_types_dict",
    "get_pydot_graph",
]
