"""How the SCUT-FBP5500 recipes were chosen: one finetune per variant, scored four ways.

Trains the shipped recipe (``prototxt/scut_fbp5500/<recipe>``) with one change at a time
(loss, solver type, learning rate, BatchNorm mode, epochs, ``--ema``) through the library's
``Solver`` (what ``caffe-compat train`` runs), then scores the raw weights and, with
``--ema``, the weight average, each without and with mirror averaging, on every test image of
the split. One line of JSON per score goes to ``--results``.

    # the CPU proxy of docs/benchmarks.md ("SCUT-FBP5500"): 112 px crops of 128 px images,
    # batch 16, 4 epochs of the 60/40 split, one thread per run (two runs side by side)
    OMP_NUM_THREADS=1 python benchmarks/scut_recipe_search.py adam_l1 --epochs 4
    OMP_NUM_THREADS=1 python benchmarks/scut_recipe_search.py sgd_l1 --type SGD --lr 0.001
    OMP_NUM_THREADS=1 python benchmarks/scut_recipe_search.py adam_l2 --loss l2

Data: SCUT-FBP5500 (non-commercial research only), prepared with the recipes' layout by
``scripts/prepare_scut_fbp5500.py`` (here at ``--size``; reused when already there).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from caffe_compat.data.lmdb_dataset import LMDBDataset
from caffe_compat.data.transformer import DataTransformer
from caffe_compat.io.prototxt import parse_net_text, read_solver, to_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST
from caffe_compat.proto import caffe_pb2
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.solver import Solver, TrainOptions
from caffe_compat.workflow.scut_fbp5500 import PrepareOptions, class_score, prepare

sys.path.insert(0, str(Path(__file__).parent))
from bench_scut import ROOT, metrics, nsfw_weights  # noqa: E402


def variant(args) -> tuple[str, str]:
    """(train_val, solver) text of the shipped recipe with this run's changes."""
    recipe = ROOT / "prototxt" / "scut_fbp5500" / args.recipe
    net = parse_net_text((recipe / "train_val.prototxt").read_text())
    for layer in net.layer:
        if layer.type == "Data":
            layer.transform_param.crop_size = args.crop
            if layer.include[0].phase == caffe_pb2.TRAIN:
                layer.data_param.batch_size = args.batch
        if layer.type == "BatchNorm" and args.bn == "batch":
            layer.batch_norm_param.use_global_stats = False
        if layer.type == "InnerProduct":  # the new head: lr_mult x head for weights, 2x for biases
            for spec, mult in zip(layer.param, (args.head, 2 * args.head)):
                spec.lr_mult = mult
    if args.loss == "l2":  # EuclideanLoss on the same label_score, instead of the L1 block
        kept = [layer for layer in net.layer if layer.name not in ("label_column", "residual", "abs_residual", "loss")]
        del net.layer[:]
        net.layer.extend(kept)
        net.layer.add(name="loss", type="EuclideanLoss", bottom=["fc_score", "label_score"], top=["loss"])
    sp = read_solver(recipe / "solver.prototxt")
    sp.net = "train_val.prototxt"
    sp.max_iter = math.ceil(args.epochs * args.train_count / args.batch)
    sp.type, sp.base_lr = args.type, args.lr
    if args.type == "SGD":
        sp.ClearField("momentum2")
    del sp.test_iter[:]
    sp.ClearField("test_interval")
    sp.snapshot, sp.snapshot_after_train, sp.solver_mode = 0, False, caffe_pb2.SolverParameter.CPU
    sp.snapshot_prefix = "snapshots/search"
    return to_text(net), to_text(sp)


def weights_of(solver: Solver) -> dict[str, list[np.ndarray]]:
    return {s.name: [b.detach().numpy().copy() for b in s.layer.blobs] for s in solver.net.steps if len(s.layer.blobs)}


