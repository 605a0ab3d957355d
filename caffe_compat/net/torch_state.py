"""Caffe blobs as a PyTorch state dict keyed by layer name, and back (safetensors, never pickle).

WHY by name: ``CaffeNet.state_dict()`` is keyed by position (``layers.1.blobs.0``, Caffe's
implicit Split layers counted), which means nothing to a PyTorch user and breaks as soon as a
layer is added. Caffe itself copies weights by layer name, so the state dicts here use it too:

- ``keys="index"`` (the default, one key per blob, nothing guessed): ``<layer>.<blob index>``
  in Caffe's blob order, e.g. ``conv1.0`` (weight), ``conv1.1`` (bias), ``bn_conv1.2``
  (BatchNorm's scale factor).
- ``keys="torch"``: ``<layer>.weight`` / ``<layer>.bias`` where a layer's blobs are a weight and a
  bias (Convolution, Deconvolution, InnerProduct, Embed, Scale, Bias, PReLU); every other blob
  keeps ``<layer>.<blob index>`` (BatchNorm stores running *sums* and their scale factor, not
  PyTorch's running_mean / running_var, so its blobs are not renamed).

Both spellings are read back. A model whose parameter names are not Caffe's layer names comes
in through a mapping file (JSON; see :func:`read_mapping`); ``torchvision-resnet50`` maps a
torchvision-layout ResNet-50 onto ``prototxt/resnet50``. ``.pt`` files are read with
``torch.load(weights_only=True)``: tensors only, no code runs.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from caffe_compat.atomic import atomic_write
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import Layer

FORMAT = "caffe-compat state dict"
KEY_STYLES = ("index", "torch")
MAPPINGS = Path(__file__).parent / "mappings"  # shipped mapping files: <name with _>.json


def blob_names(layer: Layer) -> list[str]:
    """The ``keys="torch"`` suffix of each of a layer's blobs."""
    count = len(layer.blobs)
    kind = layer.param.type
    if kind in ("Convolution", "Deconvolution", "InnerProduct", "Embed"):
        names = ["weight", "bias"]
    elif kind == "Scale":
        names = ["weight", "bias"] if getattr(layer, "learned_scale", True) else ["bias"]
    elif kind == "Bias" and count == 1:
        names = ["bias"]
    elif kind == "PReLU":
        names = ["weight"]
    else:
        names = []
    return [names[i] if i < len(names) else str(i) for i in range(count)]


def named_state_dict(net: CaffeNet, keys: str = "index") -> dict[str, torch.Tensor]:
    """Every blob of every layer (a shared blob under each layer that uses it), by name."""
    if keys not in KEY_STYLES:
        raise CaffeCompatError(f"--keys must be one of {', '.join(KEY_STYLES)}, got {keys!r}")
    state: dict[str, torch.Tensor] = {}
    for step in net.steps:
        suffixes = blob_names(step.layer) if keys == "torch" else [str(i) for i in range(len(step.layer.blobs))]
        for suffix, blob in zip(suffixes, step.layer.blobs):
            state[f"{step.name}.{suffix}"] = blob.detach()
    return state


def _resolve(net: CaffeNet, key: str) -> tuple[str, int] | None:
    """(layer, blob index) for ``<layer>.<index>`` or ``<layer>.<weight|bias>``; layer names may hold dots."""
    layer_name, dot, suffix = key.rpartition(".")
    if not dot:
        return None
    layer = net.layer_by_name(layer_name)
    if layer is None or not len(layer.blobs):
        return None
    if suffix.isdigit():
        index = int(suffix)
    elif suffix in blob_names(layer):
        index = blob_names(layer).index(suffix)
    else:
        return None
    return (layer_name, index) if index < len(layer.blobs) else None


def _fit(array: np.ndarray, target: tuple[int, ...], key: str, where_: str, layer: str, index: int) -> np.ndarray:
    """``array`` shaped as the blob: equal shapes, or Caffe's legacy 4-d form of the same blob."""
    legacy = array.ndim == 4 and len(target) <= 4 and (1,) * (4 - len(target)) + target == array.shape
    if array.shape != target and not legacy:
        raise CaffeCompatError(f"{where_}: '{key}' has shape {array.shape} but layer '{layer}' blob {index} is "
                               f"{target}")
    return array.reshape(target)


