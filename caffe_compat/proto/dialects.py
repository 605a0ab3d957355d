"""Dialects: the widely used Caffe forks, their fields, layer types and field numbers.

Legacy users inherit their fork's ``caffe.proto``. Fields of a fork whose number is free in
BVLC live in ``caffe.proto`` itself (in per-fork commented blocks) and need nothing here. A
fork field whose number BVLC (or another fork) uses for something else is kept in
``caffe.proto`` at a private number, and its dialect says where the fork puts it:

- in prototxt the field's *name* tells them apart, so no choice is ever needed there;
- in a binary file (``.caffemodel``) the number is all there is. :func:`choose` picks the
  dialect from the layer types present (an ``Upsample`` layer's field 137 can only be
  SegNet's ``upsample_param``, an ``Input`` layer's 143 only BVLC's ``input_param``), and
  ``--dialect NAME`` decides what types cannot: a Pooling layer's field 13 is BVLC's
  ``round_mode`` (enum, CEIL = 0, FLOOR = 1) or OpenCV's ``ceil_mode`` (bool, true = ceil), the
  same wire value meaning opposite roundings. Without a fork type or ``--dialect`` it is read
  as BVLC's ``round_mode``.

The table also names each dialect's fields, so an unknown prototxt field can be reported with
the dialects that know it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caffe_compat.errors import CaffeCompatError


@dataclass(frozen=True)
class Move:
    """A field the fork numbers ``fork`` and caffe_compat numbers ``ours``, inside the
    LayerParameter of the given ``layer_types`` (empty: every layer). ``within`` is the
    LayerParameter field of the message holding it (``()`` for LayerParameter itself), by the
    fork's number where that field is itself moved (PSPNet's bn_param 152)."""

    within: tuple[int, ...]
    fork: int
    ours: int
    layer_types: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Dialect:
    """One fork: where it is read from, the names it adds and the numbers it moves."""

    name: str
    source: str  # repository @ commit whose caffe.proto and layer sources were read
    #: message name -> field names this fork adds to it (for unknown-field messages)
    fields: dict[str, frozenset[str]] = field(default_factory=dict)
    #: layer types only this fork (or its family) defines
    layer_types: frozenset[str] = frozenset()
    moves: tuple[Move, ...] = ()


_POOLING_PARAM = 121  # LayerParameter.pooling_param
_PSP_BN_PARAM = 152  # PSPNet's LayerParameter.bn_param

_SEGNET_ENET_FIELDS = {
    "LayerParameter": frozenset({"bn_param", "upsample_param"}),
    "BNParameter": frozenset({"bn_mode", "scale_filler", "shift_filler"}),
    "UpsampleParameter": frozenset({"scale", "scale_h", "scale_w", "pad_out_h", "pad_out_w",
                                    "upsample_h", "upsample_w"}),
}

_PSROI_POOLING_PARAM = 11001  # LayerParameter.psroi_pooling_param here
_FAST_RCNN_LAYER_FIELDS = frozenset({"roi_pooling_param", "smooth_l1_loss_param"})
_ROI_FIELDS = frozenset({"pooled_h", "pooled_w", "spatial_scale"})
_PSROI_FIELDS = frozenset({"spatial_scale", "output_dim", "group_size"})

DIALECTS: dict[str, Dialect] = {d.name: d for d in (
    Dialect("bvlc", "BVLC/caffe @9b89154"),
    Dialect(
        "segnet", "alexgkendall/caffe-segnet @344c113", _SEGNET_ENET_FIELDS,
        frozenset({"BN", "Upsample"}),
        (Move((), 137, 5137, frozenset({"Upsample"})),),
    ),
    Dialect(
        "enet", "TimoSaemann/caffe-enet @22d356c", _SEGNET_ENET_FIELDS,
        frozenset({"BN", "Upsample"}),
        (Move((), 147, 5137, frozenset({"Upsample"})),),
    ),
    Dialect(
        "pspnet", "hszhao/PSPNet @798bdc9",
        {"LayerParameter": frozenset({"interp_param", "bn_param"}),
         "InterpParameter": frozenset({"height", "width", "zoom_factor", "shrink_factor", "pad_beg", "pad_end"}),
         "BNParameter": frozenset({"slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine"})},
        frozenset({"Interp", "BN"}),
        (Move((), 143, 2143, frozenset({"Interp"})),
         # PSPNet's own BN: bn_param is 152 there (45, SegNet's, here), and its BNParameter's
         # slope_filler, bias_filler, momentum (1, 2, 3) collide with SegNet's scale_filler,
         # shift_filler, bn_mode. A BN layer holding field 152 can only be PSPNet's.
         Move((), _PSP_BN_PARAM, 45, frozenset({"BN"})),
         Move((_PSP_BN_PARAM,), 1, 1001, frozenset({"BN"})),
         Move((_PSP_BN_PARAM,), 2, 1002, frozenset({"BN"})),
         Move((_PSP_BN_PARAM,), 3, 1003, frozenset({"BN"}))),
    ),
    Dialect(
        # soeaver's caffe-priv (the py-RFCN-priv repository's caffe-priv/), which the nets of
        # soeaver/caffe-model need: DeepLab's Interp at 20001 with use_blob_size, SeLu, SeLuDropout,
        # and the region pooling of its detection nets at 147 and 148 (BVLC's swish_param and
        # clip_param; caffe-enet's upsample_param 147 is told apart by its Upsample layer).
        "priv", "soeaver/py-RFCN-priv (caffe-priv) @ec89b86",
        {"LayerParameter": frozenset({"interp_param", "selu_param", "selu_dropout_param"})
         | _FAST_RCNN_LAYER_FIELDS | {"psroi_pooling_param", "box_annotator_ohem_param",
                                     "deformable_psroi_pooling_param"},
         "InterpParameter": frozenset({"height", "width", "zoom_factor", "shrink_factor", "pad_beg", "pad_end",
                                       "use_blob_size"}),
         "SeLuParameter": frozenset({"lambda", "alpha"}),
         "SeLuDropoutParameter": frozenset({"dropout_ratio", "alpha"}),
         "ROIPoolingParameter": _ROI_FIELDS, "PSROIPoolingParameter": _PSROI_FIELDS},
        frozenset({"Interp", "SeLu", "SeLuDropout", "ROIPooling", "SmoothL1Loss", "PSROIPooling",
                   "BoxAnnotatorOHEM", "DeformablePSROIPooling"}),
        (Move((), 20001, 2143, frozenset({"Interp"})),
         Move((), 147, 8266711, frozenset({"ROIPooling"})),
         Move((), 148, _PSROI_POOLING_PARAM, frozenset({"PSROIPooling"}))),
    ),
    Dialect(
        "opencv", "opencv/opencv modules/dnn/src/caffe/opencv-caffe.proto @036f721",
        # OpenCV's res10 SSD face detector (samples/dnn/face_detector/deploy.prototxt) sets
        # detection_output_param { clip: 1 }, a field weiliu89's DetectionOutputParameter lacks.
        {"PoolingParameter": frozenset({"ceil_mode"}), "DetectionOutputParameter": frozenset({"clip"})},
        frozenset(),
        (Move((_POOLING_PARAM,), 13, 1013, frozenset({"Pooling"})),),
    ),
    Dialect(
        "ssd", "weiliu89/caffe (ssd branch) @4817bf8",
        {"LayerParameter": frozenset({"permute_param", "prior_box_param", "detection_output_param", "norm_param",
                                      "annotated_data_param", "multibox_loss_param", "detection_evaluate_param",
                                      "video_data_param"}),
         "FlattenParameter": frozenset(),
         "PermuteParameter": frozenset({"order"}),
         "NormalizeParameter": frozenset({"across_spatial", "scale_filler", "channel_shared", "eps"}),
         "PriorBoxParameter": frozenset({"min_size", "max_size", "aspect_ratio", "flip", "clip", "variance",
                                         "img_size", "img_h", "img_w", "step", "step_h", "step_w", "offset"}),
         "DetectionOutputParameter": frozenset({"num_classes", "share_location", "background_label_id", "nms_param",
                                                "save_output_param", "code_type", "variance_encoded_in_target",
                                                "keep_top_k", "confidence_threshold", "visualize",
                                                "visualize_threshold", "save_file"}),
         "NonMaximumSuppressionParameter": frozenset({"nms_threshold", "top_k", "eta"})},
        frozenset({"Permute", "PriorBox", "DetectionOutput", "Normalize", "AnnotatedData", "MultiBoxLoss",
                   "DetectionEvaluate"}),
    ),
    Dialect(
        "senet", "hujie-frank/SENet @0262d43", {}, frozenset({"Axpy"}),
    ),
    Dialect(
        "shufflenet", "farmingyard/ShuffleNet @b962444",
        {"LayerParameter": frozenset({"shuffle_channel_param"}),
         "ShuffleChannelParameter": frozenset({"group"})},
        frozenset({"ShuffleChannel"}),
    ),
    Dialect(
        "relu6", "rog93/Caffe-MobileNetV2-ReLU6 (README)",
        {"LayerParameter": frozenset({"relu6_param"}), "ReLU6Parameter": frozenset({"negative_slope"})},
        frozenset({"ReLU6"}),
    ),
    Dialect(
        "depthwise", "yonghenglh6/DepthwiseConvolution @2b9cf52", {},
        frozenset({"DepthwiseConvolution", "ConvolutionDepthwise"}),
    ),
    # py-faster-rcnn's caffe (its caffe-fast-rcnn submodule's commit): roi_pooling_param and
    # smooth_l1_loss_param at 8266711 and 8266712, free in BVLC, so nothing moves.
    Dialect(
        "fast-rcnn", "rbgirshick/caffe-fast-rcnn @0dcd397",
        {"LayerParameter": _FAST_RCNN_LAYER_FIELDS, "ROIPoolingParameter": _ROI_FIELDS,
         "SmoothL1LossParameter": frozenset({"sigma"})},
        frozenset({"ROIPooling", "SmoothL1Loss"}),
    ),
    # R-FCN's caffe: psroi_pooling_param 10001 (11001 here: Yahoo's open_nsfw caffemodel holds
    # a field 10001 of another type in its MemoryData layer) and box_annotator_ohem_param 10000.
    Dialect(
        "rfcn", "daijifeng001/caffe-rfcn @543f8f6",
        {"LayerParameter": _FAST_RCNN_LAYER_FIELDS | {"psroi_pooling_param", "box_annotator_ohem_param"},
         "ROIPoolingParameter": _ROI_FIELDS, "PSROIPoolingParameter": _PSROI_FIELDS,
         "BoxAnnotatorOHEMParameter": frozenset({"roi_per_img", "ignore_label"})},
        frozenset({"ROIPooling", "SmoothL1Loss", "PSROIPooling", "BoxAnnotatorOHEM"}),
        (Move((), 10001, _PSROI_POOLING_PARAM, frozenset({"PSROIPooling"})),),
    ),
)}


#: PSPNet's own BNParameter fields (hszhao/PSPNet @798bdc9); SegNet's are bn_mode,
#: scale_filler, shift_filler. caffe.proto's BNParameter holds both forks' fields.
PSPNET_BN_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")


def is_pspnet_bn(bn_param) -> bool:
    """Whether a BN layer's ``bn_param`` is PSPNet's (4 blobs: slope, bias, moving mean and
    variance) rather than SegNet's/ENet's (2 blobs: scale, shift): any of PSPNet's fields set.
    Setting fields of both is an error (raised by the layer)."""
    return any(bn_param.HasField(name) for name in PSPNET_BN_FIELDS)


#: The dialect ``--dialect`` names for this process (None: choose from the file).
_selected: str | None = None


def select(name: str | None) -> None:
    """Make ``name`` the dialect of every binary file this process reads or writes
    (the CLI's ``--dialect``); None goes back to choosing from each file."""
    global _selected
    if name is not None:
        get(name)
    _selected = name


def selected() -> str | None:
    return _selected


def get(name: str) -> Dialect:
    """The dialect called ``name``, or one error line listing the known ones."""
    if name not in DIALECTS:
        raise CaffeCompatError(f"unknown dialect '{name}'; known: {', '.join(sorted(DIALECTS))}")
    return DIALECTS[name]


def knowing(message: str, field_name: str) -> list[str]:
    """Names of the dialects that add ``field_name`` to ``message`` (e.g. "PoolingParameter")."""
    return [d.name for d in DIALECTS.values() if field_name in d.fields.get(message, ())]


def defining(layer_type: str) -> list[str]:
    """Names of the dialects that define the layer type ``layer_type``."""
    return [d.name for d in DIALECTS.values() if layer_type in d.layer_types]


def choose(layer_types: set[str], field_numbers: dict[str, set[int]], requested: str | None = None) -> Dialect:
    """The dialect of a binary file: ``requested`` (``--dialect``) when given, else the one
    whose moves its layers need, told apart by layer type and by the fork numbers present
    (``field_numbers``: layer type -> LayerParameter field numbers seen in such layers).

    BVLC when nothing fork-numbered is present; an error when two forks fit equally (only
    ``--dialect`` can settle it then).
    """
    requested = requested or _selected
    if requested is not None:
        return get(requested)
    fitting = []
    for dialect in DIALECTS.values():
        for move in dialect.moves:
            if move.within:
                continue  # nested numbers (ceil_mode) cannot be told from round_mode: --dialect
            types = move.layer_types or layer_types
            if any(move.fork in field_numbers.get(t, ()) for t in types):
                fitting.append(dialect)
                break
    if not fitting:
        return DIALECTS["bvlc"]
    return combine(fitting)


def combine(chosen: list[Dialect]) -> Dialect:
    """One dialect with the moves of all of ``chosen`` (a file may hold SegNet's Upsample and
    PSPNet's Interp); an error when two of them number the same layer type's field differently."""
    if len(chosen) == 1:
        return chosen[0]
    for i, first in enumerate(chosen):
        for second in chosen[i + 1 :]:
            if {t for m in first.moves for t in m.layer_types} & {t for m in second.moves for t in m.layer_types}:
                raise CaffeCompatError(f"the file fits dialects {first.name}, {second.name}; choose one with --dialect")
    return Dialect("+".join(d.name for d in chosen), "; ".join(d.source for d in chosen),
                   moves=tuple(m for d in chosen for m in d.moves))
