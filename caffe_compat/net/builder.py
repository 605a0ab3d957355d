"""A Caffe net as a ``torch.nn.Module``: Caffe's Net::Init rules over our registered layers.

``CaffeNet(net_param, phase)`` filters layers by NetState, inserts Caffe's implicit Split
layers (so every blob, split copies included, has Caffe's name), builds one registered
:class:`~caffe_compat.net.registry.Layer` per LayerParameter with shape inference, and runs
them in prototxt order over named blobs. In-place layers simply rebind a name; autograd
provides Caffe's backward (split gradients are summed by autograd, like SplitLayer does).
"""

from __future__ import annotations

import contextlib
import os
from typing import Collection, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from caffe_compat.errors import CaffeCompatError, user_code_where
from caffe_compat.io.upgrade import net_needs_upgrade, upgrade_net_as_needed
from caffe_compat.net.registry import FUSIONS, TEST, Layer, Shape, apply_running_updates, layer_class
from caffe_compat.net.splits import insert_splits
from caffe_compat.net.state import filter_net, layer_included, net_state
from caffe_compat.proto import caffe_pb2

BlobSelection = str | Sequence[str]


class ParamEntry(NamedTuple):
    """One learnable blob for the solver, with Caffe's per-blob multipliers (ParamSpec)."""

    layer_name: str
    blob_index: int
    param: nn.Parameter
    lr_mult: float
    decay_mult: float


class Step(NamedTuple):
    """One layer of the built net, as the forward loop, ``time`` and dumps see it."""

    name: str
    type: str
    layer: Layer
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    loss_weights: tuple[float, ...]  # one per top, 0 where the top is no loss
    stop_gradient: tuple[bool, ...] = ()  # per bottom: propagate_down false (no force_backward)


class NetRun(NamedTuple):
    """What one forward pass produced.

    ``blobs``: every blob's final value (after in-place layers). ``first``: every blob's first
    value, the tensor whose gradient is Caffe's blob diff (an in-place blob's diff is taken
    w.r.t. the input of its first in-place layer); only filled with ``record=True``.
    ``losses``: ``(blob, loss_weight, value when produced)`` for every weighted top.
    """

    blobs: dict[str, torch.Tensor]
    first: dict[str, torch.Tensor]
    losses: list[tuple[str, float, torch.Tensor]]


def _upgraded(net_param):
    """Legacy (V0/V1, ``input:`` fields, old BatchNorm) nets get Caffe's upgrade on a copy."""
    if not net_needs_upgrade(net_param):
        return net_param
    upgraded = caffe_pb2.NetParameter()
    upgraded.CopyFrom(net_param)
    upgrade_net_as_needed(upgraded, net_param.name or "<net>")
    return upgraded


@contextlib.contextmanager
def _layer_errors(param, bottoms: str) -> Iterator[None]:
    """Re-raise a layer's set-up error as one CaffeCompatError line naming the layer and
    where its bottoms come from (so a shape mismatch names both layers and both shapes)."""
    try:
        yield
    except (CaffeCompatError, ValueError, IndexError, RuntimeError, ZeroDivisionError) as exc:
        if user_code_where(exc):
            raise  # the user's own exception passes as itself
        message = str(exc)
        prefix = f"layer '{param.name}'"
        if not message.startswith(prefix):
            message = f"{prefix} (type {param.type}): {message}"
        if bottoms:
            message += f" [bottoms: {bottoms}]"
        raise CaffeCompatError(message) from exc


def _check_bottoms(filtered, full) -> None:
    """A clear error for a bottom no earlier layer produces, with a hint at why."""
    produced: set[str] = set()
    for layer in filtered.layer:
        for blob in layer.bottom:
            if blob not in produced:
                hint = ""
                for other in full.layer:
                    if blob in other.top and other.name != layer.name:
                        state = filtered.state
                        if not layer_included(other, state):
                            phase = caffe_pb2.Phase.Name(state.phase)
                            hint = f"; its producer '{other.name}' is excluded in phase {phase}"
                        else:
                            hint = f"; it is produced only later, by layer '{other.name}'"
                        break
                raise CaffeCompatError(
                    f"layer '{layer.name}' (type {layer.type}): bottom blob '{blob}' is never "
                    f"produced by an earlier layer{hint}"
                )
        produced.update(layer.top)


