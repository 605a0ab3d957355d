"""Caffe deploy net + weights -> ONNX, written directly with ``onnx.helper``.

WHY not ``torch.onnx``: it needs onnxscript and traces our PyTorch modules, whose Caffe-exact
tricks (pooling overhang, in-place rebinding) would come out as opaque op soup. Here the net is
built once by :class:`~caffe_compat.net.builder.CaffeNet` in the TEST phase (so every prototxt
rule, upgrade, implicit split and shape check is the one training uses), then each layer is
handed to its registered converter (``caffe_compat.onnx.converters``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.io.atomic import atomic_write
from caffe_compat.net.builder import CaffeNet, Step
from caffe_compat.net.registry import TEST
from caffe_compat.onnx.converters import DROPPED_TYPES, converter_for
from caffe_compat.onnx.emit import Emit
from caffe_compat.onnx.graph import OnnxGraph
from caffe_compat.onnx.optimize import fold_scale_into_batchnorm
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

    def summary(self) -> str:
        ins = ", ".join(f"{name} {tuple(shape)}" for name, shape in self.inputs)
        lines = [f"ONNX opset {self.model.opset_import[0].version}, {len(self.model.graph.node)} nodes; "
                 f"inputs: {ins}; outputs: {', '.join(self.outputs)}"]
        lines += [f"note: {note}" for note in self.notes]
        if self.differences is not None:
            diffs = ", ".join(f"{name} {value:.3g}" for name, value in self.differences.items())
            lines.append(f"max |onnxruntime - CaffeNet| on a random input: {diffs}")
        if self.path is not None:
            lines.append(f"wrote {self.path}")
        return "\n".join(lines)


def with_input_batch(net_param, batch: int):
    """A copy whose Input layers feed ``batch`` items (the static-batch export)."""
    if batch <= 0:
        raise CaffeCompatError(f"--batch must be 'dynamic' or a positive number, got {batch}")
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(net_param)
    for layer in copy.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                if shape.dim:
                    shape.dim[0] = batch
    return copy


def _deploy_steps(net: CaffeNet) -> tuple[list[Step], list[str]]:
    """The steps a deploy graph keeps, and a note per left-out layer.

    Loss/accuracy heads go; so do Caffe's implicit splits that only fed them (the blob itself
    then becomes a graph output, as in the deploy prototxt).
    """
    dropped = {s.name for s in net.steps if s.type in DROPPED_TYPES or s.layer.is_loss}
    for step in reversed(net.steps):
        if step.type == "Split" and step.name not in dropped:
            readers = [s.name for s in net.steps for b in s.bottoms if b in step.tops]
            if readers and all(r in dropped for r in readers):
                dropped.add(step.name)
    notes = [f"left out layer '{s.name}' (type {s.type}): not part of a deploy graph"
             for s in net.steps if s.name in dropped and s.type != "Split"]
    return [s for s in net.steps if s.name not in dropped], notes


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


def net_to_onnx(net: CaffeNet, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, fp16: bool = False,
                extra_outputs: Sequence[str] = ()) -> tuple[onnx.ModelProto, list[str], list[tuple[str, tuple]]]:
    """The ONNX model of a built TEST-phase net, plus notes and the graph inputs.

    ``extra_outputs``: more blobs to expose (their final value, as Caffe's ``net.blobs`` holds
    it), e.g. to compare intermediate blobs with a Caffe dump.
    """
    if net.phase != TEST:
        raise CaffeCompatError(f"net '{net.name}': ONNX export needs the TEST phase (deploy semantics)")
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise CaffeCompatError(
            f"--opset {opset} is not supported: choose {MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
    steps, notes = _deploy_steps(net)
    outputs = _outputs(steps)
    produced = {b for s in steps if not s.layer.is_source for b in s.tops}
    for blob in extra_outputs:
        if blob not in produced:
            raise CaffeCompatError(f"net '{net.name}': no exported layer produces blob '{blob}'")
        if blob not in outputs:
            outputs.append(blob)
    if not outputs:
        raise CaffeCompatError(f"net '{net.name}': nothing to export (every layer is a loss or data layer)")
    read = {b for s in steps for b in s.bottoms}
    last_writer = {blob: s.name for s in steps for blob in s.tops}
    if fp16:  # outputs are float32 casts named after the blob
        for blob in outputs:
            last_writer.pop(blob, None)
    graph = OnnxGraph(np.float16 if fp16 else np.float32, BATCH_AXIS if dynamic_batch else None, last_writer,
                      {blob for s in steps for blob in s.tops})
    inputs: list[tuple[str, tuple]] = []
    for step in steps:
        if step.layer.is_source:
            for blob, shape in zip(step.tops, step.layer.top_shapes()):
                if step.type == "Input" or blob in read:
                    graph.add_input(blob, shape)
                    inputs.append((blob, (BATCH_AXIS, *shape[1:]) if dynamic_batch and shape else tuple(shape)))
                    if step.type != "Input":
                        notes.append(f"input '{blob}' takes what {step.type} layer '{step.name}' produced: "
                                     "transform_param (crop, mean, scale) is not part of the graph")
                else:
                    notes.append(f"left out top '{blob}' of data layer '{step.name}' (no exported layer reads it)")
            continue
        emit = Emit(graph, step)
        converter_for(step.name, step.type)(emit)
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
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        fold_scale_into_batchnorm(model.graph)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CaffeCompatError(f"net '{net.name}': the exported ONNX graph is invalid: {exc}") from exc
    return model, notes, inputs


def export_onnx(model: str | os.PathLike[str], weights: str | os.PathLike[str],
                onnx_path: str | os.PathLike[str] | None, opset: int = DEFAULT_OPSET,
                batch: int | str = "dynamic", fp16: bool = False, verify: bool = False) -> ExportResult:
    """Export a deploy prototxt (any Caffe version) with its .caffemodel to ``onnx_path``.

    ``batch``: "dynamic" (axis 0 of every input is the symbol N) or a fixed batch size.
    ``fp16``: float16 weights and compute, float32 inputs and outputs. ``onnx_path=None``
    returns the model without writing it. ``verify``: also run one random batch through
    onnxruntime and CaffeNet and report the largest difference per output.
    """
    from caffe_compat.io.prototxt import read_net

    net_param = read_net(model)
    dynamic = batch == "dynamic"
    if not dynamic:
        try:
            net_param = with_input_batch(net_param, int(batch))
        except ValueError:
            raise CaffeCompatError(f"--batch must be 'dynamic' or a positive number, got {batch!r}") from None
    net = CaffeNet(net_param, phase=TEST)
    report = net.copy_from(weights)
    onnx_model, notes, inputs = net_to_onnx(net, opset=opset, dynamic_batch=dynamic, fp16=fp16)
    if report.initialised:
        notes.append(f"layers not in {where(weights)} keep their filler values: {', '.join(report.initialised)}")
    outputs = [o.name for o in onnx_model.graph.output]
    differences = max_abs_differences(net, onnx_model) if verify else None
    path = None
    if onnx_path is not None:
        path = Path(onnx_path)
        with atomic_write(path) as handle:
            handle.write(onnx_model.SerializeToString())
    return ExportResult(path, onnx_model, inputs, outputs, notes, differences)
