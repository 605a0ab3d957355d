"""Upgrade legacy nets and solvers to the current format, step for step as Caffe's upgrade_proto.

Order (as ``UpgradeNetAsNeeded``): V0 layers -> V1 (padding layers folded into the following
conv/pool), data-layer transform fields -> ``transform_param``, V1 ``layers`` -> V2 ``layer``
(enum types -> strings, blobs_lr/weight_decay -> ParamSpec), ``input``/``input_dim``/
``input_shape`` -> an ``Input`` layer, BatchNorm's three param specs -> lr_mult/decay_mult 0.

Problems Caffe logs and continues past ("had one or more problems ... continuing anyway") are
returned as messages; problems Caffe aborts on raise :class:`CaffeCompatError`.
"""

from __future__ import annotations

import logging
import os

from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2

log = logging.getLogger(__name__)

V1 = caffe_pb2.V1LayerParameter

# V0 string layer type -> V1 enum (UpgradeV0LayerType).
_V0_TYPES = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION,
    "data": V1.DATA, "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN, "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL, "images": V1.IMAGE_DATA, "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT, "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING,
    "relu": V1.RELU, "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS, "split": V1.SPLIT, "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

# V1 enum -> V2 type string (UpgradeV1LayerType).
_V1_TYPES = {
    V1.NONE: "", V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL", V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution", V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data",
    V1.DROPOUT: "Dropout", V1.DUMMY_DATA: "DummyData", V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise", V1.EXP: "Exp", V1.FLATTEN: "Flatten", V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData", V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct", V1.LRN: "LRN", V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", V1.MVN: "MVN",
    V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU", V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax", V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split",
    V1.SLICE: "Slice", V1.TANH: "TanH", V1.WINDOW_DATA: "WindowData", V1.THRESHOLD: "Threshold",
}

# V0 flat field -> {V0 layer type: (V1 parameter message, field)}; a field=None copies the
# whole message. In Caffe's order, which is the order of its error messages.
_CONV, _IP, _POOL = "convolution_param", "inner_product_param", "pooling_param"
_DATA_LAYERS = {"data": "data_param", "hdf5_data": "hdf5_data_param",
                "images": "image_data_param", "window_data": "window_data_param"}
