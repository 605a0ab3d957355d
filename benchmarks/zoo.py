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


@torch.no_grad()
def calibrate_batchnorm(net: CaffeNet, seed: int) -> None:
    """Each BatchNorm's statistics set to those of its input on a seeded N(0, 1) batch, in net
    order, as a trained net's are. Random statistics let activations grow through deep residual
    nets (SE-ResNet-50: 22 at the first block, 2,500 at the last), and float32 rounding with them:
    no two runtimes then agree to 1e-4, however right the conversion."""
    rng = np.random.default_rng(seed + 1000)
    feeds = {name: torch.from_numpy(rng.standard_normal(net.blob_shapes[name]).astype(np.float32))
             for name in net.input_names}
    for step in net.steps:
        if step.type != "BatchNorm":
            continue
        x = net.forward(feeds, blobs=[step.bottoms[0]])[step.bottoms[0]].double()
        dims = [0, *range(2, x.dim())]
        mean, var, factor = step.layer.blobs
        mean.copy_(x.mean(dims).float())
        var.copy_(x.var(dims).float() + 1e-3)
        factor.fill_(1.0)


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


def im_info_feed(name: str, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> np.ndarray:
    """What input ``name`` gets: N(0, 1), except Faster R-CNN's ``im_info`` (N, 3), which gets
    [height, width, 1.0] of the first 4-D input for every image."""
    shape = shapes[name]
    if name == "im_info" and len(shape) == 2 and shape[1] == 3:
        height, width = next(s[2:] for s in shapes.values() if len(s) == 4)
        return np.tile(np.array([height, width, 1.0], np.float32), (shape[0], 1))
    return rng.standard_normal(shape).astype(np.float32)


def ours_at(param: caffe_pb2.NetParameter, weights: Path, batch: int, names: list[str], seed: int):
    """Our outputs at ``batch`` on a seeded N(0, 1) input, and that input."""
    net = CaffeNet(at_batch(param, batch), phase=TEST)
    net.copy_from(weights)
    rng = np.random.default_rng(seed + batch)
    shapes = {name: net.blob_shapes[name] for name in net.input_names}
    feeds = {name: im_info_feed(name, shapes, rng) for name in net.input_names}
    with torch.no_grad():
        out = net({k: torch.from_numpy(v) for k, v in feeds.items()}, blobs=names)
    return {k: v.float().numpy() for k, v in out.items()}, feeds


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
    types = Counter(layer.type for layer in param.layer)
    forks = sorted(t for t in types if t in FORK_TYPES)
    row.layers = f"{len(param.layer)}" + (f" ({', '.join(forks)})" if forks else "")
    weights = work / f"{path.stem}.caffemodel"
    try:
        torch.manual_seed(args.seed)
        net = CaffeNet(param, phase=TEST)
        randomise(net, args.seed)
        if args.calibrate_bn:
            calibrate_batchnorm(net, args.seed)
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
    model = with_outputs(param, weights, logits, fold_bn=False) if logits else result.model
    want_1, feeds_1 = ours_at(param, weights, 1, names, args.seed)
    for batch in (1, 3):
        if batch == 3 and big:
            cells["ort3"] = f"skipped (> {args.big:g} M weights)"
            continue
        try:
            want, feeds = (want_1, feeds_1) if batch == 1 else ours_at(param, weights, batch, names, args.seed)
            cells[f"ort{batch}"] = mark(rel(run_onnx(model, feeds), want, checked))
        except Exception as exc:
            cells[f"ort{batch}"] = short(exc)
    try:
        folded = export_onnx(path, weights, work / f"{path.stem}.fold.onnx", batch="dynamic", fold_bn=True).model
        if logits:
            folded = with_outputs(param, weights, logits, fold_bn=True)
        cells["fold"] = mark(rel(run_onnx(folded, feeds_1), want_1, checked))
    except Exception as exc:
        cells["fold"] = short(exc)
    batch_1 = work / f"{path.stem}.b1.prototxt"
    batch_1.write_text(to_text(at_batch(param, 1)))
    if args.opencv:
        cells["opencv"] = opencv_cell(param, weights, {n: want_1[n] for n in checked}, feeds_1, batch_1)
    if getattr(args, "caffe2onnx", None):
        net_outputs = {name: want_1[name] for name in outputs}  # caffe2onnx exposes no logits
        cells["caffe2onnx"] = caffe2onnx_cell(args.caffe2onnx, batch_1, weights, net_outputs, feeds_1, work)
    return row


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


def table(rows: list[Row], args, opencv_version: str | None) -> str:
    columns = COLUMNS + ([("caffe2onnx", "caffe2onnx 2.0.1 b1")] if getattr(args, "caffe2onnx", None) else [])
    ok = sum(all(r.cells.get(k, "").startswith(("✓", "skipped")) for k, _ in COLUMNS[:6]) for r in rows)
    lines = [
        "## The zoo: real deploy nets with seeded random weights",
        "",
        f"Command: `.venv/bin/python benchmarks/zoo.py {' '.join(sys.argv[1:])}` (seed {args.seed}); "
        f"machine: 2-core shared dev box, no GPU; date: {datetime.date(2026, 12, 7).isoformat()}; "
        f"OpenCV: {opencv_version or 'not available'} (Debian python3-opencv, /usr/bin/python3).",
        "",
        f"{ok} of {len(rows)} nets inspect, build, export with a dynamic batch and with --fold-bn and match "
        f"onnxruntime (rel <= {TOL:g}: largest |difference| over the outputs / largest |value|).",
        "",
        "| net | repository | layers | " + " | ".join(title for _, title in columns) + " | export s |",
        "|" + "---|" * (len(columns) + 4),
    ]
    for r in rows:
        cells = [r.cells.get(key, "") for key, _ in columns]
        lines.append(f"| {r.net} | {r.repository} | {r.layers} | " + " | ".join(cells) + f" | {r.seconds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here (else print it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big", type=float, default=100.0, help="skip batch 3 above this many million weights")
    parser.add_argument("--no-opencv", dest="opencv", action="store_false")
    parser.add_argument("--calibrate-bn", action="store_true",
                        help="BatchNorm statistics from a seeded calibration batch (as a trained net's)")
    parser.add_argument("--only", default="", help="run only nets whose file name contains one of these (comma-separated)")
    parser.add_argument("--caffe2onnx", metavar="PYTHON", default=None,
                        help="the python of a caffe2onnx 2.0.1 venv (benchmarks/bench_caffe2onnx.py makes one): "
                             "adds its column")
    args = parser.parse_args()
    version = opencv_available() if args.opencv else None
    args.opencv = bool(version)
    rows = []
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
                    write(args.out, table(rows, args, version))
    if args.out is None:
        print(table(rows, args, version))


def write(out: Path, text: str) -> None:
    """``text`` into ``out``, after the prose above :data:`MARKER` when ``out`` has one."""
    kept = out.read_text() if out.is_file() else ""
    if MARKER in kept:  # the prose above the marker is the docs' own
        text = kept[: kept.index(MARKER) + len(MARKER)] + "\n\n" + text
    atomic_write_bytes(out, text.encode("utf-8"))


if __name__ == "__main__":
    main()