def load_named_state_dict(net: CaffeNet, state: Mapping[str, np.ndarray | torch.Tensor], source: str = "<state>",
                          constants: Mapping[str, float] | None = None, allow_missing: bool = False) -> list[str]:
    """Copy a name-keyed state dict into ``net`` (either key style); returns the blobs that
    kept their filler values (only with ``allow_missing``, else they are an error).

    ``constants``: ``<layer>.<index>`` -> a value that fills the whole blob (e.g. BatchNorm's
    scale factor 1 for statistics that are plain means). Unknown keys are an error naming them:
    a silently half-loaded net is how accuracy gets lost.
    """
    values: dict[tuple[str, int], tuple[str, np.ndarray | float]] = {}
    unknown = []
    for key, value in list(state.items()) + list((constants or {}).items()):
        where_blob = _resolve(net, key)
        if where_blob is None:
            unknown.append(key)
            continue
        if where_blob in values:
            raise CaffeCompatError(f"{source}: '{values[where_blob][0]}' and '{key}' both name layer "
                                   f"'{where_blob[0]}' blob {where_blob[1]}")
        values[where_blob] = (key, value)
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise CaffeCompatError(f"{source}: {shown} name(s) no blob of net '{net.name}' (keys are '<layer>.<blob index>' "
                               "or '<layer>.weight' / '.bias'; use --map for other names)")
    missing = [f"{s.name}.{i}" for s in net.steps for i in range(len(s.layer.blobs)) if (s.name, i) not in values]
    if missing and not allow_missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise CaffeCompatError(f"{source}: no value for blob(s) {shown} of net '{net.name}' (--allow-missing keeps "
                               "their filler values)")
    with torch.no_grad():
        for (layer_name, index), (key, value) in values.items():
            blob = net.layer_by_name(layer_name).blobs[index]
            target = tuple(blob.shape)
            if isinstance(value, (int, float)):
                blob.fill_(float(value))
                continue
            array = value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            fitted = _fit(array, target, key, source, layer_name, index)
            blob.copy_(torch.from_numpy(np.array(fitted, np.float32)))
    return missing


# ---------------------------------------------------------------------- files


def write_state(path: str | os.PathLike[str], state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """A .safetensors file, written atomically (values as float32 numpy, no pickle)."""
    from safetensors.numpy import save

    arrays = {key: value.detach().cpu().float().contiguous().numpy() for key, value in state.items()}
    with atomic_write(Path(path)) as handle:
        handle.write(save(arrays, metadata=dict(metadata)))


def read_state(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A state dict from .safetensors or .pt/.pth (``torch.load(weights_only=True)``).

    A checkpoint holding its state dict under ``state_dict`` or ``model`` is unwrapped, and a
    ``module.`` prefix on every key (DataParallel / DDP) is dropped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CaffeCompatError(f"{where(path)}: no such state dict file")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:  # through torch: BF16, F16 and F8 tensors (what PyTorch users save) have no numpy type
            loaded = dict(load_file(path))
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise CaffeCompatError(f"{where(path)}: not a valid safetensors file: {exc}") from None
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle and torch raise many types; weights_only refuses code
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CaffeCompatError(f"{where(path)}: cannot load it with torch.load(weights_only=True) (save "
                                   f"model.state_dict(), not the model): {first}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CaffeCompatError(f"{where(path)}: expected a state dict (names -> tensors)")
    odd = [key for key in loaded if not isinstance(key, str)]
    if odd:
        raise CaffeCompatError(f"{where(path)}: state dict keys must be names (strings), found {len(odd)} that are "
                               f"not, e.g. {odd[0]!r} ({type(odd[0]).__name__})")
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key[len("module."):]: value for key, value in loaded.items()}
    return {key: _to_numpy(value, key, path) for key, value in loaded.items()}


def _to_numpy(value: torch.Tensor, key: str, path: str) -> np.ndarray:
    """Floating tensors of any width (BF16, F16, F8) as float32; others as they are."""
    try:
        return value.detach().float().numpy() if value.is_floating_point() else value.numpy()
    except (TypeError, RuntimeError) as exc:
        raise CaffeCompatError(f"{where(path)}: tensor '{key}' of type {value.dtype} cannot be read as numbers: "
                               f"{exc}") from None


def read_mapping(spec: str) -> dict:
    """A mapping file, or a shipped one by name (``torchvision-resnet50``).

    JSON with ``blobs`` (Caffe key ``<layer>.<blob index>`` -> the state's key), optional
    ``constants`` (Caffe key -> a value filling the blob) and ``ignore`` (glob patterns of state
    keys deliberately left unused, e.g. ``*.num_batches_tracked``).
    """
    shipped = MAPPINGS / f"{spec.replace('-', '_')}.json"
    path = spec if os.path.isfile(spec) else shipped if shipped.is_file() else None
    if path is None:
        names = ", ".join(sorted(p.stem.replace("_", "-") for p in MAPPINGS.glob("*.json")))
        raise CaffeCompatError(f"--map: no file {spec!r} and no shipped mapping of that name (shipped: {names})")
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CaffeCompatError(f"{where(path)}: not a valid mapping file: {exc}") from None
    if not isinstance(mapping, dict) or not isinstance(mapping.get("blobs"), dict):
        raise CaffeCompatError(f"{where(path)}: a mapping file needs a 'blobs' object (Caffe key -> state key)")
    bad = next((f"'blobs' value for {k!r} is {json.dumps(v)[:40]}, not a state key (a string)"
                for k, v in mapping["blobs"].items() if not isinstance(v, str)), None)
    constants, ignore = mapping.get("constants", {}), mapping.get("ignore", [])
    if bad is None and not isinstance(constants, dict):
        bad = "'constants' must be an object (Caffe key -> number)"
    if bad is None:
        bad = next((f"'constants' value for {k!r} is {json.dumps(v)[:40]}, not a finite number"
                    for k, v in constants.items()
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)), None)
    if bad is None and (not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore)):
        bad = "'ignore' must be a list of glob patterns (strings)"
    if bad is not None:
        raise CaffeCompatError(f"{where(path)}: {bad}")
    mapping["_path"] = os.fspath(path)
    return mapping


