"""pycaffe's ``Net`` and ``Blob`` over a :class:`~caffe_compat.net.builder.CaffeNet`.

Blobs are what pycaffe code reads and writes, with Caffe's memory rules: every blob has one
data and one diff buffer for the net's life (a new one only when a reshape changes its size), and
``net.blobs[name].data`` / ``.diff`` and ``net.params[layer][i].data`` / ``.diff`` are numpy views
of them (on the CPU), so forward, backward, the solver and the user all read and write the same
memory: a view held across a forward shows the new values. On a GPU they are host arrays kept for
the blob's life, as Caffe's SyncedMemory keeps its CPU copy: what the user wrote into them goes
to the device before the next forward, backward or solver step, and every run's results come
back into the same arrays, so a held view shows the new values there too.

``forward`` is Caffe's ForwardFromTo (the net's fused plan for a whole pass when no layer needs
backward, so the numbers are the library's). ``backward`` is Caffe's BackwardFromTo: layer by
layer, from the diffs stored in the top blobs (the user's, or a loss's weight, set once as in
Caffe's SetLossWeights), for the layers Caffe's Net::Init marks as needing backward (all of them
with ``force_backward``); bottom diffs are overwritten, param diffs accumulate until cleared.
A layer that ran in the last forward reuses that pass's autograd record; one that did not is
run again on its bottoms' current data first (so ``backward`` needs no ``forward`` before it).
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.caffemodel import write_caffemodel
from caffe_compat.io.hdf5 import write_weights_hdf5
from caffe_compat.net.builder import CaffeNet, Step, load_net
from caffe_compat.net.layers.python_layer import LegacyShape
from caffe_compat.net.registry import Layer, apply_running_updates
from caffe_compat.pycaffe import mode

_CALLER_FED = {"Input", "MemoryData"}  # source layers whose tops come from the caller


@dataclass
class _Mirror:
    """A host array standing for device memory (Caffe's SyncedMemory CPU copy)."""

    tensor: torch.Tensor  # the device memory, flat
    host: np.ndarray  # flat; the user holds views of it
    shadow: np.ndarray  # the host array as last synced: a user's write shows as a difference


class Blob(LegacyShape):
    """A Caffe blob: ``data`` / ``diff`` arrays, its shape, ``reshape``."""

    def __init__(self, net: "Net") -> None:
        self._net = net

    # what the two kinds of blob define
    def _tensor(self) -> torch.Tensor:
        raise NotImplementedError

    def _diff_tensor(self) -> torch.Tensor:
        raise NotImplementedError

    def reshape(self, *shape: int) -> None:
        raise NotImplementedError

    @property
    def data(self) -> np.ndarray:
        return self._net._host_view(self._tensor())

    @property
    def diff(self) -> np.ndarray:
        return self._net._host_view(self._diff_tensor())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._tensor().shape)

    @property
    def count(self) -> int:
        return int(self._tensor().numel())


class _ActivationBlob(Blob):
    """A blob the layers produce (or an input): its value from the last forward."""

    def __init__(self, net: "Net", name: str) -> None:
        super().__init__(net)
        self._name = name

    def _tensor(self) -> torch.Tensor:
        return self._net._value(self._name)

    def _diff_tensor(self) -> torch.Tensor:
        return self._net._diff(self._name)

    @property
    def data(self) -> np.ndarray:
        return self._net._host_view(self._net._buffer(self._name))

    def reshape(self, *shape: int) -> None:
        self._net._reshape_blob(self._name, tuple(int(d) for d in shape))


class _ParamBlob(Blob):
    """A learnable blob of a layer (looked up at every use: named sharing may replace it)."""

    def __init__(self, net: "Net", layer: Layer, index: int) -> None:
        super().__init__(net)
        self._layer, self._index = layer, index

    def _tensor(self) -> torch.Tensor:
        return self._layer.blobs[self._index]

    def _diff_tensor(self) -> torch.Tensor:
        param = self._layer.blobs[self._index]
        if param.grad is None:  # made on first use; autograd and the solver then work in it in place
            param.grad = torch.zeros_like(param)
        return param.grad

    def reshape(self, *shape: int) -> None:
        param = self._layer.blobs[self._index]
        with torch.no_grad():
            param.data = torch.zeros(tuple(int(d) for d in shape), dtype=param.dtype, device=param.device)
        param.grad = None


