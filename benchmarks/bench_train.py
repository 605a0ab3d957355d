"""Training throughput: our prototxt ResNet-50 / ResNet-50-1by2 fed from a raw LMDB, side by side
with torchvision's resnet50 on synthetic tensors (the peer a PyTorch user would pick).

    # the H100 figures (issue 5): batch 256, bf16, channels_last, eager and compiled
    .venv/bin/python benchmarks/bench_train.py --batch 256 --bf16 --channels_last --compile both --workers 14
    # CPU smoke run (what the 2-core dev box can do)
    .venv/bin/python benchmarks/bench_train.py --device cpu --models resnet50_1by2 --batch 4 --crop 64 \
        --size 72 --records 64 --iters 3 --warmup 1 --no-peer

Ours: the repository's ``prototxt/<model>/train_val.prototxt`` (batch and crop replaced, BatchNorm on
batch statistics since it starts from fillers), trained by :class:`caffe_compat.solver.solver.Solver` exactly as ``caffe-compat train``
does: Data layer on an LMDB of raw 256x256 datums, random crop + mirror + mean file, prefetch
workers, uint8 copies to the GPU and the transform there. ``data wait`` is the share of the
timed wall clock the solver spent blocked waiting for the next batch. Not a test: prints one
line per measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import numpy as np
import torch

from caffe_compat.io.blob import write_binaryproto
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.solver import Solver, TrainOptions, TrainResult

ROOT = Path(__file__).resolve().parents[1]


def make_lmdb(work: Path, records: int, size: int) -> None:
    """``records`` raw uint8 3 x size x size datums (smooth gradients + noise) and their mean file."""
    from caffe_compat.data.lmdb_writer import build_lmdb
    from caffe_compat.proto import caffe_pb2

    target = work / "data" / "train_lmdb"
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    total = np.zeros((3, size, size), np.float64)
    with build_lmdb(target) as db:
        for i in range(records):
            a, b = rng.uniform(-1, 1, 2)
            base = np.stack([(xx * a + yy * b) % 256, (xx * b - yy * a) % 256, (xx + yy * a) % 256])
            image = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
            total += image
            datum = caffe_pb2.Datum(channels=3, height=size, width=size, data=image.tobytes(), label=i % 40)
            db.put(f"{i:08d}_im".encode(), datum.SerializeToString())
    write_binaryproto(work / "data" / "mean.binaryproto", (total / records).astype(np.float32)[None], legacy_dims=True)


def write_solver(work: Path, model: str, batch: int, crop: int, device: str) -> Path:
    text = (ROOT / "prototxt" / model / "train_val.prototxt").read_text()
    text = text.replace("crop_size: 224", f"crop_size: {crop}").replace("batch_size: 32", f"batch_size: {batch}")
    # From fillers (no caffemodel here), frozen BatchNorm would not normalise anything and the
    # activations overflow; batch statistics (the README's "re-estimate" variant, and what the
    # torchvision peer does) keep the run finite and cost what they cost.
    text = text.replace("use_global_stats: true", "use_global_stats: false")
    (work / f"{model}.prototxt").write_text(text)
    solver = work / f"{model}_solver.prototxt"
    solver.write_text(
        f'net: "{model}.prototxt"\nbase_lr: 0.001\nmomentum: 0.9\nweight_decay: 0.0001\nlr_policy: "fixed"\n'
        f'display: 0\nmax_iter: 1000000\nsnapshot_after_train: false\nsnapshot_prefix: "bench"\n'
        f'solver_mode: {"GPU" if device == "cuda" else "CPU"}\nrandom_seed: 1\n'
    )
    return solver


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_ours(args, work: Path, model: str, compiled: bool, device: torch.device) -> str:
    from caffe_compat.solver.distributed import Rank

    solver_file = write_solver(work, model, args.batch, args.crop, device.type)
    options = TrainOptions(bf16=args.bf16, channels_last=args.channels_last, compile=compiled,
                           workers=args.workers, progress=False)
    with contextlib.chdir(work):
        solver = Solver(solver_file.name, options, log=CaffeLog(io.StringIO()), rank=Rank(device=device))
        solver.step(args.warmup)
        sync(device)
        solver.result = TrainResult(iterations=0)
        wait0 = solver.feeder.wait_seconds
        start = time.perf_counter()
        solver.step(args.iters)
        sync(device)
        wall = time.perf_counter() - start
        solver.feeder.close()
    rate = args.iters * args.batch / wall
    wait = (solver.feeder.wait_seconds - wait0) / wall
    mode = "compiled" if compiled else "eager"
    return f"ours  {model:14s} {mode:8s} batch {args.batch} crop {args.crop}: {rate:8.1f} img/s, data wait {100 * wait:.1f}%"


def bench_peer(args, compiled: bool, device: torch.device) -> str:
    try:
        import torchvision
    except ImportError:
        return "peer  torchvision resnet50: torchvision is not installed (pip install torchvision to measure it)"
    net = torchvision.models.resnet50(num_classes=40).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 40, (args.batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(model):
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    model = torch.compile(net) if compiled else net
    for _ in range(args.warmup):
        step(model)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        step(model)
    sync(device)
    rate = args.iters * args.batch / (time.perf_counter() - start)
    mode = "compiled" if compiled else "eager"
    return f"peer  torchvision-r50  {mode:8s} batch {args.batch} crop {args.crop}: {rate:8.1f} img/s (synthetic tensors)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet50", "resnet50_1by2"], choices=["resnet50", "resnet50_1by2"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--size", type=int, default=256, help="stored datum size (crop is random inside it)")
    p.add_argument("--records", type=int, default=4096)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--compile", choices=["no", "yes", "both"], default="no")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/caffe_compat_bench_train"))
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.workdir.mkdir(parents=True, exist_ok=True)
    make_lmdb(args.workdir, args.records, args.size)
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# device {name}, torch {torch.__version__}, bf16 {args.bf16}, channels_last {args.channels_last}")
    for compiled in modes:
        if not args.no_peer:
            print(bench_peer(args, compiled, device), flush=True)
        for model in args.models:
            print(bench_ours(args, args.workdir, model, compiled, device), flush=True)


if __name__ == "__main__":
    main()
