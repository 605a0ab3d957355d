"""pycaffe's ``Net`` and ``Blob`` over a :class:`~caffe_compat.net.builder.CaffeNet`.

Blobs are what pycaffe code reads and writes: ``net.blobs[name].data`` / ``.diff`` and
``net.params[layer][i].data`` / ``.diff`` are numpy arrays sharing memory with the torch tensors
(on the CPU), so ``net.params['conv1'][0].data[...] = w`` changes the layer's weights and
``net.blobs['data'].data[...] = x`` is the next forward's input. On a GPU they are host copies
pushed back before the next forward, backward or solver step (Caffe's SyncedMemory, in effect).

``forward`` runs the layers in Caffe's order (the net's fused plan for a whole pass, so the
numbers are the library's; layer by layer for ``start=`` / ``end=``); ``backward`` is autograd
from the loss tops (weighted as in Caffe), from the output diffs given, or from the tops of
``start``. Blob diffs are the gradients of each blob's first value (an in-place blob's diff is
taken before its in-place layers, as Caffe's shared memory gives it). ``end=`` in ``backward``
only selects the returned diffs: autograd always runs down to the inputs.
"""

from __future__ import annotations

import os
from collections import OrderedDict
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

    def reshape(self, *shape: int) -> None:
        self._net._data[self._name] = torch.zeros(tuple(int(d) for d in shape), device=self._net._device)
        self._net._diffs.pop(self._name, None)


