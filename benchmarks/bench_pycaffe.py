"""What pycaffe's ``Net.forward()`` costs over the bare library net, on a deploy prototxt.

- ``bare``: :class:`~caffe_compat.net.builder.CaffeNet` ``forward({"data": x})`` under
  ``torch.no_grad()`` (what ``caffe-compat predict --engine torch`` does, minus its extras).
- ``pycaffe``: ``caffe.Net(deploy, caffe.TEST)``; ``net.blobs['data'].data[...] = x`` then
  ``net.forward()``: every blob's top is written into its persistent buffer (Caffe's memory rule).
- ``pycaffe+bw``: the same net with ``force_backward: true``, ``forward()`` then ``backward()``
  from a stored output diff (layer-by-layer autograd), against the bare net's forward and
  ``torch.autograd.backward`` from the same diff.

Weights are the prototxt's fillers. Prints the median seconds of ``--iters`` turns (bare, then
pycaffe) after one warm-up call of each, and the median per-turn ratio.

    .venv/bin/python benchmarks/bench_pycaffe.py --threads 2 --batch 1 --size 112 --iters 15

Not a test.
"""

from __future__ import annotations

import argparse
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

import caffe_compat.pycaffe as caffe  # noqa: E402
from caffe_compat.io.prototxt import read_net  # noqa: E402
from caffe_compat.net.builder import CaffeNet  # noqa: E402


def in_turns(bare: Callable[[], object], mine: Callable[[], object], iters: int) -> tuple[float, float, float]:
    """Median seconds of each and the median of the per-turn ratios (calls alternate, so a
    shared box's load hits both alike)."""
    bare()
    mine()
    pairs = []
    for _ in range(iters):
        times = []
        for call in (bare, mine):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        pairs.append(times)
    return (statistics.median(t[0] for t in pairs), statistics.median(t[1] for t in pairs),
            statistics.median(t[1] / t[0] for t in pairs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50_1by2", choices=["resnet50", "resnet50_1by2"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=0, help="input height and width (0: the prototxt's)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    deploy = ROOT / "prototxt" / args.model / "deploy.prototxt"
    param = read_net(deploy)
    for layer in param.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = args.batch
            if args.size:
                layer.input_param.shape[0].dim[2] = layer.input_param.shape[0].dim[3] = args.size
    x = np.random.default_rng(0).normal(size=tuple(param.layer[0].input_param.shape[0].dim)).astype(np.float32)
    caffe.set_mode_cpu()

    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for force in (False, True):
            param.force_backward = force
            path = Path(tmp) / f"deploy_{int(force)}.prototxt"
            path.write_text(str(param))
            net = caffe.Net(str(path), caffe.TEST)
            bare = CaffeNet(param, caffe.TEST)
            bare.load_state_dict(net.torch_net.state_dict())
            out = net.outputs[0]
            xt = torch.from_numpy(x)

            if not force:
                def bare_call() -> None:
                    with torch.no_grad():
                        bare.forward({"data": xt})

                def py_call() -> None:
                    net.blobs["data"].data[...] = x
                    net.forward()
                results["forward"] = in_turns(bare_call, py_call, args.iters)
            else:
                diff = torch.ones(net.blobs[out].shape)

                def bare_call() -> None:
                    leaf = xt.clone().requires_grad_()
                    torch.autograd.backward([bare.forward({"data": leaf})[out]], [diff])

                def py_call() -> None:
                    net.blobs["data"].data[...] = x
                    net.forward()
                    net.blobs[out].diff[...] = 1.0
                    net.backward()
                results["forward+backward"] = in_turns(bare_call, py_call, args.iters)
    print(f"{args.model} deploy, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.iters}")
    for what, (bare_s, py_s, ratio) in results.items():
        print(f"{what:18s} bare {bare_s:.4f} s   pycaffe {py_s:.4f} s   pycaffe/bare (median of turns) {ratio:.3f}x")


if __name__ == "__main__":
    main()
