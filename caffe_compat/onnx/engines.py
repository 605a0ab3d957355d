"""The PyTorch inference engine behind ``predict --engine torch``: the Caffe net itself, made fast.

WHY a second engine: ONNX Runtime is the portable path, but on a GPU the net as a PyTorch
module (BatchNorm folded into the convolutions, channels_last, bf16 autocast, and
``torch.compile(mode="reduce-overhead")``, which captures CUDA graphs for a fixed batch size)
serves more images per second. The same code runs on the CPU (``device="cpu"``), which is how
the tests check it.

The engine looks like an ONNX Runtime session to :mod:`caffe_compat.onnx.predict`
(``get_inputs``, ``get_outputs``, ``run``, ``get_modelmeta``, ``get_providers``): its input
transform (the data layer's ``transform_param`` or the mean/scale flags) runs on the device and
is reported as model metadata, so the host sends raw uint8 pixels exactly as it does to an ONNX
model exported with its transform.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import read_net
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.fold import fold_batchnorm
from caffe_compat.net.registry import TEST
from caffe_compat.net.timing import cuda_device
from caffe_compat.onnx.transform import METADATA_KEY, InputTransform


@dataclass(frozen=True)
class _Arg:
    """What ONNX Runtime's NodeArg tells ``predict``: a name and a shape (None = any size)."""

    name: str
    shape: list[int | None]


@dataclass(frozen=True)
class _Meta:
    custom_metadata_map: dict[str, str]


class TorchEngine:
    """A CaffeNet (TEST phase, BatchNorm folded) with its input transform, on one device.

    ``gpu``: Caffe's ``-gpu`` value (None: the CPU). ``compile``: ``torch.compile`` with
    ``mode="reduce-overhead"`` at the fixed batch ``batch_size`` (the last chunk is padded).
    ``channels_last``: NHWC activations (what tensor cores want). ``mean_file`` / ``mean_value`` /
    ``scale``: the transform when the prototxt has no data layer with a ``transform_param``.
    """

    def __init__(self, model: str | os.PathLike[str], weights: str | os.PathLike[str], *, gpu: str | None = None,
                 device: str | torch.device | None = None, bf16: bool = False, compile: bool = False,
                 channels_last: bool = True, batch_size: int = 16, mean_file: str | os.PathLike[str] | None = None,
                 mean_value: Sequence[float] = (), scale: float | None = None) -> None:
        from caffe_compat.onnx.export import deploy_net_param, deploy_steps, fed_inputs, image_input, requested_transform

        self.device = torch.device(device if device is not None else cuda_device(gpu) if gpu is not None else "cpu")
        built = CaffeNet(read_net(model), phase=TEST)
        steps, _ = deploy_steps(built)
        fed = fed_inputs(steps)
        self.input_name = image_input(fed)
        shape = fed[self.input_name][1]
        transform, _ = requested_transform(steps, mean_file, mean_value, scale, "bgr", False, None)
        others = [blob for blob in fed if blob != self.input_name]
        if others:
            raise CaffeCompatError(f"{model}: the torch engine feeds one image input, the net also takes "
                                   f"{', '.join(others)}")
        self.fixed = batch_size if compile else None
        net = CaffeNet(deploy_net_param(built.name, steps, {self.input_name: (self.fixed or shape[0], *shape[1:])}),
                       phase=TEST)
        report = net.copy_from(weights)
        if report.initialised:
            raise CaffeCompatError(f"{weights}: has no weights for layer(s) {', '.join(report.initialised[:5])} of "
                                   f"{model}: weights of another net?")
        fold_batchnorm(net)
        net.eval().requires_grad_(False)
        self.transform = transform if transform is not None else InputTransform()
        self.transform = InputTransform(self.transform.mean, self.transform.scale, "bgr", True, self.transform.resize,
                                        self.transform.crop_size, self.transform.mean_source)
        self.net = net.to(self.device)
        self.channels_last = channels_last and len(shape) == 4
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.prepare = self.transform.torch_module().to(self.device)
        self.bf16 = bf16
        self.shape = [self.fixed, *shape[1:]]
        self.outputs = list(net.output_names)
        self._forward = torch.compile(self._run, mode="reduce-overhead", dynamic=False) if compile else self._run
        self.description = (f"torch {self.device}{' bf16' if bf16 else ''}{' channels_last' if self.channels_last else ''}"
                            f"{f' compiled (batch {batch_size})' if compile else ''}")

    def _run(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.prepare(pixels)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            out = self.net({self.input_name: x})
        return {name: value.float() for name, value in out.items()}

    # ------------------------------------------------------------------ the session interface

    def get_inputs(self) -> list[_Arg]:
        return [_Arg(self.input_name, list(self.shape))]

    def get_outputs(self) -> list[_Arg]:
        return [_Arg(name, []) for name in self.outputs]

    def get_providers(self) -> list[str]:
        return [self.description]

    def get_modelmeta(self) -> _Meta:
        return _Meta({METADATA_KEY: self.transform.to_metadata(self.input_name)})

    def run(self, names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for one batch of raw pixels (uint8 or float NxCxHxW), as numpy."""
        pixels = torch.from_numpy(np.ascontiguousarray(feeds[self.input_name]))
        if self.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode():
            out = self._forward(pixels)
            return [out[name].cpu().numpy() for name in (names or self.outputs)]
