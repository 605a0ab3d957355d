"""The zoo: real deploy prototxts from their repositories, each with seeded random weights,
through inspect / build / export-onnx (dynamic batch, and --fold-bn) / onnxruntime at batch 1
and 3 / OpenCV's own Caffe importer, as one Markdown table.

    .venv/bin/python benchmarks/zoo.py /tmp/zoo --out docs/zoo.md

The folder holds one sub-folder per repository, named ``owner+name`` (with an optional
``COMMIT`` file holding the commit the prototxts were read at), each with deploy prototxts
(any names). Nothing of it is committed: fetch the repositories and copy their prototxts there.

Weights: He-normal weights, small biases, BatchNorm / Scale / BN statistics drawn around the
identity (seed ``--seed``), so activations keep their scale through deep nets. Agreement is the
largest |difference| over every net output divided by the largest |value| of our output
(``rel``); a cell passes at rel <= 1e-4. A final Softmax is judged by its logits (random
weights make deep nets' logits huge, and a softmax of huge logits turns float32 rounding into
any difference at all). OpenCV runs in Debian's /usr/bin/python3 (see
benchmarks/opencv_oracle.py) at batch 1; its output layers are matched to our blobs by the
layers' first tops. Nets with more than ``--big`` million weights skip the batch-3 run.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from opencv_oracle import available as opencv_available  # noqa: E402
from opencv_oracle import opencv_forward  # noqa: E402
from ssd_check import canonical, compare  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from caffe_compat.atomic import atomic_write_bytes  # noqa: E402
from caffe_compat.cli import main as cli_main  # noqa: E402
from caffe_compat.errors import CaffeCompatError  # noqa: E402
from caffe_compat.io.caffemodel import write_caffemodel  # noqa: E402
from caffe_compat.io.prototxt import read_net, to_text  # noqa: E402
from caffe_compat.net.builder import CaffeNet  # noqa: E402
from caffe_compat.net.registry import TEST  # noqa: E402
from caffe_compat.onnx.export import export_onnx, net_to_onnx  # noqa: E402
from caffe_compat.proto import caffe_pb2, dialects  # noqa: E402

TOL = 1e-4
#: ``--out`` keeps its text up to this line and replaces what follows with the table.
MARKER = "<!-- benchmarks/zoo.py writes below this line -->"
#: Layer types of the forks (caffe_compat.proto.dialects), shown in the table's layers column.
FORK_TYPES = {t for d in dialects.DIALECTS.values() for t in d.layer_types}


@dataclass
class Row:
    net: str
    repository: str
    layers: str = ""
    cells: dict[str, str] = field(default_factory=dict)
    seconds: str = ""


def at_batch(net_param: caffe_pb2.NetParameter, batch: int) -> caffe_pb2.NetParameter:
    """A copy of the net with axis 0 of every declared input set to ``batch``."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    for shape in out.input_shape:
        shape.dim[0] = batch
    for i in range(0, len(out.input_dim), 4):
        out.input_dim[i] = batch
    for layer in out.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    return out


def sized(param: caffe_pb2.NetParameter, size: tuple[int, int]) -> bool:
    """Give every 4-D input declared with a 1 x 1 image (OpenPose's deploys: the tool sets the
    size at run time; "Original: 368" in their comments) the image size ``size``; whether any was."""
    changed = False
    shapes = [*param.input_shape, *(s for layer in param.layer if layer.type == "Input" for s in layer.input_param.shape)]
    for shape in shapes:
        if len(shape.dim) == 4 and shape.dim[2] == shape.dim[3] == 1:
            shape.dim[2], shape.dim[3] = size
            changed = True
    for i in range(0, len(param.input_dim) - 3, 4):
        if param.input_dim[i + 2] == param.input_dim[i + 3] == 1:
            param.input_dim[i + 2], param.input_dim[i + 3] = size
            changed = True
    return changed


