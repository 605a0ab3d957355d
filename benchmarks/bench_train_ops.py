"""GPU cost of a training step, measured on the CPU: aten ops and bytes written per iteration.

Ours: one iteration of ``caffe-compat train`` (:class:`~caffe_compat.solver.solver.Solver`) on
``prototxt/<model>/train_val.prototxt``, Data layer on a raw LMDB, uint8 batches transformed
by the net's device (as on a GPU), bf16 autocast and channels_last by default. Peer: the plain
PyTorch ResNet-50 a PyTorch user would write (``nn.BatchNorm2d``, ``nn.ReLU(inplace=True)``,
``torch.optim.SGD(foreach=True)``), the same shapes, written here (no CPU torchvision).

Each op reaching the dispatcher is a kernel launch on a GPU, and the bytes it writes are most
of its cost, so the two ratios stand in for the GPU gap (issue 11: 5.5x ops and 4.3x bytes
predicted 6x slower). Also prints CPU seconds per step of both (median of ``--iters``).

    .venv/bin/python benchmarks/bench_train_ops.py                       # ResNet-50, BN on batch stats
    .venv/bin/python benchmarks/bench_train_ops.py --global-stats       # frozen BN (the finetune recipe)
    .venv/bin/python benchmarks/bench_train_ops.py --top 15             # which ops dominate
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from caffe_compat.net.opcount import OpCounter, OpCounts
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.distributed import Rank
from caffe_compat.solver.solver import Solver, TrainOptions

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import make_lmdb, write_solver  # noqa: E402


# ---------------------------------------------------------------------------- the peer


class Bottleneck(nn.Module):
    """Caffe's ResNet block: the stride on the first 1x1 (MSRA's original layout)."""

    def __init__(self, cin: int, width: int, stride: int, bias: bool) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, stride, bias=bias)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=bias), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class PlainResNet50(nn.Module):
    """The shapes of ``prototxt/resnet50`` (``base`` 64, a bias on conv1 only) or
    ``prototxt/resnet50_1by2`` (``base`` 32, a bias on every convolution), in plain PyTorch."""

    def __init__(self, classes: int = 40, base: int = 64, bias: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, base, 7, 2, 3, bias=True), nn.BatchNorm2d(base),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], base
        for i, (count, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, 2))):
            width = base * 2**i
            for j in range(count):
                blocks.append(Bottleneck(cin, width, stride if j == 0 else 1, bias))
                cin = width * 4
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def peer_step(args, device: torch.device):
    half = args.model == "resnet50_1by2"
    net = PlainResNet50(40, 32 if half else 64, bias=half).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if args.global_stats:
        for m in net.modules():  # frozen statistics, learned affine: the finetune recipe
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4, foreach=True)
    x = torch.randint(0, 255, (args.batch, 3, args.crop, args.crop), device=device).float()
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 40, (args.batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    return step


def ours_step(args, device: torch.device, work: Path):
    solver_file = write_solver(work, args.model, args.batch, args.crop, device.type)
    if args.global_stats:
        text = (work / f"{args.model}.prototxt").read_text()
        (work / f"{args.model}.prototxt").write_text(text.replace("use_global_stats: false", "use_global_stats: true"))
    options = TrainOptions(bf16=args.bf16, channels_last=args.channels_last, workers=0, progress=False,
                           device_transform=True)
    with contextlib.chdir(work):
        solver = Solver(solver_file.name, options, log=CaffeLog(io.StringIO()), rank=Rank(device=device))
    if args.global_stats:  # from fillers the stored statistics are 0: take one batch's instead
        norms = [s.layer for s in solver.net.steps if s.type == "BatchNorm"]
        for layer in norms:
            layer.use_global_stats = False
        with torch.no_grad():
            solver.net(solver.feeder.next())
        for layer in norms:
            layer.use_global_stats = True

    def step() -> None:
        solver.step(1)

    return step


# ---------------------------------------------------------------------------- measuring


def count(step) -> OpCounts:
    step()  # warm-up: lazy state (optimizer history, autotuning) is made once, not per step
    with OpCounter() as counter:
        step()
    return counter.counts


def cpu_seconds(steps, iters: int) -> list[float]:
    """Median CPU seconds per step of each, timed in turns (the box's load drifts over minutes)."""
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(iters):
        for step, spent in zip(steps, times):
            start = time.process_time()
            step()
            spent.append(time.process_time() - start)
    return [statistics.median(spent) for spent in times]


def table(ours: tuple[OpCounts, float], peer: tuple[OpCounts, float]) -> str:
    (o, ot), (p, pt) = ours, peer
    rows = [
        ("aten ops per step", f"{o.total_ops:,}", f"{p.total_ops:,}", o.total_ops / p.total_ops),
        ("MB written per step", f"{o.total_bytes / 1e6:,.1f}", f"{p.total_bytes / 1e6:,.1f}",
         o.total_bytes / p.total_bytes),
        ("CPU s per step (median)", f"{ot:.3f}", f"{pt:.3f}", ot / pt),
    ]
    to32 = [sum(v for k, v in c.cast_bytes.items() if k.endswith("->float32")) / 1e6 for c in (o, p)]
    big = [max((v for k, v in c.largest_cast.items() if k.endswith("->float32")), default=0) for c in (o, p)]
    rows.append(("MB cast to float32 per step", f"{to32[0]:,.1f}", f"{to32[1]:,.1f}", to32[0] / max(to32[1], 1e-9)))
    rows.append(("largest tensor cast to float32 (elements)", f"{big[0]:,}", f"{big[1]:,}", big[0] / max(big[1], 1)))
    lines = ["| per training iteration | ours | plain PyTorch | ratio |", "|---|---|---|---|"]
    lines += [f"| {name} | {a} | {b} | {r:.2f}x |" for name, a, b, r in rows]
    return "\n".join(lines)


def top_ops(counts: OpCounts, n: int) -> str:
    return ", ".join(f"{name} {count:g} ({counts.bytes[name] / 1e6:.1f} MB)"
                     for name, count in counts.ops.most_common(n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", choices=["resnet50", "resnet50_1by2"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--iters", type=int, default=5, help="timed steps of each, in turns (median)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--global-stats", action="store_true", help="frozen BatchNorm (use_global_stats: true)")
    p.add_argument("--top", type=int, default=0, help="also list the N most dispatched ops of each")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/caffe_compat_bench_train_ops"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    args.workdir.mkdir(parents=True, exist_ok=True)
    make_lmdb(args.workdir, max(64, 2 * args.batch), args.crop + 16)
    steps = ours_step(args, device, args.workdir), peer_step(args, device)
    counts = [count(step) for step in steps]
    seconds = cpu_seconds(steps, args.iters)
    ours, peer = (counts[0], seconds[0]), (counts[1], seconds[1])
    bn = "global stats" if args.global_stats else "batch stats"
    print(f"# {args.model}, batch {args.batch}, crop {args.crop}, bf16 {args.bf16}, channels_last "
          f"{args.channels_last}, BatchNorm {bn}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(table(ours, peer))
    if args.top:
        print(f"\nours: {top_ops(ours[0], args.top)}\npeer: {top_ops(peer[0], args.top)}")


if __name__ == "__main__":
    main()
