"""The zoo's RPN nets (py-faster-rcnn's ProposalLayer) in a trained head's regime.

    .venv/bin/python benchmarks/zoo_rpn.py /tmp/zoo --only resnet18,mobilenet

WHY: with ``benchmarks/zoo.py``'s He-normal weights, the RPN heads of deep nets without
BatchNorm give box deltas of thousands, so every proposal is the whole image and NMS leaves one
roi: its ``0.0e+00`` cells check almost nothing, and where a few rois survive, exp() of such
deltas turns float32 rounding into pixel differences. Here, after the zoo's weights, the two
convolutions feeding the proposal layer are rescaled so that the deltas have std 0.2 and the
fg/bg logits std 2 (on the zoo's seeded input), as a trained RPN's are. Per net: the number of
rois (ours, onnxruntime's), their largest difference in pixels, and our layer run on
onnxruntime's own proposal inputs against onnxruntime's rois, which separates the layer's
export from upstream float32 rounding that reorders near-equal scores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo  # noqa: E402

from caffe_compat.io.caffemodel import write_caffemodel  # noqa: E402
from caffe_compat.io.prototxt import read_net  # noqa: E402
from caffe_compat.net.builder import CaffeNet  # noqa: E402
from caffe_compat.net.registry import TEST  # noqa: E402
from caffe_compat.onnx.export import net_to_onnx  # noqa: E402

PROPOSAL = ("rpn.proposal_layer", "ProposalLayer")
TARGET_STD = (2.0, 0.2)  # fg/bg logits, box deltas


def head(net: CaffeNet, blob: str):
    """The Convolution that ``blob`` comes from through one-bottom layers (Reshape, Softmax)."""
    while True:
        step = [s for s in net.steps if blob in s.tops][-1]
        if step.type == "Convolution":
            return step
        if len(step.bottoms) != 1:
            raise ValueError(f"'{blob}' does not come from one convolution")
        blob = step.bottoms[0]


@torch.no_grad()
def rescale_heads(net: CaffeNet, proposal, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shapes = {name: net.blob_shapes[name] for name in net.input_names}
    feeds = {name: torch.from_numpy(zoo.im_info_feed(name, shapes, rng)) for name in net.input_names}
    for blob, target in zip(proposal.bottoms[:2], TARGET_STD):
        conv = head(net, blob)
        out = net(feeds, blobs=[conv.tops[0]])[conv.tops[0]].double()
        for b in conv.layer.blobs:
            b.mul_(target / float(out.std()))


def one_net(path: Path, work: Path, seed: int) -> str:
    param = read_net(path)
    torch.manual_seed(seed)
    net = CaffeNet(param, phase=TEST)
    proposal = next((s for s in net.steps if s.type == "Python" and
                     (s.layer.param.python_param.module, s.layer.param.python_param.layer) == PROPOSAL), None)
    if proposal is None:
        return f"| {path.stem} | no ProposalLayer |"
    zoo.randomise(net, seed)
    rescale_heads(net, proposal, seed)
    weights = work / f"{path.stem}.caffemodel"
    write_caffemodel(weights, net.to_net_parameter())
    inputs = list(proposal.bottoms[:2])
    model = net_to_onnx(net, dynamic_batch=True, extra_outputs=inputs)[0]
    want, feeds = zoo.ours_at(param, weights, 1, [proposal.tops[0], *inputs], seed)
    got = zoo.run_onnx(model, feeds)
    rois, onnx_rois = want[proposal.tops[0]], got[proposal.tops[0]]
    bottoms = [torch.from_numpy(got[b] if b in got else feeds[b]) for b in proposal.bottoms]
    with torch.no_grad():
        alone = proposal.layer(*bottoms)[0].numpy()

    def diff(a: np.ndarray, b: np.ndarray) -> str:
        return f"{np.abs(a - b).max():.1e}" if a.shape == b.shape else f"shapes {a.shape} vs {b.shape}"

    return (f"| {path.stem} | {len(rois)} | {len(onnx_rois)} | {diff(rois, onnx_rois)} | "
            f"{diff(alone, onnx_rois)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--only", default="", help="comma-separated file-name substrings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    paths = sorted(p for p in args.folder.glob("*/*.prototxt") if not only or any(s in p.name for s in only))
    print("| net | rois (ours) | rois (onnxruntime) | max px difference | our layer on onnxruntime's inputs |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for path in paths:
            try:
                print(one_net(path, Path(work), args.seed), flush=True)
            except Exception as exc:  # one row per net, whatever fails
                print(f"| {path.stem} | {zoo.short(exc)} |", flush=True)


if __name__ == "__main__":
    main()
