"""``caffe test``: score a trained net over N batches and log what Caffe logs, plus a report.

Caffe's ``tools/caffe.cpp`` test() builds the net in TEST phase, copies the weights, runs N
forward passes and logs, per batch, every value of every net output (outputs ordered by blob
name) as ``Batch i, <output> = v``; then ``Loss: <mean net loss>`` and, per output value, the
mean over the batches (``<output> = m``, followed by ``(* w = w·m loss)`` for a loss output).
Sums are float32, as there. We keep those lines byte-for-byte in meaning (glog format, C++
number printing) so existing log parsers keep working, and optionally collect the ``prob`` and
``label`` blobs of every batch for the face-score report (:mod:`caffe_compat.report`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.registry import TEST
from caffe_compat.solver.caffe_log import CaffeLog, num

#: Blobs the face-score report reads from every batch.
REPORT_BLOBS = ("prob", "label")


@dataclass
class TestRun:
    """Everything ``caffe test`` computed: per-batch outputs, their means and kept blobs."""

    outputs: list[str]  # net outputs in Caffe's order (by blob name)
    loss_weights: dict[str, float]
    batches: list[dict[str, np.ndarray]] = field(default_factory=list)  # float32, flattened
    batch_losses: list[float] = field(default_factory=list)
    kept: dict[str, list[np.ndarray]] = field(default_factory=dict)

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


def _next_inputs(net, device: torch.device) -> dict[str, torch.Tensor]:
    """Pull one batch from every data source layer, on ``device`` (the layers read on the CPU)."""
    feeds: dict[str, torch.Tensor] = {}
    for step in net.steps:
        if step.layer.is_source and step.type != "Input":
            for blob, value in zip(step.tops, step.layer.next_batch()):
                feeds[blob] = value.to(device, non_blocking=True)
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


def run_test(model: str | os.PathLike[str], weights: str | os.PathLike[str], iterations: int = 50,
             gpu: str | None = None, log: CaffeLog | None = None, keep: Sequence[str] = (),
             stages: Sequence[str] = (), level: int = 0) -> TestRun:
    """Caffe's ``test`` action; ``keep`` names blobs to collect from every batch (e.g. REPORT_BLOBS)."""
    from caffe_compat.net.builder import load_net

    if iterations < 1:
        raise CaffeCompatError(f"--iterations must be at least 1, got {iterations}")
    for path, flag in ((model, "--model"), (weights, "--weights")):
        if not Path(path).is_file():
            raise CaffeCompatError(f"{flag} {path}: no such file")
    log = log or CaffeLog()
    device = select_device(gpu)
    log.info("caffe.cpp:275", "Use CPU." if device.type == "cpu" else f"Use GPU with device ID {device.index}")
    net = load_net(model, phase=TEST, weights=weights, stages=stages, level=level)
    net.to(device).train(False)
    getters = _kept_blobs(net, keep, model)
    result = TestRun(outputs=list(net.output_names), loss_weights=dict(net.loss_weights),
                     kept={b: [] for b in keep})
    log.info("caffe.cpp:281", f"Running for {iterations} iterations.")
    with torch.no_grad():
        for i in range(iterations):
            run = net.run(_next_inputs(net, device))
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
    log.info("caffe.cpp:309", f"Loss: {num(result.loss)}")
    for name, mean in result.means().items():
        weight = result.loss_weights.get(name, 0.0)
        for m in mean:
            extra = f" (* {num(weight)} = {num(float(np.float32(weight) * m))} loss)" if weight else ""
            log.info("caffe.cpp:321", f"{name} = {num(float(m))}{extra}")
    return result


def write_test_report(result: TestRun, out_dir: str | os.PathLike[str], model: str | os.PathLike[str],
                      weights: str | os.PathLike[str]) -> Path:
    """The face-score report of a run that kept :data:`REPORT_BLOBS`; returns the HTML page."""
    from caffe_compat.report import write_report

    prob = result.kept_array("prob")
    labels = result.kept_array("label").reshape(-1)
    if prob.ndim < 2 or prob.shape[0] != labels.shape[0]:
        raise CaffeCompatError(f"{model}: blob 'prob' {prob.shape} does not hold one row per label ({labels.shape[0]})")
    prob = prob.reshape(prob.shape[0], -1)
    if np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() >= prob.shape[1]:
        raise CaffeCompatError(f"{model}: labels must be class indices 0..{prob.shape[1] - 1} for the score report")
    extra = {
        "model": str(model),
        "weights": str(weights),
        "iterations": len(result.batches),
        "batch_loss": result.batch_losses,
        "loss": result.loss,
        "output_means": {name: mean.tolist() if mean.size > 1 else float(mean[0])
                         for name, mean in result.means().items() if name not in REPORT_BLOBS},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_report(out, prob, labels.astype(np.int64), title=f"caffe-compat test: {Path(weights).name}",
                        extra=extra)
