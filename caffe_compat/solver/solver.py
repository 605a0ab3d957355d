"""Caffe's ``Solver`` on PyTorch: ``caffe train`` semantics, iteration for iteration.

What is copied from Caffe's solver.cpp / sgd_solver.cpp (and why it matters for parity):

* nets: exactly one of train_net_param / train_net / net_param / net; test nets from
  test_net_param, test_net, then one instance of the generic net per remaining ``test_iter``;
  NetState from ``train_state`` / ``test_state`` plus the CLI's stages and level; test nets
  share the train net's blobs by layer name (``ShareTrainedLayersWith``), BatchNorm stats too.
* ``Step``: test every ``test_interval`` (at 0 only with ``test_initialization``), ``iter_size``
  forward/backward passes with the loss averaged, smoothed loss for display (``average_loss``,
  float32, ``s += (loss - old) / n``), the ``Iteration N, lr`` line, the update (updates.py),
  ``++iter``, snapshot every ``snapshot`` iterations, signal actions.
* ``Solve``: ``snapshot_after_train``, then one extra TRAIN forward (it moves BatchNorm's
  running stats) logged as ``Iteration <max_iter>, loss =``, then the final test.
* ``Restore``: weights from ``learned_net``, history, iter, current_step; the data restarts at
  record 0 like Caffe's, unless our sidecar is there (then the run continues exactly).

Beyond Caffe: bf16 autocast with fp32 master weights, channels_last, cudnn.benchmark,
optional torch.compile, measured data-wait time, DDP, a NaN-loss stop naming the iteration.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import tqdm

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.caffemodel import load_weights
from caffe_compat.io.prototxt import read_net, read_solver, to_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST, TRAIN
from caffe_compat.proto import caffe_pb2
from caffe_compat.solver import distributed
from caffe_compat.solver.averaging import WeightAverage
from caffe_compat.solver.caffe_log import CaffeLog, num
from caffe_compat.solver.feeds import NetFeeder
from caffe_compat.solver.lr_policy import LearningRatePolicy
from caffe_compat.solver.signals import SignalHandler
from caffe_compat.solver.snapshot import SavedState, read_snapshot, sidecar_path, write_snapshot
from caffe_compat.solver.updates import CaffeUpdater


@dataclass
class TrainOptions:
    """Everything ``caffe-compat train`` can set besides the solver file."""

    weights: Sequence[str] = ()
    resume: str | None = None
    gpus: Sequence[int] = ()
    max_iter: int | None = None
    sigint_effect: str = "stop"
    sighup_effect: str = "snapshot"
    stages: Sequence[str] = ()
    level: int = 0
    bf16: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = True
    compile: bool = False
    workers: int | None = 0  # None: default_workers() for the device
    ema: float = 0.0  # weight average decay (0: none); tests and snapshots use the average
    warmup: int = 0  # iterations over which the learning rate ramps up linearly to lr_policy's
    device_transform: bool | None = None  # crop/mirror/mean on the device from uint8 batches; None: on GPUs
    progress: bool | None = None  # None: only when stderr is a terminal
    log_file: str | None = None
    solver_type: str | None = None  # pycaffe's SGDSolver, AdamSolver, ...: the class decides, not `type:`
    pycaffe_mode: bool = False  # the device is pycaffe's set_mode_*: solver_mode is the caffe tool's, not ours
    keep_param_diffs: bool = False  # zero param diffs in place (pycaffe holds views of them) instead of freeing


@dataclass
class TrainResult:
    """What a run did, for callers and benchmarks."""

    iterations: int
    losses: list[tuple[int, float]] = field(default_factory=list)  # per iteration, unsmoothed
    tests: list[tuple[int, int, dict[str, list[float]]]] = field(default_factory=list)
    last_snapshot: str | None = None
    stopped_early: bool = False
    train_seconds: float = 0.0
    data_wait_seconds: float = 0.0
    images: int = 0

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_seconds / self.train_seconds if self.train_seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.train_seconds if self.train_seconds else 0.0


# glog "file:line" tag for lines Caffe never writes (load summaries, data wait).
OURS = "caffe_compat.py:0"


_ACTION_CODES = {"none": 0, "snapshot": 1, "stop": 2}
_ACTION_NAMES = {v: k for k, v in _ACTION_CODES.items()}
ACTION_SYNC_EVERY = 10


class NonFiniteLossError(CaffeCompatError):
    """The loss became NaN or infinite; the message names the iteration and the last snapshot."""


# ---------------------------------------------------------------------------- solver file


def read_solver_param(path: str | os.PathLike[str] | caffe_pb2.SolverParameter,
                      options: TrainOptions) -> caffe_pb2.SolverParameter:
    """The SolverParameter ``caffe train`` would run, after Caffe's upgrades and the CLI flags
    (``path`` may also be a parsed SolverParameter, as pycaffe's ``get_solver_from_string`` gives)."""
    if isinstance(path, caffe_pb2.SolverParameter):
        sp = caffe_pb2.SolverParameter()
        sp.CopyFrom(path)
        path = Path(solver_source(path))
    else:
        path = Path(path)
        if not path.is_file():
            raise CaffeCompatError(f"{path}: solver file does not exist")
        sp = read_solver(path)  # Caffe's solver upgrades, snapshot_prefix defaults included
    sp.train_state.level = options.level
    sp.train_state.stage.extend(options.stages)
    if options.resume:
        del sp.weights[:]
    elif options.weights:
        del sp.weights[:]
        sp.weights.append(",".join(options.weights))
    if options.max_iter is not None:
        sp.max_iter = options.max_iter
    if options.solver_type:
        sp.type = options.solver_type
    src = os.fspath(path)
    if sp.average_loss < 1:
        raise CaffeCompatError(f"{src}: average_loss must be >= 1 (got {sp.average_loss})")
    if sp.display < 0 or sp.snapshot < 0 or sp.test_interval < 0:
        raise CaffeCompatError(f"{src}: display, snapshot and test_interval must be >= 0")
    if sp.max_iter < 0:
        raise CaffeCompatError(f"{src}: max_iter must be >= 0 (got {sp.max_iter}): nothing would be trained")
    if sp.iter_size < 1 or any(n < 0 for n in sp.test_iter):
        raise CaffeCompatError(f"{src}: iter_size must be >= 1 and test_iter >= 0 "
                               f"(got {sp.iter_size}, {list(sp.test_iter)})")
    return sp


def solver_source(solver: str | os.PathLike[str] | caffe_pb2.SolverParameter) -> str:
    """How messages name a solver: its file, or ``<string>`` for one given as text."""
    return "<string>" if isinstance(solver, caffe_pb2.SolverParameter) else os.fspath(solver)


def _read_net_file(name: str, solver_src: str, what: str):
    if not Path(name).is_file():
        raise CaffeCompatError(
            f"{solver_src}: {what} '{name}' does not exist (paths in a solver are relative to the "
            f"current folder {os.getcwd()}, as in Caffe)"
        )
    return read_net(name)


def train_net_param(sp, solver_src: str):
    """Caffe's InitTrainNet choice: exactly one of the four train-net fields."""
    given = [f for f in ("train_net_param", "train_net", "net_param", "net") if sp.HasField(f)]
    if not given:
        raise CaffeCompatError(
            f"{solver_src}: no train net; set one of net, net_param, train_net, train_net_param"
        )
    if len(given) > 1:
        raise CaffeCompatError(f"{solver_src}: more than one train net given ({', '.join(given)}); keep one")
    kind = given[0]
    if kind.endswith("_param"):
        net = caffe_pb2.NetParameter()
        net.CopyFrom(getattr(sp, kind))
        return net
    return _read_net_file(getattr(sp, kind), solver_src, kind)


def test_net_params(sp, solver_src: str) -> list[tuple[str, Any]]:
    """Caffe's InitTestNets: (description, NetParameter) per test net, in Caffe's order."""
    generic = sp.HasField("net") + sp.HasField("net_param")
    if generic > 1:
        raise CaffeCompatError(f"{solver_src}: give either net or net_param, not both")
    specific = len(sp.test_net_param) + len(sp.test_net)
    if (generic and len(sp.test_iter) < specific) or (not generic and len(sp.test_iter) != specific):
        raise CaffeCompatError(f"{solver_src}: test_iter must be specified for each test network")
    instances = specific + (len(sp.test_iter) - specific)
    if sp.test_state and len(sp.test_state) != instances:
        raise CaffeCompatError(f"{solver_src}: test_state must be unspecified or given once per test net")
    if instances and sp.test_interval <= 0:
        raise CaffeCompatError(f"{solver_src}: test_interval must be > 0 when test nets are given")
    nets: list[tuple[str, Any]] = [("test_net_param", n) for n in sp.test_net_param]
    nets += [(f"test_net file {n}", _read_net_file(n, solver_src, "test_net")) for n in sp.test_net]
    if len(sp.test_iter) > specific:
        if sp.HasField("net_param"):
            base, desc = sp.net_param, "net_param"
        else:
            base, desc = _read_net_file(sp.net, solver_src, "net"), f"net file: {sp.net}"
        nets += [(desc, base) for _ in range(len(sp.test_iter) - specific)]
    return nets


def _merged_state(net_param, phase: int, extra) -> tuple[list[str], int]:
    """Stages and level of Caffe's NetState merge (net's own state, then the solver's)."""
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(net_param.state)
    if extra is not None:
        state.MergeFrom(extra)
    return list(state.stage), state.level


# ---------------------------------------------------------------------------- the solver


@dataclass
class SmoothedLoss:
    """Caffe's UpdateSmoothedLoss: the logged ``loss =`` averages the last ``window`` losses.

    In float32 and updated as ``s += (loss - old) / window`` once the window is full, so it
    drifts from the true mean by rounding exactly as Caffe's logged loss does.
    """

    window: int
    start: int = 0  # the iteration the window's ring buffer is indexed from (Step's start_iter)
    losses: list[float] = field(default_factory=list)
    value: float = 0.0

    def update(self, loss: float, iteration: int) -> float:
        f = np.float32
        if len(self.losses) < self.window:
            self.losses.append(loss)
            size = len(self.losses)
            self.value = float((f(self.value) * f(size - 1) + f(loss)) / f(size))
        else:
            idx = (iteration - self.start) % self.window
            self.value = float(f(self.value) + (f(loss) - f(self.losses[idx])) / f(self.window))
            self.losses[idx] = loss
        return self.value


class _TrainForward(torch.nn.Module):
    """Forward + loss as one module, so DDP and torch.compile see the whole training forward."""

    def __init__(self, net: CaffeNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        outputs = self.net(inputs)
        return outputs, self.net.loss(outputs)


class Solver:
    """One ``caffe train`` run. Build it, optionally ``load_weights`` / ``restore``, then ``solve``."""

    def __init__(self, solver_path: str | os.PathLike[str] | caffe_pb2.SolverParameter,
                 options: TrainOptions | None = None,
                 log: CaffeLog | None = None, rank: distributed.Rank | None = None) -> None:
        self.options = options or TrainOptions()
        self.rank = rank or distributed.Rank()
        self.device = self.rank.device
        self.source = solver_source(solver_path)
        self.log = log or CaffeLog(enabled=self.rank.is_root)
        self.param = read_solver_param(solver_path, self.options)
        sp = self.param
        self.log.info("solver.cpp:45", f"Initializing solver from parameters: \n{to_text(sp)}")
        if sp.solver_mode == caffe_pb2.SolverParameter.GPU and self.device.type == "cpu" and \
                not self.options.pycaffe_mode:
            self.log.warning(OURS, "solver_mode is GPU but " + ("no CUDA device is available" if not torch.cuda.is_available()
                             else "no -gpu was given") + "; training on the CPU")
        if sp.random_seed >= 0:
            seed = sp.random_seed + self.rank.rank
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.options.cudnn_benchmark
        if self.rank.is_root and (sp.snapshot or sp.snapshot_after_train):
            self._check_snapshot_folder()
        self.net = self._build_train_net()
        self.test_nets = self._build_test_nets()
        self.log.info("solver.cpp:57", "Solver scaffolding done.")

        self.iter = 0
        self.lr_policy = LearningRatePolicy(
            sp, self.source, on_multistep=lambda it, s: self.log.info(
                "sgd_solver.cpp:57", f"MultiStep Status: Iteration {it}, step = {s}")
        )
        specs = self.net.param_specs()
        self.updater = CaffeUpdater(
            sp, [e.param for e in specs], [e.lr_mult for e in specs], [e.decay_mult for e in specs],
            self.source, on_clip=self._log_clip,
        )
        # Seed of the data layers' crops/mirrors/shuffles (per batch, so resumable and worker-independent).
        data_seed = sp.random_seed if sp.random_seed >= 0 else int(torch.randint(2**31 - 1, ()).item())
        workers = self.options.workers
        if workers is None:
            workers = default_workers(self.device, self.rank.world_size)
        self.feeder = NetFeeder(self.net, self.device, workers, self.rank.rank,
                                self.rank.world_size, self.options.channels_last, data_seed,
                                self.options.device_transform)
        # Caffe shards only the TRAIN data; every test net reads all records.
        self.test_feeders = [NetFeeder(n, self.device, 0, 0, 1, self.options.channels_last, data_seed,
                                       self.options.device_transform) for n in self.test_nets]
        self.model = self._train_module()
        self.average = WeightAverage(self.net, self.options.ema) if self.options.ema else None
        if self.options.warmup < 0:
            raise CaffeCompatError(f"--warmup must be >= 0 (got {self.options.warmup})")
        self.signals = SignalHandler(self.options.sigint_effect, self.options.sighup_effect)
        self.requested_early_exit = False
        self._local_action = 0  # strongest signal action seen since the ranks last agreed
        self.last_snapshot: str | None = None
        self.smoothed = SmoothedLoss(sp.average_loss)
        self._keep_smoothing = False
        self._pending: list[tuple[int, torch.Tensor]] = []
        self.result = TrainResult(iterations=0)
        #: Caffe's Solver::Callback objects: ``on_start()`` before each iteration's forward,
        #: ``on_gradients_ready()`` after its backward, before the update (pycaffe's add_callback).
        self.callbacks: list[Any] = []
        for weights in sp.weights:
            self.load_weights(weights.split(","))

    # ------------------------------------------------------------------ building

    def _check_snapshot_folder(self) -> None:
        """Caffe's CheckSnapshotWritePermissions: fail before training, not at the first snapshot."""
        prefix = self.param.snapshot_prefix
        folder = Path(prefix).parent
        if not folder.is_dir():
            raise CaffeCompatError(f"{self.source}: snapshot_prefix '{prefix}': folder '{folder}' does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CaffeCompatError(f"{self.source}: snapshot_prefix '{prefix}': cannot write into '{folder}'")

    def _build(self, net_param, phase: int, extra_state) -> CaffeNet:
        stages, level = _merged_state(net_param, phase, extra_state)
        net = CaffeNet(net_param, phase=phase, stages=stages, level=level)
        if self.options.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net.to(self.device)

    def _build_train_net(self) -> CaffeNet:
        net_param = train_net_param(self.param, self.source)
        self.log.info("solver.cpp:102", "Creating training net")
        return self._build(net_param, TRAIN, self.param.train_state)

    def _build_test_nets(self) -> list[CaffeNet]:
        nets = []
        for i, (desc, net_param) in enumerate(test_net_params(self.param, self.source)):
            self.log.info("solver.cpp:190", f"Creating test net (#{i}) specified by {desc}")
            extra = self.param.test_state[i] if self.param.test_state else None
            net = self._build(net_param, TEST, extra)
            self._share_trained_layers(net)
            nets.append(net)
        return nets

    def _share_trained_layers(self, test_net: CaffeNet) -> None:
        """Caffe's ShareTrainedLayersWith: same-named layers use the train net's blob objects."""
        for step in test_net.steps:
            source = self.net.layer_by_name(step.name)
            if source is None or len(source.blobs) == 0:
                continue
            if len(source.blobs) != len(step.layer.blobs):
                raise step.layer.fail(
                    f"has {len(step.layer.blobs)} blobs in the test net but {len(source.blobs)} in the train net"
                )
            for i, blob in enumerate(source.blobs):
                if tuple(blob.shape) != tuple(step.layer.blobs[i].shape):
                    raise step.layer.fail(
                        f"blob {i} is {tuple(step.layer.blobs[i].shape)} in the test net but "
                        f"{tuple(blob.shape)} in the train net"
                    )
                step.layer.blobs[i] = blob

    def share_weights(self, net: CaffeNet) -> None:
        """Caffe's Solver::share_weights: ``net``'s same-named layers use this solver's trained blobs."""
        self._share_trained_layers(net)

    def _train_module(self) -> torch.nn.Module:
        module: torch.nn.Module = distributed.wrap(_TrainForward(self.net), self.rank)
        if self.options.compile:
            # One graph for the whole forward + loss (an error, not a silent slow path, if a layer
            # cannot be traced); test nets run eager, so sharing blobs with them costs no recompile.
            module = torch.compile(module, fullgraph=True)
        return module

    def _autocast(self):
        if not self.options.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # ------------------------------------------------------------------ weights / resume

    def load_weights(self, paths: Sequence[str]) -> list[Any]:
        """``-weights a,b``: copy by layer name into the train and test nets; log a summary."""
        reports = []
        for path in paths:
            if not Path(path).is_file():
                raise CaffeCompatError(f"{path}: weights file does not exist")
            self.log.info("solver.cpp:72", f"Finetuning from {path}")
            report = self.net.copy_from(path)
            # Test nets share the train net's blobs; only their own (TEST-only) layers need a copy.
            test_only = {s.name for n in self.test_nets for s in n.steps
                         if len(s.layer.blobs) and self.net.layer_by_name(s.name) is None}
            if test_only:
                weights = {k: v for k, v in load_weights(path).items() if k in test_only}
                for test_net in self.test_nets:
                    test_net.copy_from({k: v for k, v in weights.items() if test_net.layer_by_name(k) is not None})
            self._log_weight_report(report)
            reports.append(report)
        if self.average is not None:
            self.average.reset()
        return reports

    def _log_weight_report(self, report) -> None:
        """What was copied, what starts from fillers, what is ignored, what is frozen."""
        self.log.info(OURS, f"Weights: {report.summary()}")
        frozen = sorted({e.layer_name for e in self.net.param_specs() if e.lr_mult == 0})
        if frozen:
            self.log.info(OURS, f"Frozen (lr_mult 0 on some blob): {', '.join(frozen)}")

    def restore(self, path: str | os.PathLike[str]) -> SavedState:
        """Caffe's Restore; with our sidecar, also the data cursors, RNG and loss smoothing."""
        saved = read_snapshot(path)
        self.log.info("caffe.cpp:235", f"Resuming from {path}")
        if saved.learned_net is not None:
            self.net.copy_from(os.fspath(saved.learned_net))
        self.iter = saved.iteration
        self.lr_policy.current_step = saved.current_step
        self.log.info("sgd_solver.cpp:336", "SGDSolver: restoring history")
        self.updater.load_history(saved.history, os.fspath(path))
        if self.average is not None:
            self.average.reset()
        if saved.sidecar is not None:
            try:
                self._restore_sidecar(saved.sidecar)
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
                raise CaffeCompatError(f"{sidecar_path(path)}: damaged resume sidecar ({type(exc).__name__}: {exc}); "
                                       "delete it to resume as Caffe would") from None
        return saved

    def _sidecar(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        side = {
            "format": 1,
            "iter": self.iter,
            "train_data": self.feeder.state(),
            "test_data": [f.state() for f in self.test_feeders],
            "rng": rng,
            "smoothing": {"losses": list(self.smoothed.losses), "smoothed": self.smoothed.value,
                          "start": self.smoothed.start},
        }
        if self.average is not None:
            side["ema"] = self.average.state()
        return side

    def _restore_sidecar(self, side: dict[str, Any]) -> None:
        self.feeder.restore(side["train_data"])
        for feeder, state in zip(self.test_feeders, side["test_data"]):
            feeder.restore(state)
        rng = side["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(_numpy_state_back(rng["numpy"]))
        random.setstate(_python_state_back(rng["python"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        sm = side["smoothing"]
        self.smoothed.losses, self.smoothed.value, self.smoothed.start = list(sm["losses"]), sm["smoothed"], sm["start"]
        self._keep_smoothing = True
        self.log.info(OURS, "Resume sidecar found: data cursors, RNG and loss smoothing restored")
        if self.average is not None and "ema" in side:
            self.average.restore(side["ema"])
            self.log.info(OURS, "Resume sidecar: the raw weights and their average (--ema) restored")

    # ------------------------------------------------------------------ training

    def solve(self) -> TrainResult:
        """Caffe's Solve: Step to max_iter, final snapshot, extra TRAIN forward, final test."""
        sp = self.param
        self.log.info("solver.cpp:289", f"Solving {self.net.name}")
        self.log.info("solver.cpp:290", f"Learning Rate Policy: {sp.lr_policy}")
        self.requested_early_exit = False
        progress = self.options.progress if self.options.progress is not None else sys.stderr.isatty()
        bar = tqdm.tqdm(total=sp.max_iter, initial=self.iter, unit="it", file=sys.stderr,
                        disable=not (progress and self.rank.is_root), dynamic_ncols=True)
        self.log.progress = None if bar.disable else bar
        try:
            with self.signals.installed():
                self.step(sp.max_iter - self.iter, bar)
                if sp.snapshot_after_train and (not sp.snapshot or self.iter % sp.snapshot != 0):
                    self.snapshot()
                if self.requested_early_exit:
                    self.log.info("solver.cpp:314", "Optimization stopped early.")
                    self.result.stopped_early = True
                    return self.result
                if sp.display and self.iter % sp.display == 0 and self.rank.is_root:
                    self._final_forward()
                if sp.test_interval and self.iter % sp.test_interval == 0 and self.rank.is_root:
                    self.test_all()
                self.log.info("solver.cpp:332", "Optimization Done.")
        finally:
            bar.close()
            self.log.progress = None
            self.feeder.close()
            for f in self.test_feeders:
                f.close()
        return self.result

    def step(self, iters: int, bar: tqdm.tqdm | None = None) -> None:
        """Caffe's Step(iters)."""
        sp = self.param
        stop_iter = self.iter + iters
        if not self._keep_smoothing:
            self.smoothed = SmoothedLoss(sp.average_loss, start=self.iter)
        self._keep_smoothing = False
        timer, iters_last = time.perf_counter(), self.iter
        flush_every = 1 if self.device.type == "cpu" else 50
        while self.iter < stop_iter:
            self.net.zero_grad(set_to_none=not self.options.keep_param_diffs)
            if sp.test_interval and self.iter % sp.test_interval == 0 and (self.iter > 0 or sp.test_initialization):
                if self.rank.is_root:
                    self._flush()
                    self.test_all()
                if self.requested_early_exit:
                    break
            loop_start = time.perf_counter()
            wait_before, images_before = self.feeder.wait_seconds, self.feeder.images
            display = bool(sp.display) and self.iter % sp.display == 0
            for callback in self.callbacks:
                callback.on_start()
            loss, outputs = self._forward_backward()
            self._pending.append((self.iter, loss))
            if display or len(self._pending) >= flush_every:
                self._flush()
            if display:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iters_last) / (lapse if lapse else 1.0)
                self.log.train_iteration(self.iter, per_s, lapse, sp.display, self.smoothed.value)
                timer, iters_last = time.perf_counter(), self.iter
                self.log.net_outputs("Train", self._output_values(self.net, outputs))
            rate = self.lr_policy.rate(self.iter)
            if self.iter < self.options.warmup:
                rate = float(np.float32(rate * (self.iter + 1) / self.options.warmup))
            if display:
                self.log.learning_rate(self.iter, rate)
            for callback in self.callbacks:
                callback.on_gradients_ready()
            self.updater.apply(rate, self.iter)
            if self.average is not None:
                self.average.update()
            self.iter += 1
            self.result.iterations += 1
            self.result.train_seconds += time.perf_counter() - loop_start
            self.result.data_wait_seconds += self.feeder.wait_seconds - wait_before
            self.result.images += (self.feeder.images - images_before) * self.rank.world_size
            if bar is not None:
                bar.update(1)
                if display:
                    bar.set_postfix(loss=num(self.smoothed.value), lr=num(rate))
            action = self._requested_action()
            if (sp.snapshot and self.iter % sp.snapshot == 0 and self.rank.is_root) or action == "snapshot":
                self.snapshot()
            if action == "stop":
                self.requested_early_exit = True
                break
        self._flush()

    def _forward_backward(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """iter_size forward/backward passes; gradients accumulate, the loss is their mean."""
        sp = self.param
        total = torch.zeros((), device=self.device)
        outputs: dict[str, torch.Tensor] = {}
        for i in range(sp.iter_size):
            inputs = self.feeder.next()
            sync = contextlib.nullcontext()
            if i < sp.iter_size - 1 and hasattr(self.model, "no_sync"):
                sync = self.model.no_sync()
            with sync:
                with self._autocast():
                    outputs, loss = self.model(inputs)
                loss.backward()
            total = total + loss.detach().float()
        return total / sp.iter_size, outputs

    def _flush(self) -> None:
        """Move pending losses to the host: NaN check and Caffe's UpdateSmoothedLoss, in order."""
        if not self._pending:
            return
        values = torch.stack([l for _, l in self._pending]).cpu().numpy().astype(np.float32)
        iters = [i for i, _ in self._pending]
        self._pending = []
        for it, value in zip(iters, values):
            if not np.isfinite(value):
                advice = "Lower base_lr or set clip_gradients"
                if self.device.type != "cpu":
                    advice = f"Check the labels (on a GPU a label outside a loss layer's classes gives NaN). {advice}"
                if self.last_snapshot:
                    where = f"Last good snapshot: {self.last_snapshot}. {advice}, then resume from it."
                else:
                    where = f"No snapshot was written before it. {advice}."
                raise NonFiniteLossError(f"loss is {value} at iteration {it}; training stopped. {where}")
            self.result.losses.append((it, float(value)))
            self.smoothed.update(float(value), it)

    def _final_forward(self) -> None:
        """The extra TRAIN forward after the last update (behaviour 3: moves BatchNorm's stats)."""
        with torch.no_grad(), self._autocast():
            outputs = self.net(self.feeder.next())
            loss = float(self.net.loss(outputs))
        self.smoothed.update(loss, self.iter)
        self.log.final_loss(self.iter, self.smoothed.value)

    def _requested_action(self) -> str:
        """The signal action for this iteration; with several ranks, agreed by all of them.

        Ranks agree every ``ACTION_SYNC_EVERY`` iterations (a collective per iteration would
        stall every GPU step), keeping the strongest action any rank saw in between.
        """
        action = self.signals.requested_action()
        if not self.rank.distributed:
            return action
        self._local_action = max(self._local_action, _ACTION_CODES[action])
        if self.iter % ACTION_SYNC_EVERY:
            return "none"
        t = torch.tensor([self._local_action], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        self._local_action = 0
        return _ACTION_NAMES[int(t.item())]

    def _log_clip(self, norm: float, clip: float, scale: float) -> None:
        self.log.info("sgd_solver.cpp:97", f"Gradient clipping: scaling down gradients (L2 norm {num(norm)} > "
                      f"{num(clip)}) by scale factor {num(scale)}")

    @staticmethod
    def _output_values(net: CaffeNet, outputs: dict[str, torch.Tensor]) -> list[tuple[str, list[float], float]]:
        """Every net output blob's values with its loss weight (Caffe's display order)."""
        return [
            (name, outputs[name].detach().float().flatten().cpu().tolist(), net.loss_weights.get(name, 0.0))
            for name in net.output_names if name in outputs
        ]

    # ------------------------------------------------------------------ testing

    def test_all(self) -> None:
        with self._averaged():
            for i in range(len(self.test_nets)):
                if self.requested_early_exit:
                    break
                self.test(i)

    def _averaged(self):
        """The weight average in place of the weights (tests, snapshot caffemodels), if --ema."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def test(self, net_id: int) -> dict[str, list[float]] | None:
        """Caffe's Test: mean of every output over test_iter batches, logged per value."""
        sp = self.param
        net, feeder = self.test_nets[net_id], self.test_feeders[net_id]
        self.log.testing(self.iter, net_id)
        sums: list[np.ndarray] = []
        names: list[str] = []
        loss_total = 0.0
        n = sp.test_iter[net_id]
        for k in range(n):
            action = self.signals.requested_action()
            stop = False
            while action != "none":
                if action == "snapshot":
                    self.snapshot()
                else:
                    stop = True
                action = self.signals.requested_action()
            if stop:
                self.log.info("solver.cpp:392", "Test interrupted.")
                if self.rank.distributed:  # only the root tests: all ranks stop at the next agreement
                    self._local_action = _ACTION_CODES["stop"]
                else:
                    self.requested_early_exit = True
                return None
            with torch.no_grad(), self._autocast():
                outputs = net(feeder.next())
                if sp.test_compute_loss:
                    loss_total += float(net.loss(outputs))
            values = self._output_values(net, outputs)
            if k == 0:
                names = [name for name, _, _ in values]
                sums = [np.asarray(v, dtype=np.float32) for _, v, _ in values]
            else:
                sums = [s + np.asarray(v, dtype=np.float32) for s, (_, v, _) in zip(sums, values)]
        if sp.test_compute_loss:
            self.log.info("solver.cpp:405", f"Test loss: {num(loss_total / n)}")
        means = {name: (s / np.float32(n)).tolist() for name, s in zip(names, sums)}
        self.log.net_outputs("Test", [(name, means[name], net.loss_weights.get(name, 0.0)) for name in names])
        self.result.tests.append((self.iter, net_id, means))
        return means

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> tuple[str, str] | None:
        """``<prefix>_iter_N.caffemodel`` + ``.solverstate`` (+ our resume sidecar), atomically."""
        if not self.rank.is_root:
            return None
        self._flush()  # never snapshot weights a NaN loss already spoiled
        sp = self.param
        prefix = sp.snapshot_prefix
        hdf5 = sp.snapshot_format == caffe_pb2.SolverParameter.HDF5
        kind, ext = ("HDF5 file", ".caffemodel.h5") if hdf5 else ("binary proto file", ".caffemodel")
        self.log.info("solver.cpp:464", f"Snapshotting to {kind} {prefix}_iter_{self.iter}{ext}")
        if sp.snapshot_diff:
            self.log.warning("solver.cpp:464", "snapshot_diff is ignored: diffs are not kept between iterations")
        history = [h.detach().float().cpu().numpy() for h in self.updater.flat_history]
        sidecar = self._sidecar()  # the raw weights, when the caffemodel gets the average
        with self._averaged():
            net_param = self.net.to_net_parameter()
        paths = write_snapshot(prefix, self.iter, net_param, history,
                               self.lr_policy.current_step, sidecar, self.last_snapshot, hdf5)
        self.log.info("sgd_solver.cpp:284", f"Snapshotting solver state to {kind} {paths[1]}")
        self.last_snapshot = paths[1]
        self.result.last_snapshot = paths[1]
        return paths


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_back(s: dict[str, Any]):
    return (s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"])


def _python_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _python_state_back(s: dict[str, Any]):
    return (s["version"], tuple(s["internal"]), s["gauss"])


def default_workers(device: torch.device, world_size: int = 1) -> int:
    """Prefetch workers per process: 2 on the CPU (they share the cores with the net); on a GPU
    the cores left after one per process, up to 12 each (a raw-LMDB worker makes ~2,000 uint8
    images/s, and a ResNet-50 step on an H100/H200 eats several thousand)."""
    if device.type == "cpu":
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 4)
    return max(2, min(12, cores // max(1, world_size) - 1))


def resolve_gpus(solver_path: str | os.PathLike[str], flag: str | None) -> list[int]:
    """``-gpu`` if given; else the solver's ``solver_mode: GPU`` / ``device_id`` when CUDA exists (Caffe's rule)."""
    if flag:
        return distributed.parse_gpus(flag)
    if not Path(solver_path).is_file() or not torch.cuda.is_available():
        return []
    sp = read_solver(solver_path)
    return [sp.device_id] if sp.solver_mode == caffe_pb2.SolverParameter.GPU else []


def train(solver_path: str | os.PathLike[str], options: TrainOptions | None = None,
          log: CaffeLog | None = None) -> TrainResult:
    """``caffe train``: one process, or one per GPU when several are given without torchrun."""
    options = options or TrainOptions()
    if len(options.gpus) > 1 and "WORLD_SIZE" not in os.environ:
        distributed.launch(_train_rank, len(options.gpus), os.fspath(solver_path), options)
        return TrainResult(iterations=0)
    return _train_rank(os.fspath(solver_path), options, log)


def _train_rank(solver_path: str, options: TrainOptions, log: CaffeLog | None = None) -> TrainResult:
    caller_group = distributed.in_group()  # a group the caller made is the caller's to destroy
    rank = distributed.init_rank(list(options.gpus))
    log = log or CaffeLog(log_file=options.log_file, enabled=rank.is_root)
    try:
        solver = Solver(solver_path, options, log=log, rank=rank)
        if options.resume:
            solver.restore(options.resume)
        log.info("caffe.cpp:239", "Starting Optimization")
        result = solver.solve()
        if rank.is_root and result.train_seconds:
            log.info(OURS, f"Data wait: {100 * result.data_wait_fraction:.1f}% of "
                     f"{result.train_seconds:.2f} s training; {result.images_per_second:.1f} images/s")
        log.info("caffe.cpp:250", "Optimization Done.")
        distributed.barrier()
        return result
    finally:
        log.close()
        if not caller_group:
            distributed.shutdown()  # also under torchrun, where no launcher does it
