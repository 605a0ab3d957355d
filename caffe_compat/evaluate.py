"""``caffe test``: score a trained net over N batches and log what Caffe logs, plus the report.

Caffe's ``tools/caffe.cpp`` test() builds the net in TEST phase, copies the weights, runs N
forward passes and logs, per batch, every value of every net output (outputs ordered by blob
name) as ``Batch i, <output> = v``; then ``Loss: <mean net loss>`` and, per output value, the
mean over the batches (``<output> = m``, followed by ``(* w = w·m loss)`` for a loss output).
Sums are float32, as there. We keep those lines byte-for-byte in meaning (glog format, C++
number printing) so existing log parsers keep working.

The report (:mod:`caffe_compat.report`) is not bound to N: the data layer reads records in
order and wraps around, so N batches may score a record twice or miss some. With a report
the run goes on (without log lines) until every record of the TEST source has been scored,
and keeps each record's first score only, with its key. The same table comes from an ONNX
model run over a source (:func:`score_onnx`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.registry import TEST
from caffe_compat.proto import caffe_pb2
from caffe_compat.progress import progress_bar
from caffe_compat.report.images import RecordImages
from caffe_compat.solver.caffe_log import CaffeLog, num

#: Blobs the pycaffe-style check reads from every batch (``keep``).
REPORT_BLOBS = ("prob", "label")


@dataclass
class SampleOutputs:
    """Every record of a test source once: its position, key, label and the report's output.

    ``kind``: "prob" (rows of class probabilities) or "value" (one number per sample).
    """

    index: np.ndarray
    keys: list[str]
    labels: np.ndarray
    outputs: np.ndarray
    kind: str
    blob: str
    images: RecordImages
    notes: list[str] = field(default_factory=list)
    label_scale: float | None = None  # regression: ground truth = label × this, as the net's loss says


@dataclass
class TestRun:
    """Everything ``caffe test`` computed: per-batch outputs, their means, kept blobs, samples."""

    outputs: list[str]  # net outputs in Caffe's order (by blob name)
    loss_weights: dict[str, float]
    batches: list[dict[str, np.ndarray]] = field(default_factory=list)  # float32, flattened
    batch_losses: list[float] = field(default_factory=list)
    kept: dict[str, list[np.ndarray]] = field(default_factory=dict)
    samples: SampleOutputs | None = None

    @property
    def loss(self) -> float:
        """Caffe's ``Loss:`` line: the float32 sum of batch losses divided by the iterations."""
        total = np.float32(0)
        for value in self.batch_losses:
            total = np.float32(total + np.float32(value))
        return float(np.float32(total / np.float32(len(self.batch_losses))))

    def means(self) -> dict[str, np.ndarray]:
        """Per output, the float32 mean over batches of each of its values."""
        out = {}
        for name in self.outputs:
            total = np.zeros_like(self.batches[0][name])
            for batch in self.batches:
                total = (total + batch[name]).astype(np.float32)
            out[name] = (total / np.float32(len(self.batches))).astype(np.float32)
        return out

    def kept_array(self, name: str) -> np.ndarray:
        """A kept blob, every batch concatenated along the first axis."""
        return np.concatenate(self.kept[name], axis=0)


def select_device(gpu: str | None) -> torch.device:
    """Caffe's ``-gpu`` flag for a single-net tool: the first listed id, ``all`` = 0."""
    if gpu is None or gpu == "":
        return torch.device("cpu")
    first = gpu.split(",")[0].strip()
    index = 0 if first == "all" else first
    try:
        index = int(index)
    except ValueError:
        raise CaffeCompatError(f"--gpu {gpu!r}: expected a device id such as 0, a list 0,1 or 'all'") from None
    if not torch.cuda.is_available():
        raise CaffeCompatError(f"--gpu {gpu}: no CUDA device is available on this machine (run without --gpu)")
    if index >= torch.cuda.device_count():
        raise CaffeCompatError(f"--gpu {gpu}: device {index} does not exist ({torch.cuda.device_count()} GPU(s))")
    return torch.device("cuda", index)


