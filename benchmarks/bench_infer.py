"""Inference engines side by side on prototxt/resnet50: ONNX Runtime, our torch engine, torchvision.

- ``onnxruntime``: ``export-onnx`` of ``prototxt/resnet50/deploy.prototxt`` (dynamic batch,
  ``--fp16`` optional, BatchNorm folded), ``session.run`` on a host float32 batch.
- ``torch``: ``predict --engine torch``'s :class:`~caffe_compat.onnx.engines.TorchEngine`
  (CaffeNet with BatchNorm folded, channels_last, bf16 autocast with ``--bf16``,
  ``torch.compile(mode="reduce-overhead")`` at each fixed batch with ``--compile``), fed a uint8
  batch already on the device (its input transform runs there).
- ``torchvision``: torchvision's ``resnet50`` when torchvision is installed, else the
  hand-written one of tests/torchvision_layout.py (v1.5, the same module tree and arithmetic),
  channels_last, same autocast/compile, fed a float batch already on the device.

Weights are the prototxt's fillers (speed does not depend on them). Prints one line per
(engine, mode, batch): median latency of ``--iters`` timed calls after ``--warmup`` and images/s.

    # the 2-core CPU dev box (batch 256 takes ~20 s a call here)
    .venv/bin/python benchmarks/bench_infer.py --threads 2 --batches 1 32 --iters 3
    # an H100/H200 (pip install '.[gpu]' for onnxruntime's CUDA provider)
    .venv/bin/python benchmarks/bench_infer.py --device cuda --bf16 --compile both --providers cuda \\
        --batches 1 32 256 --iters 50 --warmup 10

Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caffe_compat.io.caffemodel import write_caffemodel  # noqa: E402
from caffe_compat.io.prototxt import read_net  # noqa: E402
from caffe_compat.net.builder import CaffeNet  # noqa: E402
from caffe_compat.onnx.engines import TorchEngine  # noqa: E402
from caffe_compat.onnx.export import export_onnx  # noqa: E402
from tests.torchvision_layout import resnet50  # noqa: E402

DEPLOY = ROOT / "prototxt" / "resnet50" / "deploy.prototxt"


def timed(call: Callable[[], object], iters: int, warmup: int, device: torch.device) -> float:
    """Median seconds of one call (the device synchronised around each)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + iters):
        sync()
        start = time.perf_counter()
        call()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(engine: str, mode: str, batch: int, seconds: float) -> None:
    print(f"{engine:12s} {mode:28s} batch {batch:4d}: {seconds * 1000:10.2f} ms  {batch / seconds:10.1f} img/s",
          flush=True)


def bench_onnxruntime(args, deploy: Path, weights: Path, tmp: Path) -> None:
    from caffe_compat.onnx.predict import open_session

    for fp16 in (False, True) if args.fp16 else (False,):
        path = tmp / f"r50{'_fp16' if fp16 else ''}.onnx"
        export_onnx(deploy, weights, path, fp16=fp16, fold_bn=True)
        session = open_session(path, args.providers.split(","))
        mode = f"{session.get_providers()[0].replace('ExecutionProvider', '')}{' fp16' if fp16 else ''}"
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
            report("onnxruntime", mode, batch, timed(lambda: session.run(["prob"], {"data": x}), args.iters,
                                                     args.warmup, torch.device("cpu")))


def compile_modes(args) -> list[bool]:
    return {"no": [False], "yes": [True], "both": [False, True]}[args.compile]


def bench_torch(args, deploy: Path, weights: Path, device: torch.device) -> None:
    for compiled in compile_modes(args):
        for batch in args.batches:
            engine = TorchEngine(deploy, weights, device=device, bf16=args.bf16, compile=compiled, batch_size=batch)
            pixels = torch.randint(0, 256, (batch, 3, args.size, args.size), dtype=torch.uint8, device=device)
            mode = f"{'bf16' if args.bf16 else 'fp32'} {'compiled' if compiled else 'eager'} BN folded"

            def call() -> object:
                with torch.inference_mode():
                    return engine._forward(pixels)

            report("torch", mode, batch, timed(call, args.iters, args.warmup, device))


def torchvision_resnet50() -> tuple[torch.nn.Module, str]:
    try:
        from torchvision.models import resnet50 as real
    except ImportError:
        return resnet50(num_classes=40), "torchvision-layout (hand-written)"
    return real(num_classes=40), "torchvision"


def bench_torchvision(args, device: torch.device) -> None:
    model, label = torchvision_resnet50()
    print(f"torchvision: {label}")
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    for compiled in compile_modes(args):
        forward = torch.compile(model, mode="reduce-overhead") if compiled else model
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)

            def call() -> object:
                with torch.inference_mode(), autocast():
                    return forward(x)

            mode = f"{'bf16' if args.bf16 else 'fp32'} {'compiled' if compiled else 'eager'}"
            report("torchvision", mode, batch, timed(call, args.iters, args.warmup, device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--size", type=int, default=224, help="input side")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the torch engines")
    parser.add_argument("--fp16", action="store_true", help="also time the fp16 ONNX export")
    parser.add_argument("--compile", choices=["no", "yes", "both"], default="no",
                        help="torch.compile(mode='reduce-overhead') for the torch engines")
    parser.add_argument("--providers", default="cpu", help="onnxruntime providers, e.g. cuda,cpu")
    parser.add_argument("--engines", nargs="+", default=["onnxruntime", "torch", "torchvision"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"prototxt/resnet50 at {args.size}x{args.size}, torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        deploy = Path(tmp) / "deploy.prototxt"
        deploy.write_text(DEPLOY.read_text().replace("dim: 224", f"dim: {args.size}", 2))
        net = CaffeNet(read_net(deploy))  # filler weights
        weights = Path(tmp) / "r50.caffemodel"
        write_caffemodel(weights, net.to_net_parameter())
        del net
        if "onnxruntime" in args.engines:
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                print("onnxruntime: not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA); skipped")
            else:
                bench_onnxruntime(args, deploy, weights, Path(tmp))
        if "torch" in args.engines:
            bench_torch(args, deploy, weights, device)
        if "torchvision" in args.engines:
            bench_torchvision(args, device)


if __name__ == "__main__":
    main()
