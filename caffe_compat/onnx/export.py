"""Caffe deploy net + weights -> ONNX, written directly with ``onnx.helper``.

WHY not ``torch.onnx``: it needs onnxscript and traces our PyTorch modules, whose Caffe-exact
tricks (pooling overhang, in-place rebinding) would come out as opaque op soup. Here the net is
built once by :class:`~caffe_compat.net.builder.CaffeNet` in the TEST phase (so every prototxt
rule, upgrade, implicit split and shape check is the one training uses), then each layer is
handed to its registered converter (``caffe_compat.onnx.converters``).

Dynamic batch: Caffe reshapes a whole net when its inputs change size, so which axes follow the
batch is found the way Caffe would find it: the kept layers are built a second time with the
batched inputs at twice their batch, and every blob axis whose size changed follows the batch
(converters read those sizes from the tensors at run time). A layer that cannot take another
batch (a learned blob spanning axis 0, a size Caffe cannot reshape) stops a dynamic export with
its name.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from caffe_compat.atomic import atomic_write
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.net.builder import CaffeNet, Step
from caffe_compat.net.fold import fold_batchnorm
from caffe_compat.net.registry import TEST, Shape
from caffe_compat.net.user_code import python_layer_name, user_code_refused
from caffe_compat.onnx.converters import DROPPED_TYPES, converter_for
from caffe_compat.onnx.emit import Emit
from caffe_compat.onnx.graph import OnnxGraph
from caffe_compat.onnx.optimize import fold_scale_into_batchnorm
from caffe_compat.onnx.transform import METADATA_KEY, InputTransform
from caffe_compat.onnx.verify import max_abs_differences
from caffe_compat.proto import caffe_pb2

MIN_OPSET = 13  # Split/Unsqueeze with tensor inputs, Softmax over one axis
DEFAULT_OPSET = 17
BATCH_AXIS = "N"


@dataclass
class ExportResult:
    """What was written: the model, its inputs/outputs and the layers a deploy graph leaves out."""

    path: Path | None
    model: onnx.ModelProto
    inputs: list[tuple[str, tuple]]
    outputs: list[str]
    notes: list[str] = field(default_factory=list)
    differences: dict[str, float] | None = None  # per output, max |onnxruntime - CaffeNet| (verify)

    def node_counts(self) -> Counter:
        return Counter(node.op_type for node in self.model.graph.node)

    def summary(self) -> str:
        ins = ", ".join(f"{name} {tuple(shape)}" for name, shape in self.inputs)
        counts = self.node_counts()
        ops = ", ".join(f"{op} {n}" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        lines = [f"ONNX opset {self.model.opset_import[0].version}, {sum(counts.values())} nodes ({ops}); "
                 f"inputs: {ins}; outputs: {', '.join(self.outputs)}"]
        lines += [f"note: {note}" for note in self.notes]
        if self.differences is not None:
            diffs = ", ".join(f"{name} {value:.3g}" for name, value in self.differences.items())
            lines.append(f"max |onnxruntime - CaffeNet| on random inputs: {diffs}")
        if self.path is not None:
            lines.append(f"wrote {self.path}")
        return "\n".join(lines)


def load_plugins(modules: Sequence[str]) -> None:
    """Import user modules that register layers (``register_layer``) and converters
    (``add_converter``): a module name importable from the current folder, or a .py file."""
    for module in modules:
        module = module.strip()
        if not module:
            continue
        try:
            if module.endswith(".py"):
                spec = importlib.util.spec_from_file_location(Path(module).stem, module)
                if spec is None or spec.loader is None or not os.path.isfile(module):
                    raise FileNotFoundError(f"no such file {module}")
                loaded = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = loaded
                spec.loader.exec_module(loaded)
            else:
                if os.getcwd() not in sys.path:
                    sys.path.insert(0, os.getcwd())
                importlib.import_module(module)
        except Exception as exc:  # the user's module may raise anything while it imports
            raise CaffeCompatError(f"--plugins: cannot import '{module}': {type(exc).__name__}: {exc}") from None


def deploy_steps(net: CaffeNet) -> tuple[list[Step], list[str]]:
    """The steps a deploy graph keeps, and the left-out layers as 'name (Type)'.

    Loss/accuracy heads go; so do Caffe's implicit splits that only fed them (the blob itself
    then becomes a graph output, as in the deploy prototxt).
    """
    dropped = {s.name for s in net.steps if s.type in DROPPED_TYPES or s.layer.is_loss}
    for step in reversed(net.steps):
        if step.type == "Split" and step.name not in dropped:
            readers = [s.name for s in net.steps for b in s.bottoms if b in step.tops]
            if readers and all(r in dropped for r in readers):
                dropped.add(step.name)
    left_out = [f"'{s.name}' ({s.type})" for s in net.steps if s.name in dropped and s.type != "Split"]
    return [s for s in net.steps if s.name not in dropped], left_out


def _outputs(steps: Sequence[Step]) -> list[str]:
    """Caffe's net outputs over the kept layers: blobs left unread after their last write (an
    in-place layer at the end makes its blob an output again), in the order they are produced.

    Split copies are never outputs: an unread copy only fed a left-out loss layer."""
    available: dict[str, None] = {}
    for step in steps:
        for blob in step.bottoms:
            available.pop(blob, None)
        if step.layer.is_source or step.type == "Split":
            continue
        for blob in step.tops:
            available[blob] = None
    return list(available)


def fed_inputs(steps: Sequence[Step]) -> dict[str, tuple[Step, Shape]]:
    """The source tops the graph takes as inputs (all Input tops, data tops that are read)."""
    read = {b for s in steps for b in s.bottoms}
    fed: dict[str, tuple[Step, Shape]] = {}
    for step in steps:
        if step.layer.is_source:
            for blob, shape in zip(step.tops, step.layer.top_shapes()):
                if step.type == "Input" or blob in read:
                    fed[blob] = (step, tuple(shape))
    return fed


def deploy_net_param(name: str, steps: Sequence[Step], shapes: dict[str, Shape]) -> caffe_pb2.NetParameter:
    """The kept layers as a deploy net whose source layers are Input layers of ``shapes``."""
    param = caffe_pb2.NetParameter(name=name)
    for step in steps:
        if step.layer.is_source:
            tops = [t for t in step.tops if t in shapes]
            if tops:
                layer = param.layer.add(name=step.name, type="Input", top=tops)
                for top in tops:
                    layer.input_param.shape.add(dim=list(shapes[top]))
            continue
        layer = param.layer.add()
        layer.CopyFrom(step.layer.param)
        del layer.blobs[:]
        layer.ClearField("include")
        layer.ClearField("exclude")
    return param


@dataclass
class BatchPlan:
    """The graph inputs' declared dims and, per blob, the axes that follow the batch."""

    dims: dict[str, list[int | str]]
    dynamic: dict[str, frozenset[int]]