@torch.no_grad()
def randomise(net: CaffeNet, seed: int) -> None:
    """Seeded weights that keep activations at their scale (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(blob, low, high):
        blob.copy_(torch.rand(blob.shape, generator=gen) * (high - low) + low)

    for step in net.steps:
        blobs, kind = step.layer.blobs, step.type
        if not len(blobs):
            continue
        if kind == "BatchNorm":
            blobs[0].copy_(torch.randn(blobs[0].shape, generator=gen) * 0.1)
            uniform(blobs[1], 0.5, 1.5)
            blobs[2].fill_(1.0)
        elif kind == "BN" and len(blobs) == 4:  # PSPNet's BN: slope, bias, moving mean, variance
            uniform(blobs[0], 0.5, 1.5)
            blobs[1].copy_(torch.randn(blobs[1].shape, generator=gen) * 0.1)
            blobs[2].copy_(torch.randn(blobs[2].shape, generator=gen) * 0.1)
            uniform(blobs[3], 0.5, 1.5)
        elif kind in ("Scale", "BN"):
            uniform(blobs[0], 0.5, 1.5)
            for blob in list(blobs)[1:]:
                blob.copy_(torch.randn(blob.shape, generator=gen) * 0.1)
        elif kind == "PReLU":
            uniform(blobs[0], 0.0, 0.5)
        else:
            for blob in blobs:
                if blob.dim() >= 2:
                    fan_in = max(1, blob[0].numel())
                    blob.copy_(torch.randn(blob.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                else:
                    blob.copy_(torch.randn(blob.shape, generator=gen) * 0.1)


#: Layer types whose weights :func:`calibrate` may scale.
WEIGHTED = {"Convolution", "Deconvolution", "InnerProduct", "DepthwiseConvolution", "ConvolutionDepthwise"}
#: Saturating nonlinearities: a trained net keeps their inputs near the linear part.
GATES = {"Sigmoid", "TanH"}
#: py-faster-rcnn's proposal layer (python_param module, layer), native in caffe_compat.
PROPOSAL = ("rpn.proposal_layer", "ProposalLayer")
#: The standard deviations of a trained RPN's fg/bg logits and box deltas (the proposal
#: layer's first two bottoms).
RPN_STD = (2.0, 0.2)


@torch.no_grad()
def calibrate(net: CaffeNet, seed: int) -> None:
    """Each weighted layer whose top feeds a Sigmoid or TanH divided by its output's standard
    deviation on a seeded N(0, 1) batch (LSUV, Mishkin & Matas 2016, for gates only), in net order.

    Random He weights let activations grow through deep residual nets (SE-ResNet-50: 22 at the
    first block, 2,500 at the last), so an SE block's gate sees pre-sigmoid values in the
    thousands: a step function, where a float32 rounding difference flips the gate and no two
    runtimes agree to 1e-4 however right the conversion. A trained gate works near its linear
    part; so does a calibrated one. Only gates: scaling every layer to unit output (with
    BatchNorm statistics from the batch) was tried and made deep plain ResNets (152 layers),
    max-unpooling (ENet) and SSD's thresholds sensitive to rounding instead (docs/zoo.md)."""
    gates = {step.bottoms[0] for step in net.steps if step.type in GATES}
    rng = np.random.default_rng(seed + 1000)
    feeds = {name: torch.from_numpy(feed(net, name, rng)) for name in net.input_names}

    def unit_scale(module, inputs, output):
        tops = output if isinstance(output, tuple) else (output,)
        std = float(tops[0].double().std())
        if not np.isfinite(std) or std == 0.0:
            return None
        for blob in module.blobs:
            blob.div_(std)
        scaled = tuple(top / std for top in tops)
        return scaled if isinstance(output, tuple) else scaled[0]

    hooks = [step.layer.register_forward_hook(unit_scale) for step in net.steps
             if step.type in WEIGHTED and step.tops[0] in gates and len(step.layer.blobs)]
    try:
        if hooks:
            net.run(feeds, record=True, keep=set())  # record: every layer on its own, hooks included
    finally:
        for hook in hooks:
            hook.remove()
    # RPN heads: random He weights give box deltas in the thousands (every proposal the whole
    # image, one roi after NMS: nothing checked) and saturated scores; a trained RPN's are small.
    for step in proposals(net):
        heads = [source_convolution(net, blob) for blob in step.bottoms[:2]]
        out = net.forward(feeds, blobs=[head.tops[0] for head in heads])  # parallel heads: one pass
        for head, std in zip(heads, RPN_STD):
            for weight in head.layer.blobs:
                weight.mul_(std / float(out[head.tops[0]].double().std()))


