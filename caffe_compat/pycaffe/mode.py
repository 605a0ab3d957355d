"""pycaffe's process-wide settings: CPU or GPU mode, the device id, the random seed, logging.

Caffe keeps the mode in a global; so do we. Nets and solvers made afterwards are built on the
device it names, and a Net moves to it at its next forward if the mode changed in between.
``set_mode_gpu()`` on a machine without CUDA says so once and stays on the CPU, so notebooks
written for a GPU box still run.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger("caffe_compat.pycaffe")

_mode = {"gpu": False, "device_id": 0, "warned": False}


def set_mode_cpu() -> None:
    _mode["gpu"] = False


def set_mode_gpu() -> None:
    _mode["gpu"] = True
    if not torch.cuda.is_available() and not _mode["warned"]:
        _mode["warned"] = True
        log.warning("set_mode_gpu: no CUDA device is available; running on the CPU")


def set_device(device_id: int) -> None:
    """The GPU used in GPU mode (Caffe's ``set_device``)."""
    _mode["device_id"] = int(device_id)


def device() -> torch.device:
    """Where nets live now: ``cuda:<id>`` in GPU mode with CUDA present, else the CPU."""
    if _mode["gpu"] and torch.cuda.is_available():
        return torch.device("cuda", _mode["device_id"])
    return torch.device("cpu")


def set_random_seed(seed: int) -> None:
    """Seed every RNG fillers, Dropout and shuffles draw from (Caffe's ``set_random_seed``)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def init_log(level: int = 0, *_args) -> None:
    """Caffe's ``init_log``: library log lines at ``level`` (0 INFO, 1 WARNING, 2 ERROR) and up."""
    logging.getLogger("caffe_compat").setLevel({0: logging.INFO, 1: logging.WARNING}.get(level, logging.ERROR))


def layer_type_list() -> list[str]:
    """Every registered layer type, sorted (Caffe's ``layer_type_list``)."""
    import caffe_compat.net.layers  # noqa: F401  (registers the built-in layers)
    from caffe_compat.net.registry import LAYERS

    return sorted(k for k in LAYERS if not k.startswith("Python:"))