def _batched(fed: dict[str, tuple[Step, Shape]], dynamic_inputs: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(inputs whose axis 0 is the batch, a smaller fallback choice) for a dynamic export.

    Data-layer tops are batched. Of the Input tops, the first one is the batch's and so is any
    other whose axis 0 has the same size, unless that guess does not build (the fallback then
    keeps only the first one and the data tops).
    """
    if dynamic_inputs is not None:
        unknown = [name for name in dynamic_inputs if name not in fed]
        if unknown:
            raise CaffeCompatError(f"--dynamic-inputs: {', '.join(map(repr, unknown))} is not an input of the "
                                   f"graph; inputs are {', '.join(fed)}")
        scalar = [name for name in dynamic_inputs if not fed[name][1]]
        if scalar:
            raise CaffeCompatError(f"--dynamic-inputs: input '{scalar[0]}' has no axes, so no batch axis")
        return list(dynamic_inputs), list(dynamic_inputs)
    data = [blob for blob, (step, shape) in fed.items() if step.type != "Input" and shape]
    inputs = [(blob, shape) for blob, (step, shape) in fed.items() if step.type == "Input" and shape]
    if not inputs:
        return data, data
    first = inputs[0]
    same = [blob for blob, shape in inputs if shape[0] == first[1][0]]
    return data + same, data + [first[0]]


def _probe(net: CaffeNet, steps: Sequence[Step], fed: dict[str, tuple[Step, Shape]],
           batched: Sequence[str]) -> dict[str, frozenset[int]]:
    """Build the kept layers with the batched inputs at twice their batch (Caffe's Reshape) and
    return the axes that changed per blob; a layer that cannot follow stops it by name."""
    shapes = {blob: ((2 * shape[0], *shape[1:]) if blob in batched else shape) for blob, (_, shape) in fed.items()}
    try:
        probe = CaffeNet(deploy_net_param(net.name, steps, shapes), phase=TEST)
    except CaffeCompatError as exc:
        raise CaffeCompatError(f"dynamic batch (inputs {', '.join(batched)} at twice their batch): {exc}; export "
                               "with --batch prototxt or --batch N, or name the batched inputs with --dynamic-inputs"
                               ) from None
    for step in steps:
        other = probe.layer_by_name(step.name)
        if other is None or step.layer.is_source:
            continue
        for i, (mine, theirs) in enumerate(zip(step.layer.blobs, other.blobs)):
            if mine.shape != theirs.shape:
                raise CaffeCompatError(
                    f"layer '{step.name}' (type {step.type}) cannot follow a dynamic batch: its learned blob {i} "
                    f"{tuple(mine.shape)} spans the batch of {', '.join(batched)}; export with --batch prototxt "
                    "or a fixed --batch N")
    dynamic: dict[str, frozenset[int]] = {}
    for blob, shape in net.blob_shapes.items():
        moved = probe.blob_shapes.get(blob)
        if moved is None:
            continue
        if len(moved) != len(shape):
            dynamic[blob] = frozenset(range(len(shape)))
        elif moved != shape:
            dynamic[blob] = frozenset(i for i, (a, b) in enumerate(zip(shape, moved)) if a != b)
    return dynamic


def plan_batch(net: CaffeNet, steps: Sequence[Step], dynamic_batch: bool,
               dynamic_inputs: Sequence[str] | None = None) -> BatchPlan:
    """Declared input dims (``N`` on batched inputs) and the blob axes that follow the batch."""
    fed = fed_inputs(steps)
    dims = {blob: list(shape) for blob, (_, shape) in fed.items()}
    if not dynamic_batch:
        return BatchPlan(dims, {})
    own = own_batch_inputs(steps, fed) if dynamic_inputs is None else []
    guess, fallback = _batched({b: v for b, v in fed.items() if b not in own}, dynamic_inputs)
    guess, fallback = guess + own, fallback + own
    if not guess:
        return BatchPlan(dims, {})
    try:
        dynamic = _probe(net, steps, fed, guess)
        batched = guess
    except CaffeCompatError as exc:
        if fallback == guess or not fallback:
            raise
        try:
            dynamic = _probe(net, steps, fed, fallback)
        except CaffeCompatError:
            raise exc from None
        batched = fallback
    first = fed[batched[0]][1][0]
    for blob in batched:
        dims[blob][0] = BATCH_AXIS if fed[blob][1][0] == first and blob not in own else f"{BATCH_AXIS}_{blob}"
    return BatchPlan(dims, dynamic)


def own_batch_inputs(steps: Sequence[Step], fed: dict[str, tuple[Step, Shape]]) -> list[str]:
    """Inputs read as a layer's ``own_batch_bottoms`` (the ROIs of a detection net's second
    half): their axis 0 is a size of its own, whatever the prototxt declares. Split copies
    (Caffe's, inserted where a blob has several readers) lead back to the input."""
    copied = {top: step.bottoms[0] for step in steps if step.type == "Split" for top in step.tops}
    own = []
    for step in steps:
        for i in step.layer.own_batch_bottoms:
            if i < len(step.bottoms):
                blob = step.bottoms[i]
                while blob in copied:
                    blob = copied[blob]
                own.append(blob)
    return [blob for blob in dict.fromkeys(own) if blob in fed and fed[blob][1]]


def image_input(fed: dict[str, tuple[Step, Shape]]) -> str:
    """The input the transform applies to: the first N x C x H x W one."""
    for blob, (_, shape) in fed.items():
        if len(shape) == 4:
            return blob
    shapes = ", ".join(f"{blob} {shape}" for blob, (_, shape) in fed.items())
    raise CaffeCompatError(f"the input transform needs an N x C x H x W image input; the net's inputs are {shapes}")


def _source_size(layer) -> tuple[int, int] | None:
    """The stored images' (H, W) of a Data/ImageData layer (what its transform crops from)."""
    p = layer.param
    if p.type == "ImageData" and p.image_data_param.new_height > 0 and p.image_data_param.new_width > 0:
        return int(p.image_data_param.new_height), int(p.image_data_param.new_width)
    if p.type != "Data":
        return None
    try:
        image, _ = layer.source[0]
    except (CaffeCompatError, IndexError, OSError):
        return None
    return int(image.shape[-2]), int(image.shape[-1])


def transform_from_net(steps: Sequence[Step], channel_order: str = "bgr", uint8: bool = False) \
        -> tuple[str, InputTransform] | None:
    """(input, transform) from a kept Data/ImageData layer's ``transform_param``, if any."""
    fed = fed_inputs(steps)
    for blob, (step, shape) in fed.items():
        param = step.layer.param
        if step.type != "Input" and param.HasField("transform_param") and len(shape) == 4 and blob == step.tops[0]:
            try:
                transform = InputTransform.from_transform_param(param.transform_param, shape[1:],
                                                                _source_size(step.layer), channel_order, uint8)
            except CaffeCompatError as exc:
                raise CaffeCompatError(f"layer '{step.name}' transform_param: {exc}") from None
            return blob, transform
    return None


def net_to_onnx(net: CaffeNet, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, fp16: bool = False,
                extra_outputs: Sequence[str] = (), dynamic_inputs: Sequence[str] | None = None,
                transform: InputTransform | None = None, fold_bn: bool = False) \
        -> tuple[onnx.ModelProto, list[str], list[tuple[str, tuple]]]:
    """The ONNX model of a built TEST-phase net, plus notes and the graph inputs.

    ``extra_outputs``: more blobs to expose (their final value, as Caffe's ``net.blobs`` holds
    it), e.g. to compare intermediate blobs with a Caffe dump. ``transform``: the input
    transform to put in front of the image input (recorded in the model's metadata).
    ``fold_bn``: fold BatchNorm/Scale into the convolution or inner product before them (this
    changes ``net``'s weights in place).
    """
    if net.phase != TEST:
        raise CaffeCompatError(f"net '{net.name}': ONNX export needs the TEST phase (deploy semantics)")
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise CaffeCompatError(
            f"--opset {opset} is not supported: choose {MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
    steps, left_out = deploy_steps(net)
    notes = [f"left out layer {layer}: not part of a deploy graph" for layer in left_out]
    outputs = _outputs(steps)
    produced = {b for s in steps if not s.layer.is_source for b in s.tops}
    for blob in extra_outputs:
        if blob not in produced:
            raise CaffeCompatError(f"net '{net.name}': no exported layer produces blob '{blob}'")
        if blob not in outputs:
            outputs.append(blob)
    if not outputs:
        raise CaffeCompatError(f"net '{net.name}': nothing to export: every layer is a loss, accuracy or data "
                               f"layer (left out: {', '.join(left_out) or 'none'})")
    plan = plan_batch(net, steps, dynamic_batch, dynamic_inputs)
    fed = fed_inputs(steps)
    image = image_input(fed) if transform is not None else None
    if fold_bn:
        folded = fold_batchnorm(net)
        steps = [s for s in steps if s.name not in set(folded)]
        notes.append(f"folded {len(folded)} BatchNorm/Scale layer(s) into the layer before them")
    last_writer = {blob: s.name for s in steps for blob in s.tops}
    if fp16:  # outputs are float32 casts named after the blob
        for blob in outputs:
            last_writer.pop(blob, None)
    graph = OnnxGraph(np.float16 if fp16 else np.float32, last_writer, {blob for s in steps for blob in s.tops},
                      opset, plan.dynamic, set(outputs))
    inputs: list[tuple[str, tuple]] = []
    for step in steps:
        if step.layer.is_source:
            for blob, shape in zip(step.tops, step.layer.top_shapes()):
                if blob in fed:
                    graph.add_input(blob, shape, plan.dims[blob], transform if blob == image else None)
                    inputs.append((blob, tuple(plan.dims[blob])))
                    if step.type != "Input" and blob != image:
                        notes.append(f"input '{blob}' takes what {step.type} layer '{step.name}' produced: "
                                     "transform_param (crop, mean, scale) is not part of the graph")
                else:
                    notes.append(f"left out top '{blob}' of data layer '{step.name}' (no exported layer reads it)")
            continue
        emit = Emit(graph, step)
        native = step.type == "Python"  # a native Python layer's converter is keyed as its layer class
        converter_for(step.name, f"Python:{python_layer_name(step.layer.param)}" if native else step.type)(emit)
        missing = set(range(len(step.tops))) - emit.emitted()
        if missing:
            raise emit.fail(f"its converter wrote no value for top(s) {sorted(missing)}")
        for i, (blob, shape) in enumerate(zip(step.tops, step.layer.top_shapes())):
            graph.bind(blob, emit.top(i), shape)
    graph_outputs = []
    for blob in outputs:
        if fp16:
            graph.node("Cast", [graph.tensor(blob)], f"{blob}/cast", [graph.claim(blob)], to=TensorProto.FLOAT)
        graph_outputs.append(helper.make_tensor_value_info(blob, TensorProto.FLOAT, None))
    onnx_graph = helper.make_graph(graph.nodes, net.name or "caffe_net", graph.inputs, graph_outputs,
                                   graph.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="caffe-compat",
                              ir_version=helper.find_min_ir_version_for(opsets))
    if transform is not None and image is not None:
        helper.set_model_props(model, {METADATA_KEY: transform.to_metadata(image)})
        notes.append(transform.describe())
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        fold_scale_into_batchnorm(model.graph)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CaffeCompatError(f"net '{net.name}': the exported ONNX graph is invalid: {exc}") from exc
    return model, notes, inputs


def parse_batch(batch: int | str) -> int | str:
    """'dynamic', 'prototxt' or a positive int, with one clear error for anything else."""
    if batch in ("dynamic", "prototxt"):
        return batch
    try:
        value = int(batch)
    except (TypeError, ValueError):
        value = 0
    if value <= 0:
        raise CaffeCompatError(f"--batch must be 'dynamic', 'prototxt' or a positive number, got {batch!r}")
    return value


def export_onnx(model: str | os.PathLike[str], weights: str | os.PathLike[str],
                onnx_path: str | os.PathLike[str] | None, opset: int = DEFAULT_OPSET,
                batch: int | str = "dynamic", fp16: bool = False, verify: bool = False, *,
                dynamic_inputs: Sequence[str] | None = None, fold_bn: bool = False,
                mean_file: str | os.PathLike[str] | None = None, mean_value: Sequence[float] = (),
                scale: float | None = None, input_format: str = "bgr", input_uint8: bool = False,
                resize: tuple[int, int] | None = None, plugins: Sequence[str] = (),
                allow_fillers: bool = False) -> ExportResult:
    """Export a prototxt (deploy or train_val, any Caffe version) with its .caffemodel to ``onnx_path``.

    ``batch``: "dynamic" (axis 0 of the batched inputs is the symbol N), "prototxt" (the file's
    shapes) or a fixed batch size for the batched inputs. ``dynamic_inputs``: which inputs are
    batched (default: data-layer tops, and Input tops whose axis 0 matches the first one's).
    ``fp16``: float16 weights and compute, float32 inputs and outputs. ``fold_bn``: BatchNorm and
    Scale folded into the convolution before them. ``mean_file`` / ``mean_value`` / ``scale`` /
    ``input_format`` / ``input_uint8`` / ``resize``: Caffe's input transform inside the model (a
    train_val's TEST ``transform_param`` is used when none is given). ``onnx_path=None`` returns
    the model without writing it. ``verify``: also run random inputs through onnxruntime and
    CaffeNet (at twice the batch too when dynamic) and report the largest difference per output.
    ``allow_fillers``: export even if the weights miss layers with parameters (they keep their
    filler values); otherwise that is an error, as a model of random values is no model.
    """
    from caffe_compat.io.prototxt import read_net

    load_plugins(plugins)
    mode = parse_batch(batch)
    net_param = read_net(model)
    _check_input_dims(net_param, model)
    with user_code_refused("export-onnx"):  # an export reads the net: it never imports Python layers
        net = CaffeNet(net_param, phase=TEST)
    steps, _ = deploy_steps(net)
    transform, transform_note = requested_transform(steps, mean_file, mean_value, scale, input_format,
                                                     input_uint8, resize)
    if isinstance(mode, int):
        net = _at_batch(net, steps, mode, dynamic_inputs)
        steps, _ = deploy_steps(net)
    report = net.copy_from(weights)
    reference = {s.name: [b.detach().clone() for b in s.layer.blobs] for s in steps if len(s.layer.blobs)}
    onnx_model, notes, inputs = net_to_onnx(net, opset=opset, dynamic_batch=mode == "dynamic", fp16=fp16,
                                            dynamic_inputs=dynamic_inputs, transform=transform, fold_bn=fold_bn)
    notes += transform_note
    unfilled = [s.name for s in steps if s.name in report.initialised]
    if unfilled and not allow_fillers:
        with_params = sum(1 for s in steps if len(s.layer.blobs))
        shown = ", ".join(unfilled[:5]) + (", ..." if len(unfilled) > 5 else "")
        raise CaffeCompatError(
            f"{where(weights)}: has no weights for {len(unfilled)} of the {with_params} exported layers with "
            f"parameters ({shown}): weights of another net? (--allow-fillers exports them at their filler values)")
    if report.initialised:
        notes.append(f"layers not in {where(weights)} keep their filler values: {', '.join(report.initialised)}")
    outputs = [o.name for o in onnx_model.graph.output]
    differences = _verify(net.name, steps, reference, onnx_model, transform) if verify else None
    path = None
    if onnx_path is not None:
        path = Path(onnx_path)
        with atomic_write(path) as handle:
            handle.write(onnx_model.SerializeToString())
    return ExportResult(path, onnx_model, inputs, outputs, notes, differences)


def _check_input_dims(net_param, model: str | os.PathLike[str]) -> None:
    """Every dimension an Input layer (or a legacy ``input_dim``) declares must be at least 1."""
    declared = [(layer.name, list(shape.dim)) for layer in net_param.layer if layer.type == "Input"
                for shape in layer.input_param.shape]
    declared += [(name, list(shape.dim)) for name, shape in zip(net_param.input, net_param.input_shape)]
    for name, dims in declared:
        if any(d < 1 for d in dims):
            raise CaffeCompatError(f"{where(model)}: input '{name}' has shape {dims}: every dimension must be "
                                   "at least 1")


def requested_transform(steps: Sequence[Step], mean_file, mean_value: Sequence[float], scale: float | None,
                         input_format: str, input_uint8: bool, resize: tuple[int, int] | None) \
        -> tuple[InputTransform | None, list[str]]:
    """The transform the flags ask for, else the one a data layer's ``transform_param`` holds."""
    fed = fed_inputs(steps)
    if mean_file is not None or len(mean_value) or scale is not None or resize is not None:
        image = image_input(fed)
        return InputTransform.build(fed[image][1][1:], mean_file, mean_value, 1.0 if scale is None else scale,
                                    input_format, input_uint8, resize), []
    found = transform_from_net(steps, input_format, input_uint8)
    if found is not None:
        return found[1], [f"input '{found[0]}' takes raw pixels: the data layer's transform_param is in the graph"]
    if input_format != "bgr" or input_uint8:
        image = image_input(fed)
        return InputTransform.build(fed[image][1][1:], channel_order=input_format, uint8=input_uint8), []
    return None, []


def _at_batch(net: CaffeNet, steps: Sequence[Step], batch: int, dynamic_inputs: Sequence[str] | None) -> CaffeNet:
    """The kept layers rebuilt with the batched inputs fed ``batch`` items (a fixed-batch export)."""
    fed = fed_inputs(steps)
    guess, fallback = _batched(fed, dynamic_inputs)
    error: CaffeCompatError | None = None
    for batched in (guess, fallback):
        shapes = {blob: ((batch, *shape[1:]) if blob in batched else shape) for blob, (_, shape) in fed.items()}
        try:
            return CaffeNet(deploy_net_param(net.name, steps, shapes), phase=TEST)
        except CaffeCompatError as exc:
            error = error or exc
    raise CaffeCompatError(f"--batch {batch}: {error}")


def _verify(name: str, steps: Sequence[Step], weights: dict, model: onnx.ModelProto,
            transform: InputTransform | None) -> dict[str, float]:
    """Max |onnxruntime - CaffeNet| per output at the prototxt's batch and, for a dynamic
    export, at twice it, against the unfolded net (Caffe's own layers) with the same weights."""
    fed = fed_inputs(steps)
    batched = {i.name for i in model.graph.input
               if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param}
    image = image_input(fed) if transform is not None else None
    worst: dict[str, float] = {}
    for factor in (1, 2) if batched else (1,):
        shapes = {blob: ((factor * shape[0], *shape[1:]) if blob in batched else shape)
                  for blob, (_, shape) in fed.items()}
        reference = CaffeNet(deploy_net_param(name, steps, shapes), phase=TEST)
        reference.copy_from({layer: [b.numpy() for b in blobs] for layer, blobs in weights.items()})
        for output, value in max_abs_differences(reference, model, transform, image).items():
            worst[output] = max(worst.get(output, 0.0), value)
    return worst