def apply_mapping(state: Mapping[str, np.ndarray], mapping: dict, source: str) \
        -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """(Caffe-keyed state, constants): every mapped key must exist, every state key must be
    mapped or ignored (a typo in either name is an error, not a filler value)."""
    name = mapping["_path"]
    absent = [theirs for theirs in mapping["blobs"].values() if theirs not in state]
    if absent:
        raise CaffeCompatError(f"{name}: maps {len(absent)} key(s) that {source} does not have: "
                               f"{', '.join(absent[:5])}")
    used = set(mapping["blobs"].values())
    ignore: Sequence[str] = mapping.get("ignore", [])
    unused = [k for k in state if k not in used and not any(fnmatch.fnmatchcase(k, p) for p in ignore)]
    if unused:
        raise CaffeCompatError(f"{source}: {len(unused)} key(s) not in the mapping {name}: {', '.join(unused[:5])}")
    mapped = {ours: state[theirs] for ours, theirs in mapping["blobs"].items()}
    return mapped, {k: float(v) for k, v in mapping.get("constants", {}).items()}


# ---------------------------------------------------------------------- the two commands


def _build(model: str | os.PathLike[str], phase: int) -> CaffeNet:
    from caffe_compat.io.prototxt import read_net

    return CaffeNet(read_net(model), phase=phase)


def export_torch(model: str | os.PathLike[str], weights: str | os.PathLike[str], output: str | os.PathLike[str],
                 keys: str = "index", phase: int = 1) -> str:
    """``export-torch``: the caffemodel's blobs, by layer name, as .safetensors; returns a summary."""
    net = _build(model, phase)
    report = net.copy_from(weights)
    state = named_state_dict(net, keys)
    if not state:
        raise CaffeCompatError(f"net '{net.name}' ({where(model)}) has no learned blobs to export")
    write_state(output, state, {"format": FORMAT, "keys": keys, "net": net.name,
                                "weights": os.path.basename(os.fspath(weights))})
    line = f"wrote {output}: {len(state)} tensors ({keys} keys) from {report.summary()}"
    return line


def import_torch(model: str | os.PathLike[str], state_path: str | os.PathLike[str], output: str | os.PathLike[str],
                 mapping: str | None = None, template: str | os.PathLike[str] | None = None,
                 allow_missing: bool = False, phase: int = 1) -> str:
    """``import-torch``: a .caffemodel from a name-keyed (or mapped) state dict; returns a summary.

    Without ``template`` the file is Caffe's Net::ToProto of ``model`` (what ``net.save()``
    writes); with it, the template caffemodel's own layout with the blobs replaced, so a
    caffemodel -> safetensors -> caffemodel round trip gives the same bytes.
    """
    from caffe_compat.io.caffemodel import caffemodel_dialect, load_caffemodel, write_caffemodel

    source = os.fspath(state_path)
    state = read_state(state_path)
    constants: dict[str, float] = {}
    if mapping is not None:
        state, constants = apply_mapping(state, read_mapping(mapping), source)
    net = _build(model, phase)
    kept = load_named_state_dict(net, state, source, constants, allow_missing)
    if template is None:
        write_caffemodel(output, net.to_net_parameter())
    else:
        skeleton, stored = load_caffemodel(template, upgrade=False)
        if len(skeleton.layers):
            raise CaffeCompatError(f"{where(template)}: a V1 caffemodel cannot be a template; upgrade it first "
                                   "(caffe-compat upgrade-net-proto-binary)")
        blobs = dict(stored)
        for step in net.steps:
            if len(step.layer.blobs):
                if step.name not in blobs:
                    raise CaffeCompatError(f"{where(template)}: has no layer '{step.name}' to hold its blobs")
                blobs[step.name] = [b.detach().cpu().float().numpy() for b in step.layer.blobs]
        write_caffemodel(output, skeleton, blobs, dialect=caffemodel_dialect(template))
    summary = f"wrote {output}: {sum(len(s.layer.blobs) for s in net.steps) - len(kept)} blobs from {source}"
    return summary + (f"; kept filler values: {', '.join(kept)}" if kept else "")
