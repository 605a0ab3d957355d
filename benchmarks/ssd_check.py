"""Real SSD deploy nets (weiliu89/caffe layers) with seeded random weights: our net, onnxruntime
(dynamic batch, with and without --fold-bn) and OpenCV's own Caffe importer, detection for detection.

    .venv/bin/python benchmarks/ssd_check.py MobileNetSSD_deploy.prototxt face_detector/deploy.prototxt

The prototxts are read from their repositories (chuanqi305/MobileNet-SSD, opencv/opencv
samples/dnn/face_detector), never committed. Weights: N(0, 1/fan_in) convolutions, N(0, 0.1^2)
biases, BatchNorm mean N(0, 0.1^2) / variance U(0.5, 1.5) / factor 1, Scale and Normalize 1 +/- 0.1,
and every ``*mbox_conf`` convolution times ``--conf-gain`` so that the softmax is not flat and the
net's own confidence_threshold keeps some boxes (with random weights every class scores about
1/num_classes otherwise). OpenCV (Debian python3-opencv 4.6, for /usr/bin/python3) runs in a
subprocess on the same prototxt and caffemodel; its rows are compared as a set (it orders an
image's rows by score, the fork by class then score, and pads with zero rows up to keep_top_k).

Not a test: one line per net and batch for docs/ssd.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from caffe_compat.io.prototxt import read_net
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST
from caffe_compat.net.weights import net_to_proto
from caffe_compat.onnx.export import net_to_onnx

OPENCV = """
import sys, cv2, numpy as np
net = cv2.dnn.readNetFromCaffe(sys.argv[1], sys.argv[2])
net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
net.setInput(np.load(sys.argv[3]))
np.save(sys.argv[4], net.forward(sys.argv[5]))
"""


def seed_weights(net: CaffeNet, seed: int, conf_gain: float) -> None:
    gen = torch.Generator().manual_seed(seed)

    def randn(shape) -> torch.Tensor:
        return torch.randn(shape, generator=gen)

    with torch.no_grad():
        for step in net.steps:
            blobs = step.layer.blobs
            if step.type == "BatchNorm":
                blobs[0].copy_(0.1 * randn(blobs[0].shape))
                blobs[1].copy_(0.5 + torch.rand(blobs[1].shape, generator=gen))
                blobs[2].fill_(1.0)
                continue
            for i, blob in enumerate(blobs):
                if step.type in ("Scale", "Normalize") and i == 0:
                    blob.copy_(1 + 0.1 * randn(blob.shape))
                elif blob.dim() > 1:
                    gain = conf_gain if step.name.endswith("mbox_conf") else 1.0
                    blob.copy_(gain * randn(blob.shape) / blob[0].numel() ** 0.5)
                else:
                    blob.copy_(0.1 * randn(blob.shape))


def canonical(rows: np.ndarray) -> np.ndarray:
    """Rows without OpenCV's zero padding, sorted by (image, label, box rounded to 1e-4, score):
    two boxes whose scores differ in the last bits (convolutions summed in another order) may
    swap places in a score sort, not in this one."""
    rows = rows.reshape(-1, 7)
    rows = rows[np.any(rows[:, 1:] != 0, axis=1)]
    box = np.round(rows[:, 3:] * 1e4)
    return rows[np.lexsort((rows[:, 2], box[:, 3], box[:, 2], box[:, 1], box[:, 0], rows[:, 1], rows[:, 0]))]


def compare(a: np.ndarray, b: np.ndarray) -> str:
    """'same' when the rows agree (images and labels exactly, the rest to 1e-5), else why not."""
    if a.shape != b.shape:
        return f"{a.shape[0]} vs {b.shape[0]} rows"
    if not np.array_equal(a[:, :2], b[:, :2]):
        return "labels differ"
    diff = float(np.abs(a[:, 2:] - b[:, 2:]).max(initial=0))
    return "same" if diff <= 1e-5 * max(1.0, float(np.abs(a[:, 2:]).max(initial=0))) else f"max diff {diff:.2g}"


def check(prototxt: Path, seed: int, conf_gain: float, folder: Path) -> None:
    def build() -> CaffeNet:
        net = CaffeNet(read_net(prototxt), phase=TEST)
        seed_weights(net, seed, conf_gain)
        return net

    net = build()
    model_path = folder / f"{prototxt.stem}.caffemodel"
    model_path.write_bytes(net_to_proto(net).SerializeToString())
    start = time.perf_counter()
    model, _, inputs = net_to_onnx(net)
    seconds = time.perf_counter() - start
    folded, _, _ = net_to_onnx(build(), fold_bn=True)
    sessions = {name: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for name, m in (("onnx", model), ("fold-bn", folded))}
    (name, _), = inputs
    shape = tuple(net.blob_shapes[name])
    out = next(iter(net.output_names))
    for batch in (1, 3):
        x = np.random.default_rng(batch).uniform(-1, 1, (batch, *shape[1:])).astype(np.float32)
        with torch.no_grad():
            ours = net({name: torch.from_numpy(x)})[out].numpy()
        line = [f"{prototxt.name}", f"batch {batch}", f"{ours.shape[2]} detections",
                f"export {seconds:.1f} s"]
        for label, session in sessions.items():
            got = session.run([out], {name: x})[0]
            exact = got.shape == ours.shape and np.array_equal(got[..., :2], ours[..., :2])
            line.append(f"{label}: {compare(canonical(got), canonical(ours))}{'' if exact else ' (order!)'}")
        np.save(folder / "x.npy", x)
        done = subprocess.run(["/usr/bin/python3", "-c", OPENCV, str(prototxt), str(model_path),
                               str(folder / "x.npy"), str(folder / "cv.npy"), out], capture_output=True, text=True)
        if done.returncode:
            line.append("opencv: failed: " + (done.stderr.strip().splitlines() or ["?"])[-1])
        else:
            line.append(f"opencv: {compare(canonical(np.load(folder / 'cv.npy')), canonical(ours))}")
        print(" | ".join(line), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prototxt", nargs="+", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conf-gain", type=float, default=10.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for prototxt in args.prototxt:
            check(prototxt, args.seed, args.conf_gain, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