_V0_FIELDS: dict[str, dict[str, tuple[str, str | None]]] = {
    "num_output": {"conv": (_CONV, "num_output"), "innerproduct": (_IP, "num_output")},
    "biasterm": {"conv": (_CONV, "bias_term"), "innerproduct": (_IP, "bias_term")},
    "weight_filler": {"conv": (_CONV, "weight_filler"), "innerproduct": (_IP, "weight_filler")},
    "bias_filler": {"conv": (_CONV, "bias_filler"), "innerproduct": (_IP, "bias_filler")},
    "pad": {"conv": (_CONV, "pad"), "pool": (_POOL, "pad")},
    "kernelsize": {"conv": (_CONV, "kernel_size"), "pool": (_POOL, "kernel_size")},
    "group": {"conv": (_CONV, "group")},
    "stride": {"conv": (_CONV, "stride"), "pool": (_POOL, "stride")},
    "pool": {"pool": (_POOL, "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {**{t: (p, "source") for t, p in _DATA_LAYERS.items()},
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": {None: ("transform_param", "scale")},
    "meanfile": {None: ("transform_param", "mean_file")},
    "batchsize": {t: (p, "batch_size") for t, p in _DATA_LAYERS.items()},
    "cropsize": {None: ("transform_param", "crop_size")},
    "mirror": {None: ("transform_param", "mirror")},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}
# The V0 field name Caffe's message uses when a field does not fit the layer type.
_V0_FIELD_LABEL = {"shuffle_images": "shuffle"}

# Data layers whose transform fields moved into transform_param, and those fields.
_TRANSFORM_LAYERS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param",
                     V1.WINDOW_DATA: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

_SOLVER_TYPES = {
    caffe_pb2.SolverParameter.SGD: "SGD", caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad", caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta", caffe_pb2.SolverParameter.ADAM: "Adam",
}


# --- what needs upgrading -------------------------------------------------------------------

def needs_v0_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return any(layer.HasField("layer") for layer in net.layers)


def needs_v1_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return len(net.layers) > 0


def needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    for layer in net.layers:
        param_name = _TRANSFORM_LAYERS.get(layer.type)
        if param_name and any(getattr(layer, param_name).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def needs_input_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return len(net.input) > 0


def needs_batch_norm_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer)


def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return (needs_v0_upgrade(net) or needs_v1_upgrade(net) or needs_data_upgrade(net)
            or needs_input_upgrade(net) or needs_batch_norm_upgrade(net))


# --- V0 -> V1 -------------------------------------------------------------------------------

def _fold_padding_layers(net: caffe_pb2.NetParameter, source: str) -> caffe_pb2.NetParameter:
    """Drop V0 "padding" layers, moving their pad into the conv/pool layer they feed."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    last_producer = {name: -1 for name in net.input}
    for i, connection in enumerate(net.layers):
        layer = connection.layer
        if layer.type != "padding":
            out.layers.add().CopyFrom(connection)
        for j, bottom in enumerate(connection.bottom):
            if bottom not in last_producer:
                raise CaffeCompatError(f"{source}: layer '{layer.name}' has unknown bottom blob '{bottom}'")
            producer = last_producer[bottom]
            if producer == -1 or net.layers[producer].layer.type != "padding":
                continue
            pad_layer = net.layers[producer]
            if layer.type not in ("conv", "pool"):
                raise CaffeCompatError(
                    f"{source}: padding layer '{pad_layer.layer.name}' feeds layer '{layer.name}' of "
                    f"type {layer.type}; only conv and pool layers can absorb padding"
                )
            if len(connection.bottom) != 1 or len(pad_layer.bottom) != 1 or len(pad_layer.top) != 1:
                raise CaffeCompatError(
                    f"{source}: padding layer '{pad_layer.layer.name}' and the layer '{layer.name}' it "
                    "feeds must each have exactly one input (and the padding layer one output)"
                )
            upgraded = out.layers[len(out.layers) - 1]
            upgraded.layer.pad = pad_layer.layer.pad
            upgraded.bottom[j] = pad_layer.bottom[0]
        for top in connection.top:
            last_producer[top] = i
    return out


def _upgrade_v0_layer(connection: caffe_pb2.V1LayerParameter, source: str, problems: list[str]) -> caffe_pb2.V1LayerParameter:
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(connection.bottom)
    out.top.extend(connection.top)
    if not connection.HasField("layer"):
        return out
    v0 = connection.layer
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if v0.type not in _V0_TYPES:
            raise CaffeCompatError(f"{source}: layer '{v0.name}' has unknown V0 layer type '{v0.type}'")
        out.type = _V0_TYPES[v0.type]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for v0_field, targets in _V0_FIELDS.items():
        if not v0.HasField(v0_field):
            continue
        target = targets.get(None) or targets.get(v0.type)
        if target is None:
            label = _V0_FIELD_LABEL.get(v0_field, v0_field)
            problems.append(f"{source}: layer '{v0.name}': unknown parameter {label} for layer type {v0.type}")
            continue
        message_name, field_name = target
        message = getattr(out, message_name)
        value = getattr(v0, v0_field)
        if field_name is None:
            message.CopyFrom(value)
        elif message.DESCRIPTOR.fields_by_name[field_name].message_type is not None:
            getattr(message, field_name).CopyFrom(value)
        elif hasattr(getattr(message, field_name), "append"):  # conv pad/kernel_size/stride are repeated
            getattr(message, field_name).append(value)
        else:
            setattr(message, field_name, value)
    return out


def upgrade_v0_net(net: caffe_pb2.NetParameter, source: str) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """UpgradeV0Net: a V1 net; only name, layers, input, input_dim and force_backward survive."""
    padded = _fold_padding_layers(net, source)
    problems: list[str] = []
    out = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        out.name = padded.name
    for connection in padded.layers:
        out.layers.append(_upgrade_v0_layer(connection, source, problems))
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        out.force_backward = padded.force_backward
    return out, problems


# --- V1 data transform, V1 -> V2 ----------------------------------------------------------

def upgrade_data_transformation(net: caffe_pb2.NetParameter) -> None:
    """Move scale/mean_file/crop_size/mirror from a V1 data layer's parameter to transform_param."""
    for layer in net.layers:
        param_name = _TRANSFORM_LAYERS.get(layer.type)
        if param_name is None:
            continue
        param = getattr(layer, param_name)
        for name in _TRANSFORM_FIELDS:
            if param.HasField(name):
                setattr(layer.transform_param, name, getattr(param, name))
                param.ClearField(name)


def _upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter, out: caffe_pb2.LayerParameter) -> bool:
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        out.type = _V1_TYPES[v1.type]
    out.blobs.extend(v1.blobs)
    # ParamSpec i gathers param[i], blob_share_mode[i], blobs_lr[i] and weight_decay[i].
    for values, setter in (
        (v1.param, lambda spec, v: setattr(spec, "name", v)),
        (v1.blob_share_mode, lambda spec, v: setattr(spec, "share_mode", v)),
        (v1.blobs_lr, lambda spec, v: setattr(spec, "lr_mult", v)),
        (v1.weight_decay, lambda spec, v: setattr(spec, "decay_mult", v)),
    ):
        for i, value in enumerate(values):
            while len(out.param) <= i:
                out.param.add()
            setter(out.param[i], value)
    out.loss_weight.extend(v1.loss_weight)
    for fd in v1.DESCRIPTOR.fields:
        if fd.name.endswith("_param") and v1.HasField(fd.name):
            getattr(out, fd.name).CopyFrom(getattr(v1, fd.name))
    return not v1.HasField("layer")  # a leftover V0 layer is ignored ("Input NetParameter has V0 layer")


def upgrade_v1_net(net: caffe_pb2.NetParameter, source: str) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """UpgradeV1Net: ``layers`` (V1) become ``layer`` (V2); everything else is kept."""
    if len(net.layer) > 0:
        raise CaffeCompatError(
            f"{source}: refusing to upgrade a net that has both 'layer' and 'layers' fields; "
            "switch it to the 'layer { type: \"...\" }' format by hand"
        )
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    problems = []
    for i, v1 in enumerate(net.layers):
        if not _upgrade_v1_layer(v1, out.layer.add()):
            problems.append(f"{source}: layer {i} ('{v1.name}') still holds a V0 layer, which was ignored")
    return out, problems


# --- inputs, BatchNorm ----------------------------------------------------------------------

def upgrade_net_input(net: caffe_pb2.NetParameter, source: str) -> None:
    """Turn input/input_shape/input_dim into a leading Input layer named "input".

    Inputs without any shape (old caffemodels) are simply dropped, as in Caffe.
    """
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        if (has_shape and len(net.input_shape) < len(net.input)) or (
            not has_shape and len(net.input_dim) < 4 * len(net.input)
        ):
            raise CaffeCompatError(
                f"{source}: {len(net.input)} inputs need {'one input_shape' if has_shape else 'four input_dim'} "
                f"each, got {len(net.input_shape) if has_shape else len(net.input_dim)}"
            )
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i : 4 * i + 4])
        rest = list(net.layer)
        del net.layer[:]
        net.layer.append(layer)
        net.layer.extend(rest)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def upgrade_batch_norm(net: caffe_pb2.NetParameter) -> None:
    """Old BatchNorm definitions declared 3 param specs; Caffe pins them to lr/decay 0."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# --- entry points ---------------------------------------------------------------------------

def upgrade_net_as_needed(net: caffe_pb2.NetParameter, source: str | os.PathLike[str] = "<net>") -> list[str]:
    """Upgrade ``net`` in place (UpgradeNetAsNeeded); return the problems Caffe continues past."""
    source = os.fspath(source)
    problems: list[str] = []
    if needs_v0_upgrade(net):
        log.info("Upgrading V0LayerParameter net: %s", source)
        upgraded, found = upgrade_v0_net(net, source)
        net.CopyFrom(upgraded)
        problems += found
    if needs_data_upgrade(net):
        log.info("Upgrading deprecated data transformation parameters: %s", source)
        upgrade_data_transformation(net)
    if needs_v1_upgrade(net):
        log.info("Upgrading V1LayerParameter net: %s", source)
        upgraded, found = upgrade_v1_net(net, source)
        net.CopyFrom(upgraded)
        problems += found
    if needs_input_upgrade(net):
        log.info("Upgrading deprecated input fields: %s", source)
        upgrade_net_input(net, source)
    if needs_batch_norm_upgrade(net):
        if any(spec.lr_mult or spec.decay_mult for layer in net.layer if layer.type == "BatchNorm"
               for spec in layer.param):  # Caffe logs even when nothing changes; we log changes only
            log.info("Upgrading BatchNorm layers with deprecated params: %s", source)
        upgrade_batch_norm(net)
    return problems


def upgrade_net_on_read(net: caffe_pb2.NetParameter, source: str | os.PathLike[str]) -> None:
    """What Caffe's ReadNetParams*OrDie do: upgrade, warning about problems it continues past."""
    for problem in upgrade_net_as_needed(net, source):
        log.warning("%s (continuing anyway, as Caffe does)", problem)


def upgrade_solver_as_needed(solver: caffe_pb2.SolverParameter, source: str | os.PathLike[str] = "<solver>") -> None:
    """UpgradeSolverAsNeeded: the deprecated ``solver_type`` enum becomes the ``type`` string."""
    if not solver.HasField("solver_type"):
        return
    if solver.HasField("type"):
        raise CaffeCompatError(
            f"{os.fspath(source)}: solver_type (enum) and type (string) cannot both be set; keep only type"
        )
    solver.type = _SOLVER_TYPES[solver.solver_type]
    solver.ClearField("solver_type")


def upgrade_snapshot_prefix(solver: caffe_pb2.SolverParameter, source: str | os.PathLike[str]) -> None:
    """UpgradeSnapshotPrefixProperty: default or directory snapshot_prefix -> derived from the file name.

    Like Caffe, a relative snapshot_prefix is tested against the current directory.
    """
    source = os.fspath(source)
    if not solver.HasField("snapshot_prefix"):
        solver.snapshot_prefix = os.path.splitext(source)[0]
    elif os.path.isdir(solver.snapshot_prefix):
        stem = os.path.splitext(os.path.basename(source))[0]
        solver.snapshot_prefix = os.path.join(solver.snapshot_prefix, stem)
