"""Per-blob dumps and comparisons, the tool converter users reach for first.

``forward_blobs`` runs one forward pass and returns the named (or all) blobs as numpy arrays,
ready for ``save_blobs`` (an .npz keyed by Caffe's blob names, split copies included);
``forward_backward_blobs`` adds Caffe's backward diffs (``"<blob>"`` and ``"<layer>/<i>"``).
Users dump the same from their own Caffe (pycaffe: ``{k: v.data for k, v in net.blobs.items()}``,
diffs from ``v.diff`` and ``net.params``) and ``compare_blob_files`` reports, per common blob,
the shapes, the largest absolute error and the largest error relative to the reference's
magnitude (the second file is the reference).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from caffe_compat.atomic import atomic_write
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.arrays import is_npz, read_npy, read_npz
from caffe_compat.proto import caffe_pb2

BlobSelection = str | Sequence[str]  # "outputs", "all" or blob names


def parse_input_specs(specs: Sequence[str]) -> dict[str, np.ndarray]:
    """``NAME=FILE.npy`` pairs -> arrays; errors name the offending argument or file."""
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise CaffeCompatError(f"--input '{spec}': expected NAME=FILE.npy")
        if name in inputs:
            raise CaffeCompatError(f"--input '{spec}': blob '{name}' is given twice")
        if is_npz(path):
            raise CaffeCompatError(f"{path}: input '{name}' needs a single .npy array, not an .npz archive")
        try:
            inputs[name] = read_npy(path)  # header checked first: no object arrays, no petabyte claims
        except CaffeCompatError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            raise CaffeCompatError(f"{path}: cannot read a .npy array for input '{name}': {reason}") from None
    return inputs


def with_input_shapes(net_param, inputs: Mapping[str, np.ndarray]):
    """A copy of ``net_param`` whose Input and MemoryData layers declare the shapes of the given
    arrays, so a dump can use another batch size than the prototxt (as pycaffe's
    ``blob.reshape`` / MemoryData's ``set_batch_size`` would)."""
    patched = caffe_pb2.NetParameter()
    patched.CopyFrom(net_param)
    for layer in patched.layer:
        if layer.type == "MemoryData" and layer.top and np.ndim(inputs.get(layer.top[0])) == 4:
            p = layer.memory_data_param
            p.batch_size, p.channels, p.height, p.width = (int(d) for d in np.shape(inputs[layer.top[0]]))
        if layer.type != "Input":
            continue
        shapes = layer.input_param.shape
        if len(shapes) == 1:  # one shape shared by every top -> one per top
            for _ in layer.top[1:]:
                shapes.add().CopyFrom(shapes[0])
        for top, shape in zip(layer.top, shapes):
            if top in inputs:
                del shape.dim[:]
                shape.dim.extend(int(d) for d in np.shape(inputs[top]))
    return patched


def load_net_for_inputs(model: str | os.PathLike[str], inputs: Mapping[str, np.ndarray], phase: int,
                        weights: str | os.PathLike[str] | None = None, stages: Sequence[str] = (),
                        level: int = 0):
    """The net of a prototxt, shaped for ``inputs`` (see :func:`with_input_shapes`), with
    ``weights`` copied in; returns ``(net, weights report or None)``."""
    from caffe_compat.io.prototxt import read_net
    from caffe_compat.net.builder import CaffeNet

    net = CaffeNet(with_input_shapes(read_net(model), inputs), phase=phase, stages=stages, level=level)
    return net, (net.copy_from(weights) if weights else None)


def _numpy(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.detach().float().cpu().numpy() for name, value in tensors.items()}


def _feeds(inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Inputs as float32 tensors, like Caffe's blobs (labels included)."""
    return {name: torch.as_tensor(np.asarray(value), dtype=torch.float32) for name, value in inputs.items()}


def _select(net, run, blobs: BlobSelection) -> dict[str, torch.Tensor]:
    """The blobs ``CaffeNet.forward`` would return for this selection, from a ``NetRun``."""
    if blobs == "all":
        names = list(net.blob_shapes)
    elif blobs == "outputs":
        names = list(net.output_names) + [n for n, _, _ in run.losses if n not in net.output_names]
    else:
        names = list(blobs)
        missing = [name for name in names if name not in run.blobs]
        if missing:
            raise CaffeCompatError(
                f"net '{net.name}' has no blob(s) {', '.join(map(repr, missing))}; "
                f"blobs are {', '.join(net.blob_shapes)}"
            )
    return {name: run.blobs[name] for name in names}


def forward_blobs(
    net, inputs: Mapping[str, np.ndarray], blobs: BlobSelection = "outputs"
) -> dict[str, np.ndarray]:
    """One forward pass of a built :class:`~caffe_compat.net.builder.CaffeNet`; the selected
    blobs (after in-place layers, like pycaffe's ``net.blobs``) as float32 numpy arrays."""
    with torch.no_grad():
        return _numpy(_select(net, net.run(_feeds(inputs)), blobs))


def forward_backward_blobs(
    net, inputs: Mapping[str, np.ndarray], blobs: BlobSelection = "outputs",
    top_diffs: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """pycaffe's ``net.forward(); net.backward()``: the selected blobs, and the diffs keyed like
    Caffe dumps them: ``"<blob>"`` for every blob (an in-place blob's diff is w.r.t. the input of
    its first in-place layer) and ``"<layer>/<i>"`` for every learnable blob.

    Loss tops start from their loss_weight; ``top_diffs`` gives the diffs of other outputs
    (Caffe leaves them 0). Inputs get diffs only with ``force_backward``, as in Caffe.
    """
    unknown = sorted(set(top_diffs or {}) - set(net.blob_shapes))
    if unknown:
        raise CaffeCompatError(f"top diff(s) for unknown blob(s) {', '.join(map(repr, unknown))}")
    feeds = _feeds(inputs)
    if net.force_backward:
        feeds = {k: v.detach().requires_grad_(True) for k, v in feeds.items()}
    for param in net.parameters():
        param.grad = None
    run = net.run(feeds, record=True)
    for value in run.first.values():
        if value.requires_grad and not value.is_leaf:
            value.retain_grad()
    terms = [weight * value.float().sum() for _, weight, value in run.losses]
    for blob, diff in (top_diffs or {}).items():
        terms.append((run.blobs[blob].float() * torch.as_tensor(diff, dtype=torch.float32)).sum())
    objective = torch.stack(terms).sum() if terms else None
    if objective is not None and objective.requires_grad:
        objective.backward()
    dumped = _select(net, run, blobs)
    diffs = {
        blob: value.grad if value.grad is not None else torch.zeros_like(value)
        for blob, value in run.first.items() if blob in net.blob_shapes
    }
    for step in net.steps:
        for i, param in enumerate(step.layer.blobs):
            diffs[f"{step.name}/{i}"] = param.grad if param.grad is not None else torch.zeros_like(param)
    return _numpy(dumped), _numpy(diffs)


def save_blobs(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed .npz, atomically."""
    try:
        with atomic_write(path, "wb") as handle:
            np.savez(handle, **arrays)
    except OSError as exc:
        raise CaffeCompatError(f"{os.fspath(path)}: cannot write: {exc.strerror or exc}") from None


def load_blobs(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Blob name -> array from an .npz; a lone .npy has no blob names, so it is refused clearly."""
    if not os.path.exists(path):
        raise CaffeCompatError(f"{os.fspath(path)}: not a readable .npz of blobs: no such file")
    if not is_npz(path):
        try:
            read_npy(path)
        except CaffeCompatError:
            raise CaffeCompatError(f"{os.fspath(path)}: not a readable .npz of blobs: not an .npz file") from None
        raise CaffeCompatError(
            f"{os.fspath(path)}: is a single .npy array without a blob name; compare needs an .npz "
            "(e.g. np.savez('ref.npz', prob=np.load('x.npy')))")
    return read_npz(path)  # headers checked first: no object arrays, no petabyte claims


@dataclass(frozen=True)
class BlobDiff:
    """One blob present in both dumps. ``max_rel`` is ``max_abs`` over the reference's
    largest magnitude; it passes when ``max_abs <= max(atol, rtol * that magnitude)``."""

    name: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    max_abs: float
    max_rel: float
    passed: bool


@dataclass
class Comparison:
    rows: list[BlobDiff] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """All common blobs within tolerance, and at least one blob compared."""
        return bool(self.rows) and all(row.passed for row in self.rows)

    @property
    def failed(self) -> list[BlobDiff]:
        return [row for row in self.rows if not row.passed]


def _blob_diff(name: str, a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> BlobDiff:
    shape_a, shape_b = tuple(a.shape), tuple(b.shape)
    # Shapes that differ only by singleton axes ((1,) vs () for a loss) hold the same values.
    if tuple(d for d in shape_a if d != 1) != tuple(d for d in shape_b if d != 1):
        return BlobDiff(name, shape_a, shape_b, math.inf, math.inf, False)
    a64 = np.asarray(a, np.float64).reshape(shape_b)
    b64 = np.asarray(b, np.float64)
    if b64.size == 0:
        return BlobDiff(name, shape_a, shape_b, 0.0, 0.0, True)
    same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))  # equal infinities and NaNs match
    with np.errstate(invalid="ignore"):
        err = np.where(same, 0.0, np.abs(a64 - b64))
    max_abs = float(np.nan_to_num(err, nan=math.inf).max())
    scale = float(np.abs(b64[np.isfinite(b64)]).max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return BlobDiff(name, shape_a, shape_b, max_abs, max_rel, max_abs <= max(atol, rtol * scale))


def compare_blobs(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], atol: float = 1e-5,
                  rtol: float = 1e-5) -> Comparison:
    """Compare every blob the two dumps share (``b`` is the reference), in ``b``'s order."""
    result = Comparison(only_a=[n for n in a if n not in b], only_b=[n for n in b if n not in a])
    result.rows = [_blob_diff(name, a[name], b[name], atol, rtol) for name in b if name in a]
    return result


def compare_blob_files(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str], atol: float = 1e-5,
                       rtol: float = 1e-5) -> Comparison:
    return compare_blobs(load_blobs(path_a), load_blobs(path_b), atol, rtol)


def format_comparison(result: Comparison, atol: float, rtol: float) -> str:
    """A table: blob, shapes, max abs, max rel, OK/FAIL; then blobs in one file only and a verdict."""
    width = max([len("blob")] + [len(row.name) for row in result.rows])
    lines = [f"{'blob':<{width}}  {'shape':<18}  {'max abs':>10}  {'max rel':>10}  result"]
    for row in result.rows:
        shape = str(row.shape_b) if row.shape_a == row.shape_b else f"{row.shape_a} vs {row.shape_b}"
        verdict = "ok" if row.passed else "FAIL"
        lines.append(f"{row.name:<{width}}  {shape:<18}  {row.max_abs:>10.3g}  {row.max_rel:>10.3g}  {verdict}")
    if result.only_a:
        lines.append(f"only in A ({len(result.only_a)}): {', '.join(result.only_a)}")
    if result.only_b:
        lines.append(f"only in B ({len(result.only_b)}): {', '.join(result.only_b)}")
    if not result.rows:
        lines.append("FAIL: the two files share no blob")
    elif result.passed:
        lines.append(f"PASS: {len(result.rows)} blob(s) within atol {atol:g} / rtol {rtol:g}")
    else:
        names = ", ".join(row.name for row in result.failed)
        count = f"{len(result.failed)} of {len(result.rows)} blob(s)"
        lines.append(f"FAIL: {count} past atol {atol:g} / rtol {rtol:g}: {names}")
        # Dumps list blobs in creation order, so this is where the two nets start to diverge.
        lines.append(f"first mismatch in B's order: {result.failed[0].name}")
    return "\n".join(lines)