class _ParamBlob(Blob):
    """A learnable blob of a layer (looked up at every use: named sharing may replace it)."""

    def __init__(self, net: "Net", layer: Layer, index: int) -> None:
        super().__init__(net)
        self._layer, self._index = layer, index

    def _tensor(self) -> torch.Tensor:
        return self._layer.blobs[self._index]

    def _diff_tensor(self) -> torch.Tensor:
        param = self._layer.blobs[self._index]
        if param.grad is None:
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
        self._graph: dict[str, torch.Tensor] = {}  # last forward's values, with autograd history
        self._first: dict[str, torch.Tensor] = {}
        self._losses: list[tuple[torch.Tensor, float]] = []
        self._layer_tops: dict[str, tuple[torch.Tensor, ...]] = {}
        self._mirrors: list[tuple[torch.Tensor, np.ndarray]] = []
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

    def _host_view(self, tensor: torch.Tensor) -> np.ndarray:
        """The tensor's values as numpy: a view on the CPU; on a GPU a host copy written back
        before the next forward, backward or solver step."""
        tensor = tensor.detach()
        if tensor.device.type == "cpu" and tensor.dtype == torch.float32:
            return tensor.numpy()
        host = tensor.to("cpu", torch.float32).numpy()
        self._mirrors.append((tensor, host))
        return host

    def _push_mirrors(self) -> None:
        with torch.no_grad():
            for tensor, host in self._mirrors:
                tensor.copy_(torch.from_numpy(host).reshape(tensor.shape))
        self._mirrors.clear()

    def _follow_mode(self) -> None:
        """Caffe reads the mode at every forward: move to the device it names now."""
        if not self._follows_mode or mode.device() == self._device:
            return
        self._push_mirrors()
        self._device = mode.device()
        self._net.to(self._device)
        self._data = {k: v.to(self._device) for k, v in self._data.items()}
        self._diffs = {k: v.to(self._device) for k, v in self._diffs.items()}

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
            for name, value in zip(tops, output):
                self._data[name] = value.detach()
        return hook

    def _keep_inputs(self, _module, args) -> None:
        if args and isinstance(args[0], Mapping):
            for name, value in args[0].items():
                self._data[name] = value.detach()

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

    def _run(self, first: int, last: int, advance: bool = True) -> None:
        self._follow_mode()
        self._push_mirrors()
        net = self._net
        whole = first == 0 and last == len(net.steps) - 1
        steps = net.plan if whole else net.steps[first : last + 1]
        fed = self._fed(steps) if advance else {}
        env: dict[str, torch.Tensor] = {}
        firsts: dict[str, torch.Tensor] = {}
        losses: list[tuple[torch.Tensor, float]] = []
        layer_tops: dict[str, tuple[torch.Tensor, ...]] = {}
        for step in steps:
            if step.layer.is_source:
                tops = self._source_tops(step, fed, advance)
            else:
                bottoms = [env[b] if b in env else self._value(b) for b in step.bottoms]
                if step.stop_gradient:
                    bottoms = [b.detach() if stop else b for b, stop in zip(bottoms, step.stop_gradient)]
                tops = CaffeNet._call(step, bottoms)
            for name, value, weight in zip(step.tops, tops, step.loss_weights):
                if name not in firsts:
                    if value.requires_grad and not value.is_leaf:
                        value.retain_grad()
                    firsts[name] = value
                env[name] = value
                self._data[name] = value.detach()
                if weight:
                    losses.append((value, weight))
            for part in getattr(step.layer, "parts", [step.layer]):
                layer_tops[part.name] = tuple(tops)
        updates = [u for s in steps for part in getattr(s.layer, "parts", [s.layer])
                   if part.defer_running_updates for u in part.running_updates()]
        if updates:
            apply_running_updates(updates)
        self._graph, self._first, self._losses, self._layer_tops = env, firsts, losses, layer_tops

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
            tops = tuple(self._value(t) for t in step.tops)
            if step.type == "Input" and self._net.force_backward and torch.is_grad_enabled():
                tops = tuple(t.detach().requires_grad_() for t in tops)  # their diffs are the input gradients
            return tops
        if all(t in fed for t in step.tops):
            return tuple(fed[t] for t in step.tops)
        return tuple(step.layer.next_batch())

    # ------------------------------------------------------------------ backward

    def backward(self, diffs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                 **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """Backpropagate the last forward: from the loss tops (and output diffs in ``kwargs``),
        or from the tops of layer ``start`` with their current diffs. Returns the diffs of the
        inputs (or of ``end``'s bottoms) plus ``diffs``."""
        wanted = set((self.bottom_names[end] if end is not None else self.inputs) + list(diffs or []))
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise CaffeCompatError(f"top diff arguments {sorted(kwargs)} do not match net outputs {self.outputs}")
            for name, value in kwargs.items():
                if np.shape(value)[0] != self.blobs[name].shape[0]:
                    raise CaffeCompatError(f"diff for '{name}' is not batch sized")
                self.blobs[name].diff[...] = value
        self._push_mirrors()
        roots: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        if start is not None:
            self._index(start)
            if start not in self._layer_tops:
                raise CaffeCompatError(f"layer '{start}' did not run in the last forward")
            for name, value in zip(self.top_names[start], self._layer_tops[start]):
                roots.append(value)
                grads.append(self._diff(name))
        else:
            for value, weight in self._losses:
                roots.append(value)
                grads.append(torch.full_like(value, weight))
            for name in self.outputs:
                if name in self._graph and not self.blob_loss_weights.get(name) and self._diff(name).any():
                    roots.append(self._graph[name])
                    grads.append(self._diff(name))
        pairs = [(r, g.to(r.dtype)) for r, g in zip(roots, grads) if r.requires_grad]
        if pairs:
            try:
                torch.autograd.backward([r for r, _ in pairs], [g for _, g in pairs])
            except RuntimeError as exc:
                if "second time" not in str(exc):
                    raise
                raise CaffeCompatError("backward() needs a forward() before it (each forward allows one backward)") from None
        for name, value in self._first.items():
            if value.grad is not None:
                self._diffs[name] = value.grad.detach()
            elif name in self._diffs and name not in self.outputs:
                self._diffs[name].zero_()
        return {name: self.blobs[name].diff for name in wanted}

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

    load_hdf5 = copy_from

    def save(self, path: str | os.PathLike[str]) -> None:
        self._push_mirrors()
        write_caffemodel(path, self._net.to_net_parameter())

    def save_hdf5(self, path: str | os.PathLike[str]) -> None:
        self._push_mirrors()
        write_weights_hdf5(path, self._net.to_net_parameter())

    def clear_param_diffs(self) -> None:
        for param in self._net.parameters():
            if param.grad is not None:
                param.grad.zero_()

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
