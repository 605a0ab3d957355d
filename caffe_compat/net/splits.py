"""Caffe's implicit Split layers (``util/insert_splits.cpp``), so blob names match real Caffe.

Caffe rewrites every net before building it: a top consumed by more than one bottom (or by
one bottom plus a loss weight) gets a ``Split`` layer right after its producer, named
``<blob>_<producer>_<top index>_split``, whose tops ``<blob>_<producer>_<top index>_split_<k>``
replace the consumers' bottoms in order. Reproducing this exactly makes our blob dumps,
caffemodel exports and per-consumer gradients line up with Caffe's ``net.blobs``.
"""

from __future__ import annotations

from collections import defaultdict

from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2

TopIndex = tuple[int, int]  # (layer index, top index)


def split_layer_name(producer: str, blob: str, top_index: int) -> str:
    return f"{blob}_{producer}_{top_index}_split"


def split_blob_name(producer: str, blob: str, top_index: int, split_index: int) -> str:
    return f"{blob}_{producer}_{top_index}_split_{split_index}"


def insert_splits(net_param):
    """A copy of ``net_param`` with Caffe's Split layers inserted and bottoms renamed."""
    layers = net_param.layer
    last_top: dict[str, TopIndex] = {}
    source_of: dict[TopIndex, TopIndex] = {}  # (layer, bottom index) -> producing top
    uses: dict[TopIndex, int] = defaultdict(int)
    loss_weight_of: dict[TopIndex, float] = {}
    for i, layer in enumerate(layers):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_top:
                raise CaffeCompatError(
                    f"layer '{layer.name}' (type {layer.type}): unknown bottom blob '{blob}' "
                    f"(bottom index {j}): no earlier layer produces it"
                )
            source_of[(i, j)] = last_top[blob]
            uses[last_top[blob]] += 1
        for j, blob in enumerate(layer.top):
            last_top[blob] = (i, j)
        # A top used as a loss counts as one more consumer (Caffe's rule).
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_top[layer.top[j]]
            loss_weight_of[top] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                uses[top] += 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    next_split: dict[TopIndex, int] = defaultdict(int)
    for i, layer in enumerate(layers):
        copy = out.layer.add()
        copy.CopyFrom(layer)
        for j, blob in enumerate(copy.bottom):
            top = source_of[(i, j)]
            if uses[top] > 1:
                producer = layers[top[0]].name
                copy.bottom[j] = split_blob_name(producer, blob, top[1], next_split[top])
                next_split[top] += 1
        for j, blob in enumerate(layer.top):
            count = uses[(i, j)]
            if count <= 1:
                continue
            loss_weight = loss_weight_of.get((i, j), 0.0)
            split = out.layer.add()
            split.name = split_layer_name(layer.name, blob, j)
            split.type = "Split"
            split.bottom.append(blob)
            for k in range(count):
                split.top.append(split_blob_name(layer.name, blob, j, k))
                if loss_weight:
                    split.loss_weight.append(loss_weight if k == 0 else 0.0)
            if loss_weight:
                # The split's first copy carries the loss; consumers start at copy 1.
                del copy.loss_weight[:]
                next_split[(i, j)] += 1
    return out