def _next_inputs(net, device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    """Pull one batch from every data source layer, on ``device`` (the layers read on the CPU)."""
    feeds: dict[str, torch.Tensor] = {}
    for step in net.steps:
        if step.layer.is_source and step.type != "Input":
            for blob, value in zip(step.tops, step.layer.next_batch()):
                value = value.to(device, non_blocking=True)
                if channels_last and value.dim() == 4:
                    value = value.contiguous(memory_format=torch.channels_last)
                feeds[blob] = value
    return feeds


def _kept_blobs(net, keep: Sequence[str], model) -> dict[str, Callable[[Any], torch.Tensor]]:
    """How to read each kept blob from a forward pass.

    A typical train_val net has no ``prob`` blob, only a SoftmaxWithLoss: then ``prob`` is the
    softmax of that layer's scores (along its axis) and ``label`` its second bottom, which is
    what the loss itself sees.
    """
    getters: dict[str, Callable[[Any], torch.Tensor]] = {}
    softmax_loss = next((s for s in net.steps if s.type == "SoftmaxWithLoss"), None)
    for name in keep:
        if name in net.blob_shapes:
            getters[name] = lambda run, name=name: run.blobs[name]
        elif softmax_loss is not None and name in ("prob", "label"):
            scores, labels = softmax_loss.bottoms[:2]
            axis = softmax_loss.layer.param.softmax_param.axis
            getters[name] = ((lambda run: torch.softmax(run.blobs[scores].float(), dim=axis))
                             if name == "prob" else (lambda run: run.blobs[labels]))
        else:
            raise CaffeCompatError(
                f"{model}: the TEST net has no blob '{name}' and no SoftmaxWithLoss to derive it from "
                f"(needed for the report; blobs: {', '.join(net.blob_shapes)})")
    return getters


@dataclass(frozen=True)
class ReportOptions:
    """How to decode and annotate the scored samples (the ``--report`` flags)."""

    labels: str | None = None
    decode: str = "expectation"
    label_scale: float | None = None
    face_model: str | None = None
    face_flags: bool | None = None  # None: for score and regression nets only
    progress: bool | None = None


@dataclass(frozen=True)
class _ReportOutput:
    blob: str  # the blob read from the net
    kind: str  # "prob" | "value"
    softmax_axis: int | None  # apply softmax along this axis first (scores -> probabilities)
    note: str
    label_scale: float | None = None  # regression: the loss compares the output with label × this


@dataclass(frozen=True)
class RegressionLoss:
    """A one-output prediction the net compares with its (scaled) label in a loss."""

    prediction: str  # the predicted blob
    loss: str  # the loss layer's name
    label_scale: float  # the loss's target is label × this
    how: str  # which layers scale the label, for the report's note


#: Layers that pass a blob's values through unchanged (shape only).
_RESHAPES = ("Reshape", "Flatten", "Split")


def regression_loss(net) -> RegressionLoss | None:
    """The regression the net's losses define, read from the layers themselves: a one-output
    blob fed with the data layer's label into a ``EuclideanLoss``, or into an L1 loss written
    with BVLC layers (``Eltwise`` SUM with coeff 1, −1 whose top reaches a layer with a
    ``loss_weight`` through ``AbsVal`` / ``Power``). The label side may pass ``Power`` layers
    (power 1, shift 0: the SCUT-FBP5500 recipes' ``label × 0.01``) and reshapes; their scales
    multiply into ``label_scale``, so ``--label-scale`` is never needed for such a net."""
    scale: dict[str, float] = {}  # blobs that hold label × factor
    via: dict[str, list[str]] = {}
    residual: dict[str, tuple[str, float, list[str]]] = {}  # blob -> (prediction, scale, via)
    per_sample = {b: math.prod(shape[1:]) for b, shape in net.blob_shapes.items()}
    for step in net.steps:
        param = step.layer.param
        found: tuple[str, float, list[str]] | None = None
        if step.layer.is_source and step.type in ("Data", "ImageData") and len(step.tops) == 2:
            scale[step.tops[1]], via[step.tops[1]] = 1.0, []
            continue
        bottoms = step.bottoms
        if step.type in ("EuclideanLoss", "Eltwise") and len(bottoms) == 2:
            coeffs = tuple(param.eltwise_param.coeff) if step.type == "Eltwise" else (1.0, -1.0)
            difference = step.type == "EuclideanLoss" or (
                param.eltwise_param.operation == caffe_pb2.EltwiseParameter.SUM and sorted(coeffs) == [-1.0, 1.0])
            labelled = [b for b in bottoms if b in scale]
            if difference and len(labelled) == 1:
                other = bottoms[1 - bottoms.index(labelled[0])]
                if per_sample.get(other) == 1:
                    found = (other, scale[labelled[0]], via[labelled[0]])
            if found is not None and step.type == "EuclideanLoss":
                return RegressionLoss(found[0], step.name, found[1], ", ".join(found[2]))
        elif step.type == "Power" and bottoms[0] in scale and param.power_param.power == 1 \
                and param.power_param.shift == 0:
            factor = float(str(np.float32(param.power_param.scale)))  # 0.01, not float32's 0.0099999998
            scale[step.tops[0]] = scale[bottoms[0]] * factor
            via[step.tops[0]] = [*via[bottoms[0]], f"Power layer '{step.name}'"]
            continue
        elif step.type in _RESHAPES and bottoms and bottoms[0] in scale:
            for top in step.tops:
                scale[top], via[top] = scale[bottoms[0]], via[bottoms[0]]
            continue
        elif step.type in ("AbsVal", "Power", "Reduction") and bottoms and bottoms[0] in residual:
            found = residual[bottoms[0]]
            if any(step.loss_weights):
                return RegressionLoss(found[0], step.name, found[1], ", ".join(found[2]))
        for top in step.tops:  # anything else overwrites its tops (in place included)
            scale.pop(top, None)
            residual.pop(top, None)
        if found is not None:
            residual[step.tops[0]] = found
    return None


def report_output(net, blob: str | None, model) -> _ReportOutput:
    """Which blob the report reads and how: ``blob`` by name, else the Softmax output, else the
    softmax of the SoftmaxWithLoss scores, else the prediction of a EuclideanLoss (regression)."""
    softmax_of = {top: s for s in net.steps if s.type == "Softmax" for top in s.tops}
    if blob is not None:
        if blob not in net.blob_shapes:
            raise CaffeCompatError(f"{model}: the TEST net has no output blob '{blob}' "
                                   f"(blobs: {', '.join(net.blob_shapes)})")
        per_sample = math.prod(net.blob_shapes[blob][1:])
        if per_sample == 1:
            found = regression_loss(net)
            if found is not None and found.prediction == blob:
                return _regression_output(found)
            return _ReportOutput(blob, "value", None, f"regression on '{blob}' (one value per sample)")
        if blob in softmax_of:
            return _ReportOutput(blob, "prob", None, f"class probabilities from '{blob}'")
        return _ReportOutput(blob, "prob", 1, f"class probabilities: softmax of '{blob}'")
    if softmax_of:
        name = next(iter(softmax_of))
        return _ReportOutput(name, "prob", None, f"class probabilities from '{name}'")
    for step in net.steps:
        if step.type == "SoftmaxWithLoss":
            axis = step.layer.param.softmax_param.axis
            return _ReportOutput(step.bottoms[0], "prob", axis,
                                 f"class probabilities: softmax of '{step.bottoms[0]}' (the input of loss '{step.name}')")
    found = regression_loss(net)
    if found is not None:
        return _regression_output(found)
    for step in net.steps:
        if step.type == "EuclideanLoss" and math.prod(net.blob_shapes[step.bottoms[0]][1:]) == 1:
            return _ReportOutput(step.bottoms[0], "value", None,
                                 f"regression on '{step.bottoms[0]}' (the prediction of loss '{step.name}')")
    raise CaffeCompatError(f"{model}: no Softmax, SoftmaxWithLoss, one-output EuclideanLoss or L1 loss of a "
                           f"one-output blob against the label to report on: name the output with --output-blob "
                           f"(blobs: {', '.join(net.blob_shapes)})")


def _regression_output(found: RegressionLoss) -> _ReportOutput:
    scaled = f"; ground truth = label × {found.label_scale:g} ({found.how})" if found.how else ""
    return _ReportOutput(found.prediction, "value", None,
                         f"regression on '{found.prediction}' (the prediction of loss '{found.loss}'{scaled})",
                         found.label_scale)


def _report_source(net, model, labelled: bool):
    """The TEST net's data layer the report (``labelled``) or ``--all`` reads."""
    for step in net.steps:
        if step.layer.is_source and step.type in ("Data", "ImageData") and (len(step.tops) == 2 or not labelled):
            return step
    raise CaffeCompatError(f"{model}: the TEST net has no Data or ImageData layer with a label top to score "
                           "(for a deploy net, score a source with --onnx MODEL --source LMDB)")


class _Collector:
    """Keeps the first score of every record of the source, with its key and label."""

    def __init__(self, step, output: _ReportOutput, mirror: bool) -> None:
        self.step, self.output, self.mirror = step, output, mirror
        self.images = RecordImages(step.layer.source)
        self.batches = step.layer.batches()
        self.count = len(self.images)
        self.seen = np.zeros(self.count, bool)
        self.rows: list[tuple[int, float, np.ndarray]] = []

    @property
    def done(self) -> bool:
        return bool(self.seen.all())

    def read(self, run) -> torch.Tensor:
        value = run.blobs[self.output.blob].float()
        if self.output.softmax_axis is not None:
            value = torch.softmax(value, dim=self.output.softmax_axis)
        return value.reshape(value.shape[0], -1)

    def add(self, batch: int, outputs: np.ndarray, labels: np.ndarray) -> None:
        for j, record in enumerate(self.batches.record_indices(batch)):
            if not self.seen[record]:
                self.seen[record] = True
                self.rows.append((record, float(labels[j]), outputs[j]))

    def samples(self) -> SampleOutputs:
        self.rows.sort(key=lambda r: r[0])
        index = np.array([r[0] for r in self.rows], np.int64)
        notes = [self.output.note + (", averaged with the mirrored image" if self.mirror else "")]
        return SampleOutputs(index, [self.images.key(int(i)) for i in index], np.array([r[1] for r in self.rows]),
                             float32_values(np.stack([r[2] for r in self.rows])), self.output.kind, self.output.blob, self.images, notes,
                             self.output.label_scale)


def float32_values(outputs: np.ndarray) -> np.ndarray:
    """A float32 net's outputs as the float64 numbers they print as (2.85, not
    2.8499999046325684), so predictions.csv and the report show what the net computed."""
    return np.asarray(outputs, np.float32).astype(str).astype(np.float64)


def run_test(model: str | os.PathLike[str], weights: str | os.PathLike[str], iterations: int | None = 50,
             gpu: str | None = None, log: CaffeLog | None = None, keep: Sequence[str] = (),
             stages: Sequence[str] = (), level: int = 0, *, report: ReportOptions | None = None,
             output_blob: str | None = None,
             mirror: bool = False, bf16: bool = False, channels_last: bool = False,
             progress: bool | None = None) -> TestRun:
    """Caffe's ``test`` action.

    ``iterations`` None: enough batches to cover the TEST source once (``--all``). ``keep``
    names blobs to collect from every logged batch. ``report``: also score every record once
    (``result.samples``), reading ``output_blob`` (see :func:`report_output`; the options are
    checked against it before the run), with ``mirror`` averaging each output with that of the
    horizontally mirrored input.
    """
    from caffe_compat.net.builder import load_net

    if iterations is not None and iterations < 1:
        raise CaffeCompatError(f"--iterations must be at least 1, got {iterations}")
    for path, flag in ((model, "--model"), (weights, "--weights")):
        if not Path(path).is_file():
            raise CaffeCompatError(f"{flag} {path}: no such file")
    log = log or CaffeLog()
    device = select_device(gpu)
    log.info("caffe.cpp:275", "Use CPU." if device.type == "cpu" else f"Use GPU with device ID {device.index}")
    net = load_net(model, phase=TEST, weights=weights, stages=stages, level=level)
    net.to(device).train(False)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    getters = _kept_blobs(net, keep, model)
    collector = None
    if report is not None or iterations is None:
        step = _report_source(net, model, labelled=report is not None)
        if report is not None:
            output = report_output(net, output_blob, model)
            check_options(output.kind, output.blob, math.prod(net.blob_shapes[output.blob][1:]), report)
            collector = _Collector(step, output, mirror)
        per_pass = -(-len(step.layer.source) // step.layer.batch_size)
        iterations = iterations or per_pass
    needed = set(net.output_names) | ({collector.output.blob} if collector is not None else set())
    record = not needed <= {t for s in net.plan for t in s.tops}  # a blob inside a fused group
    if keep:  # kept blobs may be derived from others (the softmax of a SoftmaxWithLoss input): hold all
        needed = None
    result = TestRun(outputs=list(net.output_names), loss_weights=dict(net.loss_weights), kept={b: [] for b in keep})
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
    log.info("caffe.cpp:281", f"Running for {iterations} iterations.")
    total = max(iterations, -(-collector.count // collector.batches.batch_size) if collector else 0)
    bar = progress_bar(total=total, desc="test", unit="batch", shown=progress)
    log.progress = bar if hasattr(bar, "write") else None
    i = 0
    try:
        with torch.no_grad(), autocast:
            while i < iterations or (collector is not None and not collector.done):
                if i > 4 * total + 4:  # unreachable unless the source changes under us
                    raise CaffeCompatError(f"{model}: the TEST source was not covered after {i} batches")
                feeds = _next_inputs(net, device, channels_last)
                run = net.run(feeds, record=record, keep=needed)
                if i < iterations:
                    _log_batch(i, run, result, getters, log)
                if collector is not None and not collector.done:
                    value = collector.read(run)
                    if mirror:
                        flipped = {k: v.flip(-1) if v.dim() == 4 else v for k, v in feeds.items()}
                        value = (value + collector.read(net.run(flipped, record=record, keep=needed))) / 2
                    labels = feeds[collector.step.tops[1]].float().cpu().numpy().reshape(-1)
                    collector.add(i, value.cpu().numpy().astype(np.float64), labels)
                i += 1
                bar.update(1)
    finally:
        bar.close()
        log.progress = None
    log.info("caffe.cpp:309", f"Loss: {num(result.loss)}")
    for name, mean in result.means().items():
        weight = result.loss_weights.get(name, 0.0)
        for m in mean:
            extra = f" (* {num(weight)} = {num(float(np.float32(weight) * m))} loss)" if weight else ""
            log.info("caffe.cpp:321", f"{name} = {num(float(m))}{extra}")
    if collector is not None:
        result.samples = collector.samples()
    return result


def _log_batch(i: int, run, result: TestRun, getters: dict, log: CaffeLog) -> None:
    """One batch's ``Batch i, <output> = v`` lines, its loss and its kept blobs."""
    batch_loss = np.float32(0)
    for _, weight, value in run.losses:
        batch_loss = np.float32(batch_loss + np.float32(weight) * np.float32(value.float().sum().item()))
    values = {name: run.blobs[name].detach().float().cpu().numpy().reshape(-1).astype(np.float32)
              for name in result.outputs}
    for name in result.outputs:
        for v in values[name]:
            log.info("caffe.cpp:304", f"Batch {i}, {name} = {num(float(v))}")
    for name, get in getters.items():
        result.kept[name].append(get(run).detach().float().cpu().numpy().copy())
    result.batches.append(values)
    result.batch_losses.append(float(batch_loss))


# --------------------------------------------------------------------------- ONNX


def score_onnx(onnx_path: str | os.PathLike[str], source: str | os.PathLike[str], *, root_folder: str = "",
               mean_file: str | os.PathLike[str] | None = None, mean_value: Sequence[float] = (), scale: float = 1.0,
               resize: tuple[int, int] | None = None, crop_size: int | None = None,
               providers: Sequence[str] | None = None, output: str | None = None, batch_size: int = 16,
               mirror: bool = False, progress: bool | None = None) -> SampleOutputs:
    """An exported net over every record of a source (LMDB, or list file + ``root_folder``) with
    Caffe's TEST transform (centre crop, mean, scale), for the report."""
    from caffe_compat.onnx.predict import Preprocess, open_session, run_records

    images = RecordImages.open(source, root_folder, resize)
    if len(images) == 0:
        raise CaffeCompatError(f"--source {source}: the source is empty")
    session = open_session(onnx_path, providers)
    preprocess = Preprocess(mean_file, tuple(float(v) for v in mean_value), scale, None, crop_size)
    outputs, labels, blob = run_records(session, images.dataset, preprocess, output, batch_size, mirror, progress,
                                        onnx_path)
    outputs = float32_values(outputs)
    index = np.arange(len(images), dtype=np.int64)
    keys = [images.key(i) for i in range(len(images))]
    notes = []
    if outputs.shape[1] == 1:
        kind = "value"
        notes.append(f"regression on '{blob}' (one value per sample)")
    else:
        kind = "prob"
        if np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1, atol=1e-3):
            notes.append(f"class probabilities from '{blob}'")
        else:
            shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
            outputs = shifted / shifted.sum(axis=1, keepdims=True)
            notes.append(f"class probabilities: softmax of '{blob}'")
    if mirror:
        notes[-1] += ", averaged with the mirrored image"
    return SampleOutputs(index, keys, labels, outputs, kind, blob, images, notes)


# --------------------------------------------------------------------------- the report


def check_options(kind: str, blob: str, classes: int, options: ReportOptions) -> None:
    """The report flags against the output the report reads (before a long run, not after)."""
    from caffe_compat.report.predictions import parse_labels

    if kind == "value":
        if options.labels is not None:
            raise CaffeCompatError(f"--labels {options.labels}: '{blob}' has one value per sample "
                                   "(regression): there are no classes to label")
    elif options.label_scale is not None:
        raise CaffeCompatError(f"--label-scale is for one-output regression nets; '{blob}' has {classes} classes")
    else:
        parse_labels(options.labels, classes)
    if options.face_model is not None:
        from caffe_compat.report.faces import open_detector

        open_detector(options.face_model)


def predictions_of(samples: SampleOutputs, options: ReportOptions):
    """The report's table from the scored samples (score, regression or classification)."""
    from caffe_compat.report.predictions import default_labels, from_probabilities, from_regression, parse_labels

    check_options(samples.kind, samples.blob, samples.outputs.shape[1], options)
    if samples.kind == "value":
        return from_regression(samples.outputs, samples.labels, samples.keys, samples.index,
                               label_scale_of(samples, options))
    num_classes = samples.outputs.shape[1]
    label_map = parse_labels(options.labels, num_classes) if options.labels is not None else default_labels(num_classes)
    return from_probabilities(samples.outputs, samples.labels, samples.keys, samples.index, label_map, options.decode)


def label_scale_of(samples: SampleOutputs, options: ReportOptions) -> float:
    """``--label-scale`` when given, else the scale the net's loss applies to the label, else 1."""
    if options.label_scale is not None:
        return options.label_scale
    return 1.0 if samples.label_scale is None else samples.label_scale


def add_flags(pred, images: RecordImages | None, options: ReportOptions) -> tuple[Any, list[str]]:
    """The predictions with quality flags computed on the source's pictures, and report notes."""
    from caffe_compat.report.faces import open_detector, quality_flags

    wanted = options.face_flags if options.face_flags is not None else pred.mode != "classification"
    if not wanted or images is None:
        return pred, []
    detector, note = open_detector(options.face_model)
    if detector is None:
        logging.getLogger(__name__).warning(note)
    bar = progress_bar(total=len(pred), desc="quality flags", unit="image", shown=options.progress)
    try:
        flags = quality_flags((images.picture(int(i)) for i in pred.index), detector, lambda: bar.update(1))
    finally:
        bar.close()
    return pred.with_flags(flags), [note]


def write_samples_report(samples: SampleOutputs, out_dir: str | os.PathLike[str], options: ReportOptions,
                         info: Sequence[tuple[str, str]], extra: dict | None = None,
                         title: str = "caffe-compat test report", log: CaffeLog | None = None) -> Path:
    """Decode, flag and render the report of scored samples; returns the HTML page. ``log``
    gets the headline figures as glog lines (after Caffe's own ``caffe test`` lines)."""
    from caffe_compat.report import write_report
    from caffe_compat.report.metrics import all_metrics
    from caffe_compat.report.page import headline

    pred = predictions_of(samples, options)
    pred, notes = add_flags(pred, samples.images, options)
    info = [*info, ("samples", f"{len(pred)} (every record of the source once)"), ("output", samples.notes[0]),
            ("mode", pred.mode + (f", decode {pred.decode}" if pred.mode == "score" else ""))]
    if pred.mode == "regression":
        given = "--label-scale" if options.label_scale is not None else (
            "from the net's loss" if samples.label_scale is not None else "default")
        info.append(("label scale", f"{label_scale_of(samples, options):g} ({given})"))
    page = write_report(out_dir, pred, images=samples.images, info=info, notes=notes, extra=extra, title=title)
    if log is not None:
        for line in headline(all_metrics(pred)):
            log.info("evaluate.py:1", line)
    return page


def write_test_report(result: TestRun, out_dir: str | os.PathLike[str], model: str | os.PathLike[str],
                      weights: str | os.PathLike[str], options: ReportOptions = ReportOptions(),
                      mirror: bool = False, log: CaffeLog | None = None) -> Path:
    """The report of a :func:`run_test` made with ``report=...``; returns the HTML page."""
    if result.samples is None:
        raise ValueError("run_test(report=ReportOptions(...)) collects the samples a report needs")
    extra = {
        "model": str(model),
        "weights": str(weights),
        "mirror": mirror,
        "caffe_test": {"iterations": len(result.batches), "batch_loss": result.batch_losses, "loss": result.loss,
                       "output_means": {name: mean.tolist() if mean.size > 1 else float(mean[0])
                                        for name, mean in result.means().items()}},
    }
    info = [("model", str(model)), ("weights", str(weights)), ("mirror (test-time augmentation)", "yes" if mirror else "no")]
    return write_samples_report(result.samples, out_dir, options, info, extra,
                                title=f"caffe-compat test: {Path(weights).name}", log=log)
