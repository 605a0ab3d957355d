"""``caffe time``: per-layer forward and backward milliseconds of a built net.

Caffe times ``Layer::Forward`` and ``Layer::Backward`` one layer at a time. Autograd runs the
backward of a whole graph at once, so to time it per layer each layer here records its own
small graph (its bottoms are detached leaves) and the backward pass walks the layers in reverse,
calling autograd on one layer's tops with the diffs its consumers produced, exactly the data
flow of Caffe's Net::Backward. Inputs of Input layers are random normal data (Caffe's
benchmark also assumes the net takes no input blobs); other source layers read their batches.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from tqdm import tqdm

Version = tuple[int, int]  # (step index, top index): one value of a blob (in-place layers make new ones)


@dataclass
class LayerTime:
    name: str
    type: str
    forward_ms: float  # average per iteration
    backward_ms: float


@dataclass
class TimingReport:
    layers: list[LayerTime]  # per-iteration averages
    iterations: int
    iteration_ms: list[float]
    forward_ms: float  # average forward pass
    backward_ms: float  # average backward pass
    total_ms: float  # all iterations
    device: str

    @property
    def forward_backward_ms(self) -> float:
        return self.total_ms / self.iterations


class _Clock:
    """Wall-clock milliseconds, synchronising the GPU so a layer's kernels are charged to it."""

    def __init__(self, device: torch.device) -> None:
        self.sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @contextlib.contextmanager
    def measure(self, add: Callable[[float], None]) -> Iterator[None]:
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        add((time.perf_counter() - start) * 1000.0)


def cuda_device(spec: str) -> str:
    """The torch device for Caffe's ``-gpu`` value ("0", "1,2" = the first, "all" = cuda:0)."""
    from caffe_compat.errors import CaffeCompatError

    if not torch.cuda.is_available():
        raise CaffeCompatError("--gpu: no CUDA device is available")
    first = spec.split(",")[0].strip()
    index = 0 if first == "all" else int(first) if first.isdigit() else -1
    if not 0 <= index < torch.cuda.device_count():
        raise CaffeCompatError(f"--gpu {spec}: no such CUDA device ({torch.cuda.device_count()} available)")
    return f"cuda:{index}"


def _source_tops(step, device: torch.device, feeds: Mapping[str, torch.Tensor],
                 force_backward: bool) -> tuple[torch.Tensor, ...]:
    """A source layer's tops: the fed tensors, else the layer's own next batch."""
    if all(top in feeds for top in step.tops):
        tops = tuple(feeds[top] for top in step.tops)
    else:
        tops = tuple(t.to(device) for t in step.layer.next_batch())
    # Caffe's inputs need a diff only under force_backward.
    return tuple(t.detach().requires_grad_(force_backward and t.is_floating_point()) for t in tops)


class _LayerwisePass:
    """One forward + backward of a net, each layer on its own autograd graph, timed per layer."""

    def __init__(self, net, device: torch.device, feeds: Mapping[str, torch.Tensor], autocast) -> None:
        self.net, self.device, self.feeds, self.autocast = net, device, feeds, autocast
        self.clock = _Clock(device)
        self.forward_ms = [0.0] * len(net.steps)
        self.backward_ms = [0.0] * len(net.steps)

    def _add(self, times: list[float], i: int) -> Callable[[float], None]:
        def add(ms: float) -> None:
            times[i] += ms

        return add

    def forward(self) -> list[tuple[list[Version], list[torch.Tensor], tuple[torch.Tensor, ...]]]:
        """Run every layer on detached copies of its bottoms; returns (bottom versions, bottom
        leaves, tops) per layer."""
        latest: dict[str, Version] = {}
        values: dict[Version, torch.Tensor] = {}
        graphs = []
        for i, step in enumerate(self.net.steps):
            versions = [latest[b] for b in step.bottoms]
            leaves = [values[v].detach().requires_grad_(values[v].requires_grad) for v in versions]
            with self.clock.measure(self._add(self.forward_ms, i)), self.autocast:
                if step.layer.is_source:
                    tops = _source_tops(step, self.device, self.feeds, self.net.force_backward)
                else:
                    tops = step.layer(*leaves)
            for j, (blob, top) in enumerate(zip(step.tops, tops)):
                latest[blob] = (i, j)
                values[(i, j)] = top
            graphs.append((versions, leaves, tops))
        return graphs

    def backward(self, graphs) -> None:
        """Caffe's Net::Backward: layers in reverse order, each fed the summed diffs its tops got
        from their consumers, plus loss_weight on loss tops."""
        diffs: dict[Version, torch.Tensor] = {}
        for i in range(len(graphs) - 1, -1, -1):
            versions, leaves, tops = graphs[i]
            weights = self.net.steps[i].loss_weights
            outputs, grads = [], []
            for j, top in enumerate(tops):
                if not top.requires_grad:
                    continue
                diff = diffs.pop((i, j), None)
                if weights[j]:
                    own = torch.full_like(top, weights[j])
                    diff = own if diff is None else diff + own
                outputs.append(top)
                grads.append(diff if diff is not None else torch.zeros_like(top))
            with self.clock.measure(self._add(self.backward_ms, i)):
                if outputs:
                    torch.autograd.backward(outputs, grads)
            for version, leaf in zip(versions, leaves):
                if leaf.grad is not None:
                    diffs[version] = diffs[version] + leaf.grad if version in diffs else leaf.grad