class LayerView:
    """``net.layers[i]``: the layer's ``type`` and learnable ``blobs``."""

    def __init__(self, net: "Net", step: Step) -> None:
        self.type = step.type
        self.name = step.name
        self.blobs = [_ParamBlob(net, step.layer, i) for i in range(len(step.layer.blobs))]


def _parse_net_args(args: Sequence[Any], phase: int | None, weights: str | None) -> tuple[int, str | None]:
    """pycaffe's two constructors: ``Net(file, phase, ...)`` and ``Net(file, weights, phase)``."""
    if len(args) == 2:
        weights, phase = args
    elif len(args) == 1:
        phase = args[0]
    elif args:
        raise TypeError("Net(network_file, phase) or Net(network_file, weights, phase)")
    if phase is None:
        raise TypeError("Net needs a phase: caffe.TRAIN or caffe.TEST")
    return int(phase), weights


class Net:
    """pycaffe's ``caffe.Net(network_file, phase, level=0, stages=None, weights=None)`` (also the
    older ``caffe.Net(network_file, weights, phase)``)."""

    def __init__(self, network_file: str | os.PathLike[str], *args: Any, phase: int | None = None, level: int = 0,
                 stages: Sequence[str] | None = None, weights: str | None = None) -> None:
        phase, weights = _parse_net_args(args, phase, weights)
        net = load_net(network_file, phase, stages=tuple(stages or ()), level=level)
        if weights is not None:
            net.copy_from(os.fspath(weights))
        self._init(net.to(mode.device()), feeder=None, follows_mode=True)

    @classmethod
    def _wrap(cls, net: CaffeNet, feeder=None) -> "Net":
        """A pycaffe view of a net the library runs (a solver's): every forward it runs, by
        itself or through this object, updates ``blobs``; sources read from ``feeder``."""
        self = cls.__new__(cls)
        self._init(net, feeder, follows_mode=False)
        self._capture_library_runs()
        return self

    def _init(self, net: CaffeNet, feeder, follows_mode: bool) -> None:
        self._net = net
        self._feeder = feeder
        self._follows_mode = follows_mode
        self._device = next((p.device for p in net.parameters()), mode.device() if follows_mode else torch.device("cpu"))
        self._data: dict[str, torch.Tensor] = {}
        self._diffs: dict[str, torch.Tensor] = {}
        # per layer index: (bottom leaves, tops) of the last forward, for that layer's backward
        self._segments: dict[int, tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]] = {}
        self._mirrors: dict[tuple, _Mirror] = {}  # host arrays of tensors numpy cannot view
        self._own_pass = False  # True while this object runs layers (the library-run hooks stand by)
        self._viewed: set[str] = set()  # blobs whose data buffer the user may hold a view of
        self._memory: list[Any] | None = None  # set_input_arrays: [data, labels, position]
        self.blobs: OrderedDict[str, Blob] = OrderedDict((n, _ActivationBlob(self, n)) for n in net.blob_shapes)
        self._layer_names: list[str] = [s.name for s in net.steps]
        self.layers: list[Any] = [getattr(s.layer, "py", None) or LayerView(self, s) for s in net.steps]
        self.layer_dict: OrderedDict[str, Any] = OrderedDict(zip(self._layer_names, self.layers))
        self.params: OrderedDict[str, list[Blob]] = OrderedDict(
            (s.name, [_ParamBlob(self, s.layer, i) for i in range(len(s.layer.blobs))])
            for s in net.steps if len(s.layer.blobs))
        self.inputs: list[str] = [t for s in net.steps if s.type == "Input" for t in s.tops]
        self.outputs: list[str] = list(net.output_names)
        self.top_names = OrderedDict((s.name, list(s.tops)) for s in net.steps)
        self.bottom_names = OrderedDict((s.name, list(s.bottoms)) for s in net.steps)
        self.blob_loss_weights = OrderedDict((n, net.loss_weights.get(n, 0.0)) for n in net.blob_shapes)
        self._blob_names = list(self.blobs)
        self._plan_backward()
        self._init_loss_diffs()

    # ------------------------------------------------------------------ blob storage

    def _value(self, name: str) -> torch.Tensor:
        value = self._data.get(name)
        if value is None:
            value = self._data[name] = torch.zeros(self._net.blob_shapes[name], device=self._device)
        return value

    def _diff(self, name: str) -> torch.Tensor:
        value = self._value(name)
        diff = self._diffs.get(name)
        if diff is None or diff.shape != value.shape:
            diff = self._diffs[name] = torch.zeros(value.shape, device=value.device)
        return diff

    def _buffer(self, name: str) -> torch.Tensor:
        """The blob's data as memory of its own, kept from now on: the user holds a view of it."""
        if name not in self._viewed:
            self._data[name] = self._value(name).detach().clone()
            self._viewed.add(name)
        return self._data[name]

    def _store(self, name: str, value: torch.Tensor) -> None:
        """A layer's top as the blob's data. A blob the user has a view of keeps its buffer
        (Caffe's blobs keep their memory, so the view sees the new values; a new buffer only when
        the shape changes); the others just take the top (no copy)."""
        value = value.detach()
        buffer = self._data.get(name)
        if name not in self._viewed:
            self._data[name] = value if value.dtype == torch.float32 else value.float()
        elif buffer is not None and buffer.shape == value.shape:
            if buffer.data_ptr() != value.data_ptr():
                buffer.copy_(value)  # integer labels become float, as in Caffe's blobs
        else:
            self._data[name] = value.to(torch.float32, copy=True)

    def _reshape_blob(self, name: str, shape: tuple[int, ...]) -> None:
        """Caffe's Blob::Reshape: the same memory when the count is unchanged, else new zeros."""
        buffer = self._data.get(name)
        if buffer is not None and buffer.numel() == int(np.prod(shape)):
            self._data[name] = buffer.view(shape)
            diff = self._diffs.get(name)
            if diff is not None:
                self._diffs[name] = diff.view(shape)
        else:
            self._data[name] = torch.zeros(shape, device=self._device)
            self._diffs.pop(name, None)
        self._segments.clear()  # recorded passes were for the old shapes

    def _host_view(self, tensor: torch.Tensor) -> np.ndarray:
        """The tensor's values as numpy: a view on the CPU; on a GPU (or for another dtype) a
        view of the host array kept for that memory, the same one at every call and whatever
        shape a same-size reshape gives the memory."""
        tensor = tensor.detach()
        if self._numpy_views(tensor):
            return tensor.numpy()
        key = (str(tensor.device), tensor.data_ptr(), tensor.numel(), tensor.dtype)
        mirror = self._mirrors.get(key)
        if mirror is None:
            host = tensor.to("cpu", torch.float32, copy=True).numpy().reshape(-1)
            mirror = self._mirrors[key] = _Mirror(tensor.reshape(-1), host, host.copy())
        return mirror.host.reshape(tensor.shape)

    @staticmethod
    def _numpy_views(tensor: torch.Tensor) -> bool:
        """Whether numpy can view the tensor's memory itself (a float32 CPU tensor)."""
        return tensor.device.type == "cpu" and tensor.dtype == torch.float32

    def _push_mirrors(self) -> None:
        """Host arrays the user wrote into since the last sync go to the device (only those: a
        stale copy must never overwrite what a solver step or another net changed there)."""
        with torch.no_grad():
            for mirror in self._mirrors.values():
                if not np.array_equal(mirror.host, mirror.shadow, equal_nan=True):
                    mirror.tensor.copy_(torch.from_numpy(mirror.host))
                    mirror.shadow[...] = mirror.host

    def _pull_mirrors(self) -> None:
        """After a run: the host arrays take the device's new values (Caffe's to_cpu)."""
        with torch.no_grad():
            for mirror in self._mirrors.values():
                values = mirror.tensor.to("cpu", torch.float32).numpy()
                mirror.host[...] = values
                mirror.shadow[...] = values

    def _follow_mode(self) -> None:
        """Caffe reads the mode at every forward: move to the device it names now."""
        if not self._follows_mode or mode.device() == self._device:
            return
        self._push_mirrors()
        self._mirrors.clear()  # the tensors move: new arrays on the next view
        self._device = mode.device()
        self._net.to(self._device)
        self._data = {k: v.to(self._device) for k, v in self._data.items()}
        self._diffs = {k: v.to(self._device) for k, v in self._diffs.items()}
        self._segments.clear()

    def _capture_library_runs(self) -> None:
        """Keep the blobs of forwards the library runs (solver steps and tests), as Caffe's
        blobs keep the last values: hooks on the net's inputs and on every layer and fusion."""
        modules: dict[int, tuple[torch.nn.Module, tuple[str, ...]]] = {}
        for step in [*self._net.steps, *self._net.plan]:
            modules.setdefault(id(step.layer), (step.layer, step.tops))
        for module, tops in modules.values():
            module.register_forward_hook(self._keep_tops(tops))
        self._net.register_forward_pre_hook(self._keep_inputs)

    def _keep_tops(self, tops: tuple[str, ...]):
        def hook(_module, _args, output) -> None:
            if self._own_pass:
                return  # this object's own forward stores its tops itself
            for name, value in zip(tops, output):
                self._store(name, value)
            self._segments.clear()
        return hook

    def _keep_inputs(self, _module, args) -> None:
        if not self._own_pass and args and isinstance(args[0], Mapping):
            for name, value in args[0].items():
                self._store(name, value)

    # ------------------------------------------------------------------ which layers backward

    def _plan_backward(self) -> None:
        """Caffe's Net::Init bookkeeping: which layers run backward and into which bottoms
        (layers under a loss, or with learnable params; all of them with force_backward)."""
        steps = self._net.steps
        blob_need: dict[str, bool] = {}
        layer_need: list[bool] = []
        bottom_need: list[list[bool]] = []
        for step in steps:
            downs = [blob_need.get(b, False) and not (step.stop_gradient and step.stop_gradient[j])
                     for j, b in enumerate(step.bottoms)]
            need = any(downs) or any(p.requires_grad for p in step.layer.blobs)
            for top in step.tops:
                blob_need[top] = blob_need.get(top, False) or need
            layer_need.append(need)
            bottom_need.append(downs)
        under_loss: set[str] = set()
        skip: set[str] = set()
        for i in reversed(range(len(steps))):
            step = steps[i]
            contributes = any(w or t in under_loss for t, w in zip(step.tops, step.loss_weights))
            if layer_need[i] and all(t in skip for t in step.tops):
                layer_need[i] = False
                bottom_need[i] = [False] * len(step.bottoms)
            if not contributes:
                layer_need[i] = False
            for j, blob in enumerate(step.bottoms):
                if contributes:
                    under_loss.add(blob)
                else:
                    bottom_need[i][j] = False
                if not bottom_need[i][j]:
                    skip.add(blob)
        if self._net.force_backward:
            for i, step in enumerate(steps):
                layer_need[i] = True
                bottom_need[i] = [down or not (step.layer.is_loss and j == 1) for j, down in enumerate(bottom_need[i])]
        self._layer_need, self._bottom_need = layer_need, bottom_need

    def _init_loss_diffs(self) -> None:
        """Caffe's SetLossWeights: a loss top's diff holds its loss weight from set-up on."""
        for step in self._net.steps:
            for name, weight in zip(step.tops, step.loss_weights):
                if weight and name in self._net.blob_shapes:
                    self._diff(name).fill_(weight)

    # ------------------------------------------------------------------ forward

    def _index(self, layer: str) -> int:
        try:
            return self._layer_names.index(layer)
        except ValueError:
            raise CaffeCompatError(f"net '{self._net.name}' has no layer '{layer}'") from None

    def forward(self, blobs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """Run layers ``start`` to ``end`` (inclusive); ``kwargs`` set the input blobs first.
        Returns the outputs (the tops of ``end``, when given) plus ``blobs``, as arrays."""
        blobs = list(blobs or [])
        first = self._index(start) if start is not None else 0
        last = self._index(end) if end is not None else len(self._layer_names) - 1
        outputs = set((self.top_names[end] if end is not None else self.outputs) + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise CaffeCompatError(f"input blob arguments {sorted(kwargs)} do not match net inputs {self.inputs}")
            for name, value in kwargs.items():
                if np.shape(value)[0] != self.blobs[name].shape[0]:
                    raise CaffeCompatError(f"input '{name}' has {np.shape(value)[0]} items but the blob holds "
                                           f"{self.blobs[name].shape[0]}: input is not batch sized")
                self.blobs[name].data[...] = value
        self._run(first, last)
        return {name: self.blobs[name].data for name in outputs}

    @contextlib.contextmanager
    def _pass(self) -> Iterator[None]:
        self._own_pass = True
        try:
            yield
        finally:
            self._own_pass = False

    def _run(self, first: int, last: int, advance: bool = True) -> None:
        with self._pass():
            self._forward_from_to(first, last, advance)
        self._pull_mirrors()

    def _forward_from_to(self, first: int, last: int, advance: bool) -> None:
        """Caffe's ForwardFromTo: every top lands in its blob's buffer. Layers that will run
        backward keep their pass (bottoms cut as leaves, so each layer's backward runs alone);
        the others run without autograd."""
        self._follow_mode()
        self._push_mirrors()
        net = self._net
        record = torch.is_grad_enabled() and any(self._layer_need[first : last + 1])
        whole = first == 0 and last == len(net.steps) - 1
        steps = net.plan if whole and not record else net.steps[first : last + 1]
        fed = self._fed(steps) if advance else {}
        env: dict[str, torch.Tensor] = {}
        for k in [k for k in self._segments if k >= first]:
            del self._segments[k]  # their bottoms change now: rerun or recompute if asked
        for k, step in enumerate(steps):
            index = first + k
            if step.layer.is_source:
                tops = self._source_tops(step, fed, advance)
            else:
                bottoms = [env[b] if b in env else self._value(b) for b in step.bottoms]
                if record and self._layer_need[index]:
                    bottoms = self._leaves(index, bottoms)
                    tops = CaffeNet._call(step, bottoms)
                    self._segments[index] = (bottoms, tops)
                else:
                    with torch.no_grad():
                        tops = CaffeNet._call(step, bottoms)
            for name, value in zip(step.tops, tops):
                if name in net.blob_shapes:
                    self._store(name, value)
                    if not value.requires_grad:  # later layers read the buffer: the top's memory is free again
                        value = self._data[name]
                env[name] = value
        updates = [u for s in steps for part in getattr(s.layer, "parts", [s.layer])
                   if part.defer_running_updates for u in part.running_updates()]
        if updates:
            apply_running_updates(updates)

    def _leaves(self, index: int, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """A layer's bottoms cut from the graph (its backward runs alone), asking for the
        gradients Caffe propagates down. A bottom that is its blob's buffer is copied: an
        in-place top may overwrite the buffer before the backward."""
        names, downs = self._net.steps[index].bottoms, self._bottom_need[index]
        return [(value.clone() if value is self._data.get(name) else value).detach().requires_grad_(
                    down and value.is_floating_point()) for name, value, down in zip(names, values, downs)]

    def _reads_data(self, step: Step) -> bool:
        return step.layer.is_source and step.type not in _CALLER_FED

    def _fed(self, steps: Sequence[Step]) -> dict[str, torch.Tensor]:
        """One batch for every data-reading source, from the solver's feeder when there is one
        (so tests and ``solver.net.forward()`` share Caffe's single data cursor)."""
        if self._feeder is None or not any(self._reads_data(s) for s in steps):
            return {}
        return self._feeder.next()

    def _source_tops(self, step: Step, fed: Mapping[str, torch.Tensor], advance: bool) -> tuple[torch.Tensor, ...]:
        if step.type == "MemoryData" and advance:
            return self._memory_batch(step)
        if not self._reads_data(step) or not advance:
            return tuple(self._value(t) for t in step.tops)
        if all(t in fed for t in step.tops):
            return tuple(fed[t] for t in step.tops)
        return tuple(step.layer.next_batch())

    # ------------------------------------------------------------------ backward

    def backward(self, diffs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                 **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """Caffe's BackwardFromTo(start, end): each layer that needs it, from ``start`` (default:
        the last) down to ``end`` (default: the first), turns its tops' stored diffs into its
        bottoms' diffs (overwritten) and its params' diffs (accumulated until cleared).
        ``kwargs`` set the output diffs first. Returns the diffs of the inputs (or of ``end``'s
        bottoms) plus ``diffs``."""
        first = self._index(start) if start is not None else len(self._layer_names) - 1
        last = self._index(end) if end is not None else 0
        wanted = set((self.bottom_names[end] if end is not None else self.inputs) + list(diffs or []))
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise CaffeCompatError(f"top diff arguments {sorted(kwargs)} do not match net outputs {self.outputs}")
            for name, value in kwargs.items():
                if np.shape(value)[0] != self.blobs[name].shape[0]:
                    raise CaffeCompatError(f"diff for '{name}' is not batch sized")
                self.blobs[name].diff[...] = value
        self._follow_mode()
        self._push_mirrors()
        for index in range(first, last - 1, -1):
            if self._layer_need[index]:
                self._backward_layer(index)
        self._pull_mirrors()
        return {name: self.blobs[name].diff for name in wanted}

    def _backward_layer(self, index: int) -> None:
        step = self._net.steps[index]
        if step.layer.is_source:
            return
        segment = self._segments.get(index)
        if segment is None or any(t.shape != self._value(n).shape for n, t in zip(step.tops, segment[1])
                                  if n in self._net.blob_shapes):
            segment = self._segments[index] = self._recompute(index)
        bottoms, tops = segment
        for leaf in bottoms:
            leaf.grad = None
        pairs = [(t, self._top_diff(n, t, w)) for n, t, w in zip(step.tops, tops, step.loss_weights) if t.requires_grad]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs], retain_graph=True)
        with torch.no_grad():
            for name, leaf, down in zip(step.bottoms, bottoms, self._bottom_need[index]):
                if down:
                    diff = self._diff(name)
                    if leaf.grad is None:
                        diff.zero_()
                    else:
                        diff.copy_(leaf.grad.reshape(diff.shape))

    def _top_diff(self, name: str, top: torch.Tensor, weight: float) -> torch.Tensor:
        if name not in self._net.blob_shapes:  # a loss layer's anonymous top: no blob, its weight
            return torch.full_like(top, weight)
        return self._diff(name).to(top.dtype)

    def _recompute(self, index: int) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
        """A layer's pass on its bottoms' current data, for a backward no forward recorded."""
        step = self._net.steps[index]
        bottoms = self._leaves(index, [self._value(b) for b in step.bottoms])
        with torch.enable_grad(), self._pass():
            tops = CaffeNet._call(step, bottoms)
        return bottoms, tops

    # ------------------------------------------------------------------ batches

    def _batches(self, arrays: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """pycaffe's ``_batch``: full batches of the net's batch size, the last one zero-padded."""
        if not arrays:
            return
        total = len(next(iter(arrays.values())))
        size = next(iter(self.blobs.values())).shape[0]
        for start in range(0, total - total % size, size):
            yield {name: values[start : start + size] for name, values in arrays.items()}
        rest = total % size
        if rest:
            yield {name: np.concatenate([values[-rest:], np.zeros((size - rest, *np.shape(values)[1:]))])
                   for name, values in arrays.items()}

    def forward_all(self, blobs: Sequence[str] | None = None, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """``forward`` over inputs of any length, in batches; outputs concatenated."""
        collected: dict[str, list[np.ndarray]] = {name: [] for name in set(self.outputs + list(blobs or []))}
        for batch in self._batches(kwargs):
            for name, values in self.forward(blobs=blobs, **batch).items():
                collected[name].extend(values.copy())
        out = {name: np.asarray(values) for name, values in collected.items()}
        return self._unpad(out, kwargs)

    def forward_backward_all(self, blobs: Sequence[str] | None = None, diffs: Sequence[str] | None = None,
                             **kwargs: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``forward`` + ``backward`` in batches: inputs and output diffs from ``kwargs``."""
        outs: dict[str, list[np.ndarray]] = {name: [] for name in set(self.outputs + list(blobs or []))}
        grads: dict[str, list[np.ndarray]] = {name: [] for name in set(self.inputs + list(diffs or []))}
        ins = list(self._batches({k: v for k, v in kwargs.items() if k in self.inputs}))
        tops = list(self._batches({k: v for k, v in kwargs.items() if k in self.outputs}))
        for i in range(max(len(ins), len(tops))):
            for name, values in self.forward(blobs=blobs, **(ins[i] if i < len(ins) else {})).items():
                outs[name].extend(values.copy())
            for name, values in self.backward(diffs=diffs, **(tops[i] if i < len(tops) else {})).items():
                grads[name].extend(values.copy())
        return (self._unpad({k: np.asarray(v) for k, v in outs.items()}, kwargs),
                self._unpad({k: np.asarray(v) for k, v in grads.items()}, kwargs))

    @staticmethod
    def _unpad(out: dict[str, np.ndarray], given: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not out or not given:
            return out
        pad = len(next(iter(out.values()))) - len(next(iter(given.values())))
        return {name: values[:-pad] for name, values in out.items()} if pad > 0 else out

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Feed a MemoryData first layer from arrays: each forward takes the next ``batch_size``
        items, wrapping around (pycaffe's ``set_input_arrays``)."""
        step = self._net.steps[0]
        if step.type != "MemoryData":
            raise CaffeCompatError("set_input_arrays may only be called if the first layer is a MemoryData layer")
        batch, *chw = step.layer.shapes[0]
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = labels[:, None, None, None]
        for what, array, dims in (("data", data, tuple(chw)), ("labels", labels, (1, 1, 1))):
            if not isinstance(array, np.ndarray) or array.dtype != np.float32 or not array.flags.c_contiguous:
                raise CaffeCompatError(f"{what} array must be a C-contiguous float32 numpy array")
            if array.ndim != 4 or array.shape[1:] != dims:
                raise CaffeCompatError(f"{what} array has shape {array.shape}; expected (N, {', '.join(map(str, dims))})")
        if len(data) != len(labels):
            raise CaffeCompatError("data and labels must have the same first dimension")
        if len(data) % batch:
            raise CaffeCompatError(f"first dimensions of input arrays must be a multiple of batch size {batch}")
        self._memory = [data, labels.reshape(-1), 0]

    def _memory_batch(self, step: Step) -> tuple[torch.Tensor, ...]:
        if self._memory is None:
            raise CaffeCompatError(f"layer '{step.name}' (type MemoryData): call net.set_input_arrays(data, labels) first")
        data, labels, at = self._memory
        size = step.layer.shapes[0][0]
        self._memory[2] = (at + size) % len(data)
        return (torch.from_numpy(data[at : at + size].copy()).to(self._device),
                torch.from_numpy(labels[at : at + size].copy()).to(self._device))

    # ------------------------------------------------------------------ weights

    def reshape(self) -> None:
        """Propagate the input blobs' shapes through the net (runs it once without advancing
        its data sources)."""
        with torch.no_grad():
            self._run(0, len(self._layer_names) - 1, advance=False)

    def copy_from(self, weights: str | os.PathLike[str]) -> None:
        """Copy weights by layer name from a .caffemodel or .caffemodel.h5."""
        self._push_mirrors()
        self._net.copy_from(os.fspath(weights))
        self._pull_mirrors()

    load_hdf5 = copy_from

    def save(self, path: str | os.PathLike[str]) -> None:
        self._push_mirrors()
        write_caffemodel(path, self._net.to_net_parameter())

    def save_hdf5(self, path: str | os.PathLike[str]) -> None:
        self._push_mirrors()
        write_weights_hdf5(path, self._net.to_net_parameter())

    def clear_param_diffs(self) -> None:
        self._push_mirrors()
        for param in self._net.parameters():
            if param.grad is not None:
                param.grad.zero_()
        self._pull_mirrors()

    def share_with(self, other: "Net") -> None:
        """Use ``other``'s blobs for every same-named layer (Caffe's ShareTrainedLayersWith)."""
        for step in self._net.steps:
            source = other._net.layer_by_name(step.name)
            if source is not None and len(source.blobs) == len(step.layer.blobs):
                for i, blob in enumerate(source.blobs):
                    step.layer.blobs[i] = blob

    @property
    def torch_net(self) -> CaffeNet:
        """The library's net underneath (a ``torch.nn.Module``)."""
        return self._net