def source_convolution(net: CaffeNet, blob: str):
    """The Convolution step that ``blob`` comes from through one-bottom layers (Reshape, Softmax)."""
    while True:
        step = [s for s in net.steps if blob in s.tops][-1]
        if step.type == "Convolution":
            return step
        if len(step.bottoms) != 1:
            raise CaffeCompatError(f"'{blob}' does not come from one convolution")
        blob = step.bottoms[0]


def rel(got: dict[str, np.ndarray], want: dict[str, np.ndarray], names: list[str] | None = None) -> float:
    worst = 0.0
    for name in names if names is not None else want:
        value = want[name]
        scale = max(float(np.max(np.abs(value), initial=0.0)), 1e-12)
        worst = max(worst, float(np.max(np.abs(got[name] - value), initial=0.0)) / scale)
    return worst


def mark(value: float) -> str:
    return f"{'✓' if value <= TOL else '✗'} {value:.1e}"


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(exc, CaffeCompatError):
        text = f"{type(exc).__name__}: {text}"
    text = text.split("Supported: ")[0].rstrip(". ")
    return "✗ " + text.replace("|", "/")[:150]


def feed(net: CaffeNet, name: str, rng: np.random.Generator) -> np.ndarray:
    """A seeded value for input ``name``: N(0, 1), except two inputs of detection nets. Faster
    R-CNN's ``im_info`` (N, 3) gets [height, width, 1.0] of the first 4-axis input for every
    image. An (R, 5) input named like ``rois`` gets valid ROIs [batch_index, x1, y1, x2, y2]:
    index below the first 4-axis input's batch, x1 <= x2 < W and y1 <= y2 < H of that input in
    image pixels (its size over the ``spatial_scale`` of the layer pooling the ROIs; detection
    nets' second halves)."""
    shape = net.blob_shapes[name]
    images = [net.blob_shapes[n] for n in net.input_names if len(net.blob_shapes[n]) == 4]
    if name == "im_info" and len(shape) == 2 and shape[1] == 3 and images:
        return np.tile(np.array([*images[0][2:], 1.0], np.float32), (shape[0], 1))
    if "roi" not in name.lower() or len(shape) != 2 or shape[1] != 5 or not images:
        return rng.standard_normal(shape).astype(np.float32)
    readers = {name} | {t for s in net.steps if s.type == "Split" and s.bottoms[0] == name for t in s.tops}
    scales = [s.layer.spatial_scale for s in net.steps if readers & set(s.bottoms) and hasattr(s.layer, "spatial_scale")]
    batch, _, height, width = images[0]
    height, width = height / (scales or [1.0])[0], width / (scales or [1.0])[0]
    x = np.sort(rng.uniform(0, width - 1, (shape[0], 2)), axis=1)
    y = np.sort(rng.uniform(0, height - 1, (shape[0], 2)), axis=1)
    index = rng.integers(0, batch, shape[0])
    return np.stack([index, x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1).astype(np.float32)


def ours_at(param: caffe_pb2.NetParameter, weights: Path, batch: int, names: list[str], seed: int,
            given: dict[str, np.ndarray] | None = None):
    """Our outputs at ``batch`` on a seeded input (see :func:`feed`), and that input. ``given``:
    the tops of the proposal layers as another runtime computed them, used instead of ours."""
    net = CaffeNet(at_batch(param, batch), phase=TEST)
    net.copy_from(weights)
    feeds = feeds_at(net, batch, seed)

    def theirs(module, inputs, output):
        return tuple(torch.from_numpy(given[top]) for top in module_tops[module])

    module_tops = {step.layer: step.tops for step in proposals(net)}
    hooks = [layer.register_forward_hook(theirs) for layer in module_tops] if given else []
    try:
        with torch.no_grad():
            out = net({k: torch.from_numpy(v) for k, v in feeds.items()}, blobs=names)
    finally:
        for hook in hooks:
            hook.remove()
    return {k: v.float().numpy() for k, v in out.items()}, feeds


def feeds_at(net: CaffeNet, batch: int, seed: int) -> dict[str, np.ndarray]:
    """The seeded input of every run at ``batch`` (see :func:`feed`)."""
    rng = np.random.default_rng(seed + batch)
    return {name: feed(net, name, rng) for name in net.input_names}


def origin(net: CaffeNet, blob: str) -> str:
    """The blob that ``blob`` is a copy of through Caffe's implicit Split layers (an FPN net's
    proposal layers read ``im_info`` through them): the name a graph output or feed has."""
    splits = {top: step.bottoms[0] for step in net.steps if step.type == "Split" for top in step.tops}
    while blob in splits:
        blob = splits[blob]
    return blob


def proposals(net: CaffeNet) -> list:
    """The steps of py-faster-rcnn's ProposalLayer (native, caffe_compat.net.layers.python_native)."""
    return [step for step in net.steps if step.type == "Python"
            and (step.layer.param.python_param.module, step.layer.param.python_param.layer) == PROPOSAL]


@torch.no_grad()
def agreement(param, weights: Path, model, batch: int, names: list[str], checked: list[str], seed: int,
              plain: tuple[dict, dict] | None = None) -> str:
    """onnxruntime against us on one seeded batch, as a cell. A net with proposal layers (top-k
    and NMS: a 1e-6 difference upstream may swap two near-equal scores, and so whole boxes) is
    checked in two parts: each proposal layer of ours run on onnxruntime's own inputs gives
    onnxruntime's rois, and the whole net of ours run with onnxruntime's rois gives onnxruntime's
    outputs (every blob continuous in its inputs then)."""
    net = CaffeNet(at_batch(param, batch), phase=TEST)
    steps = proposals(net)
    if not steps:
        want, feeds = plain or ours_at(param, weights, batch, names, seed)
        return mark(rel(run_onnx(model, feeds), want, checked))
    net.copy_from(weights)
    feeds = feeds_at(net, batch, seed)
    got = run_onnx(model, feeds)
    worst = 0.0
    for step in steps:
        bottoms = [torch.from_numpy(got[b] if b in got else feeds[b]) for b in (origin(net, b) for b in step.bottoms)]
        mine = {top: value.numpy() for top, value in zip(step.tops, step.layer(*bottoms))}
        worst = max(worst, rel(mine, {top: got[top] for top in step.tops}))
    given = {top: got[top] for step in steps for top in step.tops}
    inputs = [b for step in steps for b in (origin(net, b) for b in step.bottoms[:2]) if b not in names]
    want, _ = ours_at(param, weights, batch, names + inputs, seed, given=given)
    worst = max(worst, rel(got, want, checked + inputs))
    rois = sum(len(given[step.tops[0]]) for step in steps)
    return mark(worst) + f" (proposals on onnxruntime's inputs, {rois} rois)"


def with_outputs(param: caffe_pb2.NetParameter, weights: Path, extra: list[str], fold_bn: bool):
    """The dynamic-batch export of the net with ``extra`` blobs as graph outputs as well."""
    net = CaffeNet(param, phase=TEST)
    net.copy_from(weights)
    return net_to_onnx(net, dynamic_batch=True, extra_outputs=extra, fold_bn=fold_bn)[0]


def run_onnx(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def one_net(path: Path, repository: str, work: Path, args) -> Row:
    row = Row(path.stem, repository)
    cells = row.cells
    said = CliRunner().invoke(cli_main, ["inspect", str(path)])
    if said.exit_code != 0:
        cells["inspect"] = "✗ " + said.output.strip().splitlines()[-1].replace("caffe-compat: error: ", "")[:150]
        return row
    cells["inspect"] = "✓"
    param = read_net(path)
    if getattr(args, "size", None) and sized(param, args.size):
        path = work / path.name  # the rest of the row runs on the sized copy
        path.write_text(to_text(param))
        row.layers = f"at {args.size[0]}x{args.size[1]}: "
    types = Counter(layer.type for layer in param.layer)
    forks = sorted(t for t in types if t in FORK_TYPES)
    row.layers += f"{len(param.layer)}" + (f" ({', '.join(forks)})" if forks else "")
    weights = work / f"{path.stem}.caffemodel"
    try:
        torch.manual_seed(args.seed)
        net = CaffeNet(param, phase=TEST)
        randomise(net, args.seed)
        if args.weights == "calibrated":
            calibrate(net, args.seed)
        write_caffemodel(weights, net.to_net_parameter())
        big = sum(b.numel() for s in net.steps for b in s.layer.blobs) > args.big * 1e6
        cells["build"] = "✓"
    except Exception as exc:
        cells["build"] = short(exc)
        return row
    try:
        start = time.perf_counter()
        result = export_onnx(path, weights, work / f"{path.stem}.onnx", batch="dynamic")
        row.seconds = f"{time.perf_counter() - start:.1f}"
        cells["export"] = "✓"
    except Exception as exc:
        cells["export"] = short(exc)
        return row
    # Random weights saturate a deep net's final Softmax (one-hot in every runtime): compare the
    # logits under it too, exported as extra graph outputs of the same graph.
    outputs = [o.name for o in result.model.graph.output]
    final_softmax = [s for s in net.steps if s.type == "Softmax" and s.tops[0] in outputs]
    logits = [s.bottoms[0] for s in final_softmax]
    names = outputs + [b for b in logits if b not in outputs]
    # a softmax of huge logits amplifies float32 rounding without bound: judge it by its logits
    checked = [n for n in outputs if n not in {s.tops[0] for s in final_softmax}] + logits
    # proposal layers: their inputs and rois as graph outputs too (see agreement)
    extra = logits + [b for s in proposals(net) for b in [*(origin(net, b) for b in s.bottoms[:2]), *s.tops] if b not in outputs]
    model = with_outputs(param, weights, extra, fold_bn=False) if extra else result.model
    want_1, feeds_1 = ours_at(param, weights, 1, names, args.seed)
    for batch in (1, 3):
        if batch == 3 and big:
            cells["ort3"] = f"skipped (> {args.big:g} M weights)"
            continue
        if batch == 3 and proposals(net):
            cells["ort3"] = "skipped (batch 1 only, as py-faster-rcnn's ProposalLayer)"
            continue
        try:
            plain = (want_1, feeds_1) if batch == 1 else None
            cells[f"ort{batch}"] = agreement(param, weights, model, batch, names, checked, args.seed, plain)
        except Exception as exc:
            cells[f"ort{batch}"] = short(exc)
    try:
        folded = (with_outputs(param, weights, extra, fold_bn=True) if extra else
                  export_onnx(path, weights, work / f"{path.stem}.fold.onnx", batch="dynamic", fold_bn=True).model)
        cells["fold"] = agreement(param, weights, folded, 1, names, checked, args.seed, (want_1, feeds_1))
    except Exception as exc:
        cells["fold"] = short(exc)
    batch_1 = work / f"{path.stem}.b1.prototxt"
    batch_1.write_text(to_text(at_batch(param, 1)))
    if args.opencv:
        for_cv, note = for_opencv(at_batch(param, 1))
        cv_prototxt = work / f"{path.stem}.b1.opencv.prototxt"
        cv_prototxt.write_text(to_text(for_cv))
        cells["opencv"] = opencv_cell(param, weights, {n: want_1[n] for n in checked}, feeds_1, cv_prototxt) + note
    if getattr(args, "caffe2onnx", None):
        net_outputs = {name: want_1[name] for name in outputs}  # caffe2onnx exposes no logits
        cells["caffe2onnx"] = caffe2onnx_cell(args.caffe2onnx, batch_1, weights, net_outputs, feeds_1, work)
    return row


def for_opencv(param: caffe_pb2.NetParameter) -> tuple[caffe_pb2.NetParameter, str]:
    """The net as OpenCV 4.6 must be given it to compute the fork's function, and a note for the
    cell. OpenCV's importer turns SENet's ``Axpy`` (top = a * bottom[1] + bottom[2],
    hujie-frank/SENet axpy_layer.cpp) into Scale(bottom[2], a) + Eltwise(bottom[1]), i.e.
    a * bottom[2] + bottom[1]: swapping the two bottoms undoes that, so OpenCV checks the rest of
    the net instead of disagreeing at the first Axpy."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    swapped = 0
    for layer in out.layer:
        if layer.type == "Axpy" and len(layer.bottom) == 3:
            layer.bottom[1], layer.bottom[2] = layer.bottom[2], layer.bottom[1]
            swapped += 1
    return out, f" (Axpy bottoms swapped for OpenCV, {swapped}x)" if swapped else ""


def caffe2onnx_cell(python: str, prototxt: Path, weights: Path, want, feeds, work: Path) -> str:
    """caffe2onnx 2.0.1 (its own Python 3.7 venv, see bench_caffe2onnx.py) at batch 1, run by
    onnxruntime and compared with our outputs the way bench_caffe2onnx.py does."""
    import bench_caffe2onnx

    out = work / f"{prototxt.stem}.caffe2onnx.onnx"
    outcome = bench_caffe2onnx.convert(python, "caffe2onnx", prototxt, weights, out, work)
    bench_caffe2onnx.evaluate(outcome, out, feeds, want)
    text = outcome.status + (f": {outcome.detail}" if outcome.detail else "")
    return ("✓ " if outcome.status == "matches" else "✗ ") + text.replace("|", "/")[:140]


def opencv_cell(param, weights: Path, want: dict[str, np.ndarray], feeds, prototxt: Path) -> str:
    """OpenCV on the batch-1 ``prototxt`` against our outputs (its output layers matched by
    their first tops)."""
    writers = {top: layer.name for layer in param.layer for top in layer.top}  # last writer wins
    extra = [writers[name] for name in want if name in writers]
    got, error = opencv_forward(prototxt, weights, feeds, extra_layers=extra)
    if error:
        return "✗ OpenCV: " + error.replace("|", "/")[:140]
    names = {layer: blob for blob, layer in writers.items() if blob in want}
    tops = {layer.name: layer.top[0] for layer in param.layer if layer.top}
    matched = {names.get(name, tops.get(name, name)): value for name, value in got.items()}
    common = [name for name in want if name in matched]
    if not common:
        return f"✗ no common output (OpenCV: {', '.join(got)})"
    pairs = {}
    detections = {top for layer in param.layer if layer.type == "DetectionOutput" for top in layer.top}
    for name in common:
        value = matched[name]
        if name in detections:  # OpenCV sorts an image's rows by score and pads them: compare as sets
            verdict = compare(canonical(value), canonical(want[name]))
            if verdict != "same":
                return f"✗ {name}: {verdict}"
            continue
        if value.size != want[name].size:
            return f"✗ {name}: OpenCV shape {value.shape}, ours {want[name].shape}"
        pairs[name] = value.reshape(want[name].shape)
    if not pairs:
        return f"✓ same detections ({len(canonical(want[common[0]]))} rows)"
    return mark(rel(pairs, {name: want[name] for name in pairs}))


COLUMNS = [("inspect", "inspect"), ("build", "build"), ("export", "export (dynamic batch)"),
           ("ort1", "onnxruntime b1"), ("ort3", "onnxruntime b3"), ("fold", "--fold-bn b1"),
           ("opencv", "OpenCV 4.6 b1")]


def table(rows: list[Row], args, opencv_version: str | None, commands: list[str] = ()) -> str:
    """The Markdown table of ``rows``, after the commands that made them (earlier runs' commands
    first when ``--update`` kept their rows)."""
    columns = COLUMNS + ([("caffe2onnx", "caffe2onnx 2.0.1 b1")] if any("caffe2onnx" in r.cells for r in rows) else [])
    ok = [r for r in rows if passes(r)]
    per_repo = Counter(r.repository.split(" @")[0] for r in rows)
    ok_repo = Counter(r.repository.split(" @")[0] for r in ok)
    lines = [
        "## The zoo: real deploy nets with seeded random weights",
        "",
        f"Machine: 2-core shared dev box, no GPU; date: {datetime.date(2026, 12, 7).isoformat()}; seed {args.seed}; "
        f"OpenCV: {opencv_version or 'not available'} (Debian python3-opencv, /usr/bin/python3). "
        "Commands (a later one replaces the rows of the nets it ran):",
        "",
        *[f"- `{command}`" for command in commands],
        "",
        f"**{len(ok)} of {len(rows)} nets** inspect, build, export with a dynamic batch and with --fold-bn and match "
        f"onnxruntime at batch 1 and 3 (rel <= {TOL:g}: largest |difference| over the outputs / largest |value|). "
        "Per repository: " + ", ".join(f"{repo} {ok_repo[repo]}/{n}" for repo, n in sorted(per_repo.items())) + ".",
        "",
        "| net | repository | layers | " + " | ".join(title for _, title in columns) + " | export s |",
        "|" + "---|" * (len(columns) + 4),
    ]
    for r in sorted(rows, key=lambda r: (r.repository.lower(), r.net.lower())):
        cells = [r.cells.get(key, "") for key, _ in columns]
        lines.append(f"| {r.net} | {r.repository} | {r.layers} | " + " | ".join(cells) + f" | {r.seconds} |")
    return "\n".join(lines) + "\n"


def passes(row: Row) -> bool:
    return all(row.cells.get(k, "").startswith(("✓", "skipped")) for k, _ in COLUMNS[:6])


def read_table(out: Path) -> tuple[list[Row], list[str]]:
    """The rows and commands of a table this script wrote into ``out`` (for ``--update``)."""
    if not out.is_file():
        return [], []
    text = out.read_text()
    text = text[text.index(MARKER):] if MARKER in text else text
    commands = [line[3:-1] for line in text.splitlines() if line.startswith("- `") and "zoo.py" in line]
    titles = {title: key for key, title in COLUMNS + [("caffe2onnx", "caffe2onnx 2.0.1 b1")]}
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("| "):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if cells[0] == "net":
            header = cells
            continue
        if header is None or len(cells) != len(header):
            continue
        named = dict(zip(header, cells))
        rows.append(Row(named["net"], named["repository"], named["layers"],
                        {titles[t]: v for t, v in named.items() if t in titles and v}, named.get("export s", "")))
    return rows, commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here (else print it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big", type=float, default=100.0, help="skip batch 3 above this many million weights")
    parser.add_argument("--no-opencv", dest="opencv", action="store_false")
    parser.add_argument("--weights", choices=("calibrated", "he"), default="calibrated",
                        help="calibrated (default): He-normal, then the layers feeding a Sigmoid or TanH "
                             "scaled to unit output by one seeded forward (see calibrate); he: He-normal only")
    parser.add_argument("--size", type=lambda text: tuple(int(v) for v in text.split("x")), default=None,
                        metavar="HxW", help="run 4-D inputs declared 1x1 (sized at run time, as OpenPose's) at HxW")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of --out's table for the nets this run does not run")
    parser.add_argument("--only", default="", help="run only nets whose file name contains one of these (comma-separated)")
    parser.add_argument("--caffe2onnx", metavar="PYTHON", default=None,
                        help="the python of a caffe2onnx 2.0.1 venv (benchmarks/bench_caffe2onnx.py makes one): "
                             "adds its column")
    args = parser.parse_args()
    version = opencv_available() if args.opencv else None
    args.opencv = bool(version)
    kept, commands = read_table(args.out) if args.update and args.out is not None else ([], [])
    commands = commands + [f".venv/bin/python benchmarks/zoo.py {' '.join(sys.argv[1:])}"]
    rows: list[Row] = []

    def current() -> list[Row]:
        ran = {(r.net, r.repository.split(" @")[0]) for r in rows}
        return [r for r in kept if (r.net, r.repository.split(" @")[0]) not in ran] + rows

    with tempfile.TemporaryDirectory() as tmp:
        for repo_dir in sorted(p for p in args.folder.iterdir() if p.is_dir()):
            commit = (repo_dir / "COMMIT").read_text().strip() if (repo_dir / "COMMIT").is_file() else ""
            repository = repo_dir.name.replace("+", "/", 1) + (f" @{commit}" if commit else "")
            for path in sorted(repo_dir.rglob("*.prototxt")):
                if args.only and not any(part in path.name for part in args.only.split(",")):
                    continue
                start = time.perf_counter()
                try:
                    row = one_net(path, repository, Path(tmp), args)
                except Exception:  # keep the run going; the traceback tells the developer
                    traceback.print_exc()
                    row = Row(path.stem, repository, cells={"inspect": "✗ crashed (see log)"})
                rows.append(row)
                print(f"{path.stem}: {row.cells} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
                if args.out is not None:  # after every net: a long run stopped early keeps its rows
                    write(args.out, table(current(), args, version, commands))
    if args.out is None:
        print(table(rows, args, version, commands))


def write(out: Path, text: str) -> None:
    """``text`` into ``out``, after the prose above :data:`MARKER` when ``out`` has one."""
    kept = out.read_text() if out.is_file() else ""
    if MARKER in kept:  # the prose above the marker is the docs' own
        text = kept[: kept.index(MARKER) + len(MARKER)] + "\n\n" + text
    atomic_write_bytes(out, text.encode("utf-8"))


if __name__ == "__main__":
    main()