class CaffeNet(nn.Module):
    """A NetParameter built for one phase (TRAIN=0 / TEST=1), optional stages and level.

    Call it as ``net(inputs, blobs="outputs"|"all"|[names])``: ``inputs`` maps source-layer
    tops (Input, Data, ...) to tensors; source layers whose tops are not given read their next
    batch themselves. The result maps blob names to tensors: the net outputs (blobs no layer
    consumes, Caffe's order) plus every loss-weighted blob, every blob, or the named ones.

    The phase is fixed at construction, as in Caffe (``train()``/``eval()`` change nothing):
    build one net per phase and share weights with ``copy_from`` or ``load_state_dict``.
    """

    def __init__(self, net_param, phase: int = TEST, stages: Sequence[str] = (), level: int = 0):
        super().__init__()
        net_param = _upgraded(net_param)
        self.name: str = net_param.name
        self.phase = phase
        self.state = net_state(net_param, phase, stages, level)
        filtered = filter_net(net_param, self.state)
        _check_bottoms(filtered, net_param)
        expanded = insert_splits(filtered)
        self.force_backward: bool = expanded.force_backward

        self.layers = nn.ModuleList()
        self.steps: list[Step] = []
        self.blob_shapes: dict[str, Shape] = {}
        self.loss_weights: dict[str, float] = {}
        self._producer: dict[str, str] = {}
        available: set[str] = set()
        for layer_param in expanded.layer:
            step = self._build_step(layer_param, available)
            self.layers.append(step.layer)
            self.steps.append(step)
        self.output_names: list[str] = sorted(available)
        self.input_names: list[str] = [t for s in self.steps if s.layer.is_source for t in s.tops]
        self._params = self._collect_params()
        self._schedule()

    # ------------------------------------------------------------------ building

    def _build_step(self, layer_param, available: set[str]) -> Step:
        param = caffe_pb2.LayerParameter()
        param.CopyFrom(layer_param)
        if not param.HasField("phase"):
            param.phase = self.phase
        name = param.name
        if param.propagate_down and len(param.propagate_down) != len(param.bottom):
            raise CaffeCompatError(
                f"layer '{name}': propagate_down must be given 0 or {len(param.bottom)} times "
                f"(once per bottom), got {len(param.propagate_down)}"
            )
        for blob in param.bottom:
            if blob not in available:
                raise CaffeCompatError(
                    f"layer '{name}' (type {param.type}): bottom blob '{blob}' is not available "
                    "(already consumed by another layer)"
                )
        bottom_shapes = [self.blob_shapes[b] for b in param.bottom]
        cls = layer_class(param)
        origins = ", ".join(
            f"'{b}' {self.blob_shapes[b]} from layer '{self._producer[b]}'" for b in param.bottom
        )
        with _layer_errors(param, origins):
            layer = cls(param, bottom_shapes, param.phase)
            top_shapes = [tuple(int(d) for d in s) for s in layer.top_shapes()]
        if layer.is_loss and not param.loss_weight:
            param.loss_weight.append(1.0)  # LossLayer::LayerSetUp's default
        tops = list(param.top)
        if layer.is_loss and not tops:
            tops = [f"({name} loss)"]  # Caffe's anonymous auto top: a loss, never an output
        if len(top_shapes) != len(tops):
            raise layer.fail(f"produces {len(top_shapes)} top(s) but the prototxt names {len(tops)}")
        if param.loss_weight and len(param.loss_weight) != len(tops):
            raise layer.fail(
                f"loss_weight must be unspecified or given once per top blob "
                f"({len(param.loss_weight)} vs. {len(tops)})"
            )
        loss_weights = tuple(float(w) for w in param.loss_weight) or (0.0,) * len(tops)

        for blob in param.bottom:
            available.discard(blob)
        for j, (blob, shape) in enumerate(zip(tops, top_shapes)):
            in_place = j < len(param.bottom) and param.bottom[j] == blob
            if blob in self.blob_shapes and not in_place:
                raise layer.fail(
                    f"top blob '{blob}' is produced by multiple sources "
                    f"(also by layer '{self._producer[blob]}')"
                )
            if blob in param.top:  # named tops, not Caffe's anonymous loss top
                self.blob_shapes[blob] = shape
                available.add(blob)
            # A Split's copies are reported as coming from the layer that made the original.
            self._producer[blob] = self._producer[param.bottom[0]] if param.type == "Split" else name
            if loss_weights[j]:
                self.loss_weights[blob] = loss_weights[j]
        # force_backward overrides propagate_down: false (MANIFEST behaviour 6).
        stop = tuple(not down and not self.force_backward for down in param.propagate_down)
        return Step(name, param.type, layer, tuple(param.bottom), tuple(tops), loss_weights,
                    stop if any(stop) else ())

    def _collect_params(self) -> list[ParamEntry]:
        """Caffe's AppendParam: ParamSpec multipliers, named-param sharing, propagate_down."""
        owners: dict[str, tuple[int, ParamEntry, bool, bool]] = {}
        entries: list[ParamEntry] = []
        for step in self.steps:
            layer, specs = step.layer, step.layer.param.param
            if len(specs) > len(layer.blobs):
                raise layer.fail(
                    f"too many param specs ({len(specs)}) for its {len(layer.blobs)} blob(s)"
                )
            for i in range(len(layer.blobs)):
                spec = specs[i] if i < len(specs) else caffe_pb2.ParamSpec()
                if spec.name and spec.name in owners:
                    self._share(step, i, spec, owners, entries)
                    continue
                blob = layer.blobs[i]
                if blob.requires_grad:  # layer-declared state (BatchNorm stats) stays frozen
                    blob.requires_grad_(spec.lr_mult > 0 or self.force_backward)
                entry = ParamEntry(step.name, i, blob, float(spec.lr_mult), float(spec.decay_mult))
                if spec.name:
                    owners[spec.name] = (len(entries), entry, spec.HasField("lr_mult"),
                                         spec.HasField("decay_mult"))
                entries.append(entry)
        return entries

    @staticmethod
    def _share(step: Step, index: int, spec, owners, entries: list[ParamEntry]) -> None:
        position, owner, has_lr, has_decay = owners[spec.name]
        mine = step.layer.blobs[index]
        strict = spec.share_mode != caffe_pb2.ParamSpec.PERMISSIVE
        if (strict and mine.shape != owner.param.shape) or mine.numel() != owner.param.numel():
            raise step.layer.fail(
                f"shared param '{spec.name}' has shape {tuple(mine.shape)} here but "
                f"{tuple(owner.param.shape)} in owner layer '{owner.layer_name}'"
            )
        if mine.shape != owner.param.shape:
            raise step.layer.fail(
                f"PERMISSIVE sharing of '{spec.name}' between different shapes "
                f"{tuple(mine.shape)} / {tuple(owner.param.shape)} is not supported"
            )
        step.layer.blobs[index] = owner.param
        lr, decay = owner.lr_mult, owner.decay_mult
        for has, field, value in ((has_lr, "lr_mult", lr), (has_decay, "decay_mult", decay)):
            if spec.HasField(field) and has and getattr(spec, field) != value:
                raise step.layer.fail(f"shared param '{spec.name}' has mismatched {field}")
        if spec.HasField("lr_mult") and not has_lr:
            lr, has_lr = float(spec.lr_mult), True
        if spec.HasField("decay_mult") and not has_decay:
            decay, has_decay = float(spec.decay_mult), True
        entry = owner._replace(lr_mult=lr, decay_mult=decay)
        entries[position] = entry
        owners[spec.name] = (position, entry, has_lr, has_decay)

    def _schedule(self) -> None:
        """Plan the forward pass: Caffe's steps with the registered fusions applied (``plan``),
        and the layers whose running-statistics updates the net applies in one batch."""
        self.plan: list[Step] = fuse_steps(self.steps)
        self._release = {False: _release_plan(self.plan), True: _release_plan(self.steps)}
        owners: dict[int, int] = {}
        for step in self.steps:
            for blob in step.layer.blobs:
                owners[id(blob)] = owners.get(id(blob), 0) + 1
        self._deferred: list[Layer] = []
        for step in self.steps:
            updates = step.layer.running_updates()
            # A blob another layer of this net also holds must move when Caffe moves it.
            step.layer.defer_running_updates = bool(updates) and all(owners[id(b)] == 1 for b, _, _ in updates)
            if step.layer.defer_running_updates:
                self._deferred.append(step.layer)

    # ------------------------------------------------------------------ running

    def run(self, inputs: Mapping[str, torch.Tensor] | None = None, record: bool = False,
            keep: Collection[str] | None = None) -> NetRun:
        """One forward pass over all layers; see :class:`NetRun`.

        With ``keep``, a blob outside it is released after the last layer that reads it, so
        inference holds only live activations (less memory, warmer caches); ``run.blobs``
        then has the kept blobs only. With ``record`` every layer runs on its own (Caffe's
        per-blob values); otherwise fused layers (``plan``) run as one call each."""
        feeds = dict(inputs or {})
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            raise CaffeCompatError(
                f"net '{self.name}': {', '.join(map(repr, unknown))} is not a top of an input or "
                f"data layer; inputs are {', '.join(self.input_names) or '(none)'}"
            )
        env: dict[str, torch.Tensor] = {}
        first: dict[str, torch.Tensor] = {}
        losses: list[tuple[str, float, torch.Tensor]] = []
        steps = self.steps if record else self.plan
        release = self._release[record] if keep is not None else [()] * len(steps)
        for step, done in zip(steps, release):
            if step.layer.is_source:
                tops = self._source_tops(step, feeds)
            else:
                bottoms = [env[b] for b in step.bottoms]
                if step.stop_gradient:
                    bottoms = [x.detach() if stop else x for x, stop in zip(bottoms, step.stop_gradient)]
                tops = self._call(step, bottoms)
            for blob, value, weight in zip(step.tops, tops, step.loss_weights):
                env[blob] = value
                if record and blob not in first:
                    first[blob] = value
                if weight:
                    losses.append((blob, weight, value))
            for blob in done:
                if blob not in keep:
                    env.pop(blob, None)
        if self._deferred:
            apply_running_updates([u for layer in self._deferred for u in layer.running_updates()])
        return NetRun(env, first, losses)

    def _source_tops(self, step: Step, feeds: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        given = [blob in feeds for blob in step.tops]
        if all(given):
            tops = tuple(_as_tensor(feeds[blob]) for blob in step.tops)
            if self.force_backward and torch.is_grad_enabled() and not torch.compiler.is_compiling():
                # Caffe's force_backward gives input blobs a diff: read it as run.first[b].grad.
                # (Compiled graphs cannot make new leaves; there the caller sets requires_grad.)
                tops = tuple(
                    t.detach().requires_grad_() if t.is_floating_point() and not t.requires_grad else t
                    for t in tops
                )
            return tops
        if any(given):
            missing = [blob for blob in step.tops if blob not in feeds]
            raise step.layer.fail(f"give all of its tops as inputs or none; missing {missing}")
        return tuple(step.layer.next_batch())

    @staticmethod
    def _call(step: Step, bottoms: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if torch.compiler.is_compiling():
            return step.layer(*bottoms)
        try:
            tops = step.layer(*bottoms)
        except (RuntimeError, ValueError) as exc:
            if user_code_where(exc):
                raise
            shapes = ", ".join(f"'{b}' {tuple(t.shape)}" for b, t in zip(step.bottoms, bottoms))
            raise step.layer.fail(f"forward failed on bottoms {shapes}: {exc}") from exc
        if len(tops) != len(step.tops):
            raise step.layer.fail(f"forward returned {len(tops)} tops, expected {len(step.tops)}")
        return tops

    def forward(
        self, inputs: Mapping[str, torch.Tensor] | None = None, blobs: BlobSelection = "outputs"
    ) -> dict[str, torch.Tensor]:
        keep = None if blobs == "all" else set(self.output_names if blobs == "outputs" else blobs)
        return self.select(self.run(inputs, keep=keep), blobs)

    def select(self, run: NetRun, blobs: BlobSelection = "outputs") -> dict[str, torch.Tensor]:
        """The blobs of a :class:`NetRun` that ``forward`` returns for this selection: the net
        outputs, ``"all"`` blobs (Caffe's order), or the named ones; plus every weighted loss top."""
        env = run.blobs
        if blobs == "outputs":
            names = self.output_names
        elif blobs == "all":
            names = list(self.blob_shapes)
        else:
            names = list(blobs)
            missing = [name for name in names if name not in env]
            if missing:
                raise CaffeCompatError(
                    f"net '{self.name}' has no blob(s) {', '.join(map(repr, missing))}; blobs are "
                    f"{', '.join(self.blob_shapes)}"
                )
        out = {name: env[name] for name in names}
        for name, _, value in run.losses:
            out.setdefault(name, value)
        return out

    def loss(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Caffe's net loss: sum over weighted tops of loss_weight * sum(top)."""
        missing = [name for name in self.loss_weights if name not in outputs]
        if missing:
            raise CaffeCompatError(f"net '{self.name}': loss blob(s) {missing} are not in the outputs")
        terms = [w * outputs[name].float().sum() for name, w in self.loss_weights.items()]
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum()

    # ------------------------------------------------------------------ parameters

    def param_specs(self) -> list[ParamEntry]:
        """Every learnable blob once (shared blobs under their owner), in Caffe's order."""
        return list(self._params)

    def layer_by_name(self, name: str) -> Layer | None:
        """The first layer with this name (Caffe's CopyTrainedLayersFrom lookup)."""
        for step in self.steps:
            if step.name == name:
                return step.layer
        return None

    def drop_layers(self, names: Sequence[str]) -> None:
        """Take built layers out of the run (after folding them into another layer)."""
        gone = set(names)
        self.steps = [step for step in self.steps if step.name not in gone]
        self.layers = nn.ModuleList(step.layer for step in self.steps)
        self._params = [entry for entry in self._params if entry.layer_name not in gone]
        self._schedule()

    def copy_from(self, source, ignore_shape_mismatch: bool = False):
        """Load weights by layer name like Caffe's CopyTrainedLayersFrom; returns a report.

        ``source``: a .caffemodel path (current or V1), a NetParameter, or a mapping
        ``layer name -> list of arrays`` (e.g. ``caffe_compat.io.caffemodel.load_weights``).
        """
        from caffe_compat.net.weights import copy_weights

        return copy_weights(self, source, ignore_shape_mismatch=ignore_shape_mismatch)

    def to_net_parameter(self, write_diff: bool = False):
        """Caffe's Net::ToProto: every layer (splits included) with its blobs (for snapshots)."""
        from caffe_compat.net.weights import net_to_proto

        return net_to_proto(self, write_diff=write_diff)


def fuse_steps(steps: Sequence[Step]) -> list[Step]:
    """``steps`` with every run that a registered fusion rule matches replaced by one step."""
    plan: list[Step] = []
    i = 0
    while i < len(steps):
        found = next((f for f in (rule(steps, i) for rule in FUSIONS) if f is not None), None)
        if found is None:
            plan.append(steps[i])
            i += 1
            continue
        count, module = found
        group = steps[i : i + count]
        plan.append(Step("+".join(s.name for s in group), "+".join(s.type for s in group), module,
                         group[0].bottoms, group[-1].tops, group[-1].loss_weights, group[0].stop_gradient))
        i += count
    return plan


def _release_plan(steps: Sequence[Step]) -> list[tuple[str, ...]]:
    """Per step, the blobs it reads for the last time (freed after it when not kept)."""
    last_read: dict[str, int] = {}
    for i, step in enumerate(steps):
        for blob in step.bottoms:
            last_read[blob] = i
    plan: list[list[str]] = [[] for _ in steps]
    for blob, i in last_read.items():
        plan[i].append(blob)
    return [tuple(blobs) for blobs in plan]


def _as_tensor(value) -> torch.Tensor:
    """Caller inputs as tensors; numpy arrays and float64 tensors (what numpy's mean subtraction
    gives) become float32 like Caffe's blobs."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.float64 else value
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))


def load_net(model: str | os.PathLike[str], phase: int = TEST, weights=None,
             stages: Sequence[str] = (), level: int = 0) -> CaffeNet:
    """Read a prototxt (any Caffe version), build it and optionally copy weights."""
    from caffe_compat.io.prototxt import read_net

    net = CaffeNet(read_net(model), phase=phase, stages=stages, level=level)
    if weights is not None:
        net.copy_from(weights)
    return net
