"""A small SSD deploy net (weiliu89/caffe layer set) written for the tests, with seeded weights."""

from __future__ import annotations

import numpy as np
import torch

from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST

_HEAD = """
layer {{ name: "{name}_loc" type: "Convolution" bottom: "{bottom}" top: "{name}_loc"
  convolution_param {{ num_output: {loc} kernel_size: 3 pad: 1 }} }}
layer {{ name: "{name}_loc_perm" type: "Permute" bottom: "{name}_loc" top: "{name}_loc_perm"
  permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{name}_loc_flat" type: "Flatten" bottom: "{name}_loc_perm" top: "{name}_loc_flat"
  flatten_param {{ axis: 1 }} }}
layer {{ name: "{name}_conf" type: "Convolution" bottom: "{bottom}" top: "{name}_conf"
  convolution_param {{ num_output: {conf} kernel_size: 3 pad: 1 }} }}
layer {{ name: "{name}_conf_perm" type: "Permute" bottom: "{name}_conf" top: "{name}_conf_perm"
  permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{name}_conf_flat" type: "Flatten" bottom: "{name}_conf_perm" top: "{name}_conf_flat"
  flatten_param {{ axis: 1 }} }}
layer {{ name: "{name}_prior" type: "PriorBox" bottom: "{bottom}" bottom: "data" top: "{name}_prior"
  prior_box_param {{ {prior} }} }}
"""


def ssd_prototxt(num_classes: int = 4, share_location: bool = True, code_type: str = "CENTER_SIZE",
                 detection: str = "", size: int = 48, normalize: str = "across_spatial: false") -> str:
    """Two feature maps (normalised conv1 at stride 4, conv2 at stride 8), three prior settings,
    DetectionOutput with ``detection`` appended to its parameters."""
    loc_classes = 1 if share_location else num_classes
    priors = [  # (min/max/aspect settings, priors per cell)
        ("min_size: 10.0 max_size: 20.0 aspect_ratio: 2.0 flip: true clip: false "
         "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5", 4),
        ("min_size: 20.0 max_size: 36.0 aspect_ratio: 2.0 aspect_ratio: 3.0 flip: true clip: true "
         "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8", 6),
    ]
    text = f"""name: "tiny_ssd"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 3 stride: 4 pad: 1 }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "conv1_norm" type: "Normalize" bottom: "conv1" top: "conv1_norm"
  norm_param {{ {normalize} scale_filler {{ type: "constant" value: 20 }} }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param {{ num_output: 8 kernel_size: 3 stride: 2 pad: 1 }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }}
"""
    for (name, bottom), (prior, count) in zip([("m1", "conv1_norm"), ("m2", "conv2")], priors):
        text += _HEAD.format(name=name, bottom=bottom, loc=count * 4 * loc_classes, conf=count * num_classes,
                             prior=prior)
    text += f"""
layer {{ name: "mbox_loc" type: "Concat" bottom: "m1_loc_flat" bottom: "m2_loc_flat" top: "mbox_loc"
  concat_param {{ axis: 1 }} }}
layer {{ name: "mbox_conf" type: "Concat" bottom: "m1_conf_flat" bottom: "m2_conf_flat" top: "mbox_conf"
  concat_param {{ axis: 1 }} }}
layer {{ name: "mbox_priorbox" type: "Concat" bottom: "m1_prior" bottom: "m2_prior" top: "mbox_priorbox"
  concat_param {{ axis: 2 }} }}
layer {{ name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape"
  reshape_param {{ shape {{ dim: 0 dim: -1 dim: {num_classes} }} }} }}
layer {{ name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax"
  softmax_param {{ axis: 2 }} }}
layer {{ name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten"
  flatten_param {{ axis: 1 }} }}
layer {{ name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten"
  bottom: "mbox_priorbox" top: "detection_out"
  detection_output_param {{ num_classes: {num_classes} share_location: {str(share_location).lower()}
    background_label_id: 0 code_type: {code_type} {detection} }} }}
"""
    return text


def seeded_net(text: str, seed: int = 0, conf_gain: float = 1.0) -> CaffeNet:
    """The net with seeded weights: N(0, 1/fan_in) for weights, N(0, 0.1^2) for biases, 1 +/- 0.1
    for Normalize scales (SSD trains them near 20; 1 keeps the softmax from saturating); the
    confidence convolutions' weights times ``conf_gain`` (a larger gain spreads the softmax, so
    that a confidence threshold keeps a few boxes per class)."""
    net = CaffeNet(parse_net_text(text), phase=TEST)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for step in net.steps:
            for i, blob in enumerate(step.layer.blobs):
                values = torch.randn(blob.shape, generator=gen)
                if step.type == "Normalize":
                    values = 1 + 0.1 * values
                elif blob.dim() > 1:
                    values = values / blob[0].numel() ** 0.5
                else:
                    values = 0.1 * values
                if step.name.endswith("_conf") and i == 0:
                    values = values * conf_gain
                blob.copy_(values)
    return net


def image(batch: int = 1, size: int = 48, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)


# OpenCV 4.x's own Caffe importer as an independent oracle. Debian's python3-opencv (4.6) has
# readNetFromCaffe but lives in /usr/bin/python3's site-packages, so it runs in a subprocess that
# exchanges .npy files.
SYSTEM_PYTHON = "/usr/bin/python3"
_OPENCV_RUN = """
import sys, cv2, numpy as np
prototxt, model, image, out = sys.argv[1:5]
net = cv2.dnn.readNetFromCaffe(prototxt, model)
net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
net.setInput(np.load(image))
names = sys.argv[5:]
np.savez(out, **dict(zip(names, net.forward(names))))
"""


def opencv_available() -> bool:
    import shutil
    import subprocess

    if shutil.which(SYSTEM_PYTHON) is None:
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import cv2; cv2.dnn.readNetFromCaffe"], capture_output=True)
    return probe.returncode == 0


def opencv_forward(prototxt, caffemodel, data: np.ndarray, blobs: list[str], folder) -> dict[str, np.ndarray]:
    """``blobs`` as OpenCV's Caffe importer computes them for input ``data``."""
    import subprocess
    from pathlib import Path

    folder = Path(folder)
    np.save(folder / "cv_in.npy", data)
    done = subprocess.run([SYSTEM_PYTHON, "-c", _OPENCV_RUN, str(prototxt), str(caffemodel),
                           str(folder / "cv_in.npy"), str(folder / "cv_out.npz"), *blobs],
                          capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"OpenCV failed on {prototxt}: {done.stderr.strip().splitlines()[-1:]}")
    with np.load(folder / "cv_out.npz") as out:
        return dict(out)


def save_net(net: CaffeNet, text: str, folder) -> tuple:
    """The prototxt and a caffemodel of ``net``'s weights in ``folder``."""
    from pathlib import Path

    from caffe_compat.net.weights import net_to_proto

    folder = Path(folder)
    (folder / "net.prototxt").write_text(text)
    (folder / "net.caffemodel").write_bytes(net_to_proto(net).SerializeToString())
    return folder / "net.prototxt", folder / "net.caffemodel"