def score(train_val: str, weights, split: Path, args) -> dict[str, np.ndarray]:
    """Predicted 1..5 scores of every test image, plain and averaged with the mirror."""
    classes = args.recipe.endswith("_40")
    net = CaffeNet(parse_net_text(train_val), TEST)  # its data layers' paths are relative: cwd is the run
    net.copy_from(weights)
    net = net.to(memory_format=torch.channels_last)
    db = LMDBDataset(str(split / ("scut40_test_lmdb" if classes else "scut_test_lmdb")))
    transform = DataTransformer(caffe_pb2.TransformationParameter(
        crop_size=args.crop, mean_file=str(split / "scut_mean.binaryproto")), TEST)
    out_blob = "fc40" if classes else "fc_score"
    outputs: dict[str, list[torch.Tensor]] = {"plain": [], "flipped": []}
    for start in range(0, len(db), 50):
        batch = [transform(db[i][0]) for i in range(start, min(len(db), start + 50))]
        x = torch.from_numpy(np.stack(batch)).contiguous(memory_format=torch.channels_last)
        for name, data in (("plain", x), ("flipped", x.flip(3))):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                y = net({"data": data, "label": torch.zeros(len(batch))}, blobs=[out_blob])[out_blob].float()
            outputs[name].append(torch.softmax(y, 1) if classes else y.reshape(-1))
    plain, flipped = torch.cat(outputs["plain"]), torch.cat(outputs["flipped"])
    decode = (lambda p: class_score((p * torch.arange(p.shape[1])).sum(1)).numpy()) if classes else (lambda p: p.numpy())
    return {"plain": decode(plain), "mirror": decode((plain + flipped) / 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the run's name (folder under --work, key in --results)")
    p.add_argument("--recipe", default="resnet50_1by2", choices=["resnet50_1by2", "resnet50_1by2_40"])
    p.add_argument("--data", type=Path, default=ROOT / "data" / "scut-fbp5500")
    p.add_argument("--work", type=Path, default=ROOT / "data" / "scut_search")
    p.add_argument("--results", type=Path, default=ROOT / "data" / "scut_search" / "results.jsonl")
    p.add_argument("--split", default="60-40")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=float, default=4)
    p.add_argument("--loss", choices=["l1", "l2"], default="l1", help="regression: the shipped L1 or EuclideanLoss")
    p.add_argument("--type", default="Adam", help="solver type")
    p.add_argument("--lr", type=float, default=1e-4, help="base_lr")
    p.add_argument("--head", type=float, default=10, help="lr_mult of the new head's weights")
    p.add_argument("--bn", choices=["frozen", "batch"], default="frozen", help="use_global_stats true / false")
    p.add_argument("--ema", type=float, default=0.0)
    args = p.parse_args()
    protocol = "60-40" if args.split == "60-40" else "5-fold"
    split = prepare(args.data, args.work / f"data{args.size}", PrepareOptions(size=args.size, protocol=protocol))
    split_dir = next(s.folder for s in split if s.name == args.split)
    args.train_count = json.loads((split_dir / "manifest.json").read_text())["train"]
    run = args.work / args.name
    run.mkdir(parents=True, exist_ok=True)
    (run / "data").unlink(missing_ok=True)
    (run / "data").symlink_to(split_dir.resolve())
    train_val, solver_text = variant(args)
    (run / "train_val.prototxt").write_text(train_val)
    (run / "solver.prototxt").write_text(solver_text)
    truth = np.array([LMDBDataset(str(split_dir / "scut_test_lmdb"))[i][1] for i in range(
        len(LMDBDataset(str(split_dir / "scut_test_lmdb"))))], float) / 100
    with contextlib.chdir(run):
        solver = Solver("solver.prototxt", TrainOptions(weights=[str(nsfw_weights())], bf16=True, channels_last=True,
                                                        workers=1, progress=False, ema=args.ema),
                        log=CaffeLog(io.StringIO()))
        start = time.perf_counter()
        result = solver.solve()
        seconds = time.perf_counter() - start
        losses = [v for _, v in result.losses]
        weights = {"raw": weights_of(solver)}
        if solver.average is not None:
            with solver.average.applied():
                weights["ema"] = weights_of(solver)
        for which, blobs in weights.items():
            for tta, pred in score(train_val, blobs, split_dir, args).items():
                row = {"name": args.name, "weights": which, "tta": tta, **metrics(pred, truth),
                       "iterations": len(losses), "train_seconds": round(seconds, 1),
                       "loss_first20": float(np.mean(losses[:20])), "loss_last20": float(np.mean(losses[-20:])),
                       "settings": {k: str(v) for k, v in vars(args).items()}}
                print(json.dumps({k: v for k, v in row.items() if k != "settings"}), flush=True)
                with open(args.results, "a") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