def time_net(net, iterations: int = 50, device: str | torch.device = "cpu", bf16: bool = False,
             inputs: Mapping[str, torch.Tensor] | None = None, progress: bool = True) -> TimingReport:
    """Run one warm-up forward/backward, then ``iterations`` timed ones, layer by layer.

    ``inputs`` optionally feeds source tops (as in ``CaffeNet.run``); Input tops not given get
    random normal data, made once. After the call every parameter's ``.grad`` holds the last
    iteration's diff, as Caffe's backward leaves it.
    """
    device = torch.device(device)
    net.to(device)
    feeds = {name: torch.as_tensor(value).to(device) for name, value in (inputs or {}).items()}
    for step in net.steps:
        if step.type == "Input":
            for top, shape in zip(step.tops, step.layer.top_shapes()):
                feeds.setdefault(top, torch.randn(shape, device=device))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    warmup = _LayerwisePass(net, device, feeds, autocast)
    warmup.backward(warmup.forward())  # Caffe's clean forward/backward: allocations, lazy init
    timed = _LayerwisePass(net, device, feeds, autocast)
    iteration_ms: list[float] = []
    forward_total = backward_total = 0.0
    total_start = time.perf_counter()
    for _ in tqdm(range(iterations), desc="time", unit="iter", disable=not progress, leave=False):
        for param in net.parameters():
            param.grad = None
        start = time.perf_counter()
        graphs = timed.forward()
        middle = time.perf_counter()
        timed.backward(graphs)
        end = time.perf_counter()
        iteration_ms.append((end - start) * 1000.0)
        forward_total += (middle - start) * 1000.0
        backward_total += (end - middle) * 1000.0
    total_ms = (time.perf_counter() - total_start) * 1000.0
    layers = [
        LayerTime(step.name, step.type, f / iterations, b / iterations)
        for step, f, b in zip(net.steps, timed.forward_ms, timed.backward_ms)
    ]
    return TimingReport(layers, iterations, iteration_ms, forward_total / iterations,
                        backward_total / iterations, total_ms, str(device))


def format_timing(report: TimingReport) -> str:
    """The lines ``caffe time`` logs, from "*** Benchmark begins ***" to "ends"."""
    lines = ["*** Benchmark begins ***", f"Testing for {report.iterations} iterations."]
    lines += [f"Iteration: {i + 1} forward-backward time: {ms:.4g} ms." for i, ms in enumerate(report.iteration_ms)]
    lines.append("Average time per layer: ")
    for layer in report.layers:
        lines.append(f"{layer.name:>10}\tforward: {layer.forward_ms:.5g} ms.")
        lines.append(f"{layer.name:>10}\tbackward: {layer.backward_ms:.5g} ms.")
    lines += [
        f"Average Forward pass: {report.forward_ms:.5g} ms.",
        f"Average Backward pass: {report.backward_ms:.5g} ms.",
        f"Average Forward-Backward: {report.forward_backward_ms:.5g} ms.",
        f"Total Time: {report.total_ms:.5g} ms.",
        "*** Benchmark ends ***",
    ]
    return "\n".join(lines)
