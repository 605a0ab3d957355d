"""An independent oracle: OpenCV's own Caffe importer (``cv2.dnn.readNetFromCaffe``) on a
prototxt and .caffemodel, run in another interpreter.

The pip OpenCV 5.x has no Caffe importer; Debian's ``python3-opencv`` 4.6 has one and installs
for Debian's ``/usr/bin/python3``, so the oracle runs there as a subprocess, exchanging .npy
files: inputs in, one array per output layer out. Used by ``benchmarks/zoo.py`` and by
``tests/test_zoo_opencv.py`` (which skip cleanly when :func:`available` is false).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

PYTHON = os.environ.get("CAFFE_COMPAT_OPENCV_PYTHON", "/usr/bin/python3")

# Runs under PYTHON: argv = prototxt, caffemodel, folder with in_<i>.npy and inputs.json (their
# blob names); writes out_<i>.npy
# and prints one JSON line {"outputs": [layer names], "tops": [...]} or {"error": "..."}.
_RUNNER = r'''
import json, os, sys
import numpy as np
import cv2
prototxt, weights, folder = sys.argv[1:4]
extra = [name for name in sys.argv[4:]]
try:
    net = cv2.dnn.readNetFromCaffe(prototxt, weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)
    with open(os.path.join(folder, "inputs.json")) as listed:
        for i, name in enumerate(json.load(listed)):
            net.setInput(np.load(os.path.join(folder, "in_%d.npy" % i)), name)
    names = list(net.getUnconnectedOutLayersNames())
    known = set(net.getLayerNames())  # OpenCV may rename a layer after its top (OpenPose's net_output)
    names += [name for name in extra if name not in names and name in known]
    outs = net.forward(names)
    for i, out in enumerate(outs):
        np.save(os.path.join(folder, "out_%d.npy" % i), np.asarray(out))
    print(json.dumps({"outputs": names, "version": cv2.__version__}))
except Exception as exc:
    text = " ".join(str(exc).split())
    print(json.dumps({"error": text[text.find("error: ") + 7:][:300] if "error: " in text else text[:300]}))
'''


def available(python: str = PYTHON) -> str | None:
    """OpenCV's version when ``python`` imports cv2 with a Caffe importer, else None."""
    try:
        done = subprocess.run([python, "-c", "import cv2; cv2.dnn.readNetFromCaffe; print(cv2.__version__)"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def opencv_forward(prototxt: str | os.PathLike[str], caffemodel: str | os.PathLike[str],
                   inputs: dict[str, np.ndarray], python: str = PYTHON, timeout: float = 900,
                   extra_layers: list[str] = ()) -> tuple[dict[str, np.ndarray], str | None]:
    """OpenCV's outputs (layer name -> array: the net's output layers, then ``extra_layers``)
    for ``inputs``, or ({}, its error line)."""
    with tempfile.TemporaryDirectory() as folder:
        for i, value in enumerate(inputs.values()):  # blob names may hold '/': files by index
            np.save(Path(folder) / f"in_{i}.npy", np.ascontiguousarray(value, np.float32))
        (Path(folder) / "inputs.json").write_text(json.dumps(list(inputs)))
        try:
            done = subprocess.run([python, "-c", _RUNNER, os.fspath(prototxt), os.fspath(caffemodel), folder,
                                   *extra_layers],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {}, f"OpenCV did not finish in {timeout:.0f} s"
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return {}, f"OpenCV crashed (exit {done.returncode}): {tail[:200]}"
        said = json.loads(lines[-1])
        if "error" in said:
            # a prototxt OpenCV's caffe.proto cannot read: protobuf names the field on stderr
            parse = [line.split("NetParameter: ", 1)[1] for line in done.stderr.splitlines()
                     if "Error parsing text-format" in line and "NetParameter: " in line]
            if "Failed to parse" in said["error"] and parse:
                return {}, f"cannot parse the prototxt: {parse[0].replace('opencv_caffe.', '')}"
            return {}, said["error"]
        return {name: np.load(Path(folder) / f"out_{i}.npy") for i, name in enumerate(said["outputs"])}, None
