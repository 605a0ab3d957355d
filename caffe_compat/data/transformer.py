"""Caffe's ``DataTransformer`` (``transform_param``), bit-exact, on numpy and on torch batches.

Per image Caffe draws ``mirror && Rand(2)`` first, then (TRAIN with crop_size) the random row
and column offsets; TEST crops the centre (``(H - crop) / 2``). Pixels become float32 and get
``(pixel - mean) * scale`` where ``mean`` is the mean_file value at the pixel's *source*
position (so the mean is cropped with the image and mirrored with it) or the channel's
mean_value. Those float32 operations are exact IEEE ops, so any device gives Caffe's bits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from caffe_compat.data.datum import datum_array, decode_flag
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.io.blob import read_binaryproto
from caffe_compat.proto import TEST, TRAIN, caffe_pb2


@dataclass(frozen=True)
class CropPlan:
    """The random choices Caffe makes for one image: crop offsets and whether to mirror."""

    h_off: int
    w_off: int
    mirror: bool


def read_mean_file(path: str | os.PathLike[str]) -> np.ndarray:
    """A mean.binaryproto (num=1 x C x H x W, as compute_image_mean writes it) as float32 CxHxW."""
    mean = read_binaryproto(path)
    if mean.ndim not in (3, 4) or (mean.ndim == 4 and mean.shape[0] != 1):
        raise CaffeCompatError(f"{where(path)}: a mean image must be 1xCxHxW, got shape {mean.shape}")
    return np.asarray(mean.reshape(mean.shape[-3:]), np.float32)


class DataTransformer:
    """One layer's ``transform_param`` applied as Caffe does, for a given phase."""

    def __init__(self, param: caffe_pb2.TransformationParameter | None = None, phase: int = TEST,
                 mean: np.ndarray | None = None) -> None:
        """``mean`` overrides reading ``param.mean_file`` (e.g. an array already in memory)."""
        param = param if param is not None else caffe_pb2.TransformationParameter()
        if param.HasField("mean_file") and len(param.mean_value):
            raise CaffeCompatError("transform_param: cannot specify mean_file and mean_value at the same time")
        if param.force_color and param.force_gray:
            raise CaffeCompatError("transform_param: cannot set both force_color and force_gray")
        self.phase = phase
        self.crop_size = int(param.crop_size)
        self.scale = np.float32(param.scale)
        self.mirror = bool(param.mirror)
        self.decode_flag = decode_flag(param.force_color, param.force_gray)
        if mean is None and param.HasField("mean_file"):
            mean = read_mean_file(param.mean_file)
        self.mean = None if mean is None else np.ascontiguousarray(mean, np.float32)
        self.mean_values = np.asarray(param.mean_value, np.float32)
        self._torch_mean: dict[tuple[torch.device, int], torch.Tensor] = {}

    @property
    def needs_rng(self) -> bool:
        return self.mirror or (self.phase == TRAIN and self.crop_size > 0)

    def output_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Caffe's ``InferBlobShape`` for one CxHxW input, with its checks as clear errors."""
        c, h, w = shape
        cs = self.crop_size
        if c <= 0:
            raise CaffeCompatError(f"transform_param: input has {c} channels")
        if cs and (h < cs or w < cs):
            raise CaffeCompatError(f"transform_param: crop_size {cs} is larger than the {h}x{w} input")
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise CaffeCompatError(
                f"transform_param: mean_file has shape {self.mean.shape}, input is {(c, h, w)}"
            )
        if self.mean_values.size not in (0, 1, c):
            raise CaffeCompatError(
                f"transform_param: specify either 1 mean_value or as many as channels ({c}), "
                f"got {self.mean_values.size}"
            )
        return (c, cs or h, cs or w)

    def plan(self, height: int, width: int, rng: np.random.Generator | None) -> CropPlan:
        """Draw Caffe's per-image choices in Caffe's order (mirror, then row, then column)."""
        if self.needs_rng and rng is None:
            raise ValueError("this transform_param is random (mirror or TRAIN crop): pass an rng")
        mirror = bool(self.mirror and rng.integers(2))
        cs = self.crop_size
        if not cs:
            return CropPlan(0, 0, mirror)
        if self.phase == TRAIN:
            return CropPlan(int(rng.integers(height - cs + 1)), int(rng.integers(width - cs + 1)), mirror)
        return CropPlan((height - cs) // 2, (width - cs) // 2, mirror)

    def apply(self, image: np.ndarray, plan: CropPlan, out: np.ndarray | None = None) -> np.ndarray:
        """Transform one CxHxW uint8/float32 image with a given plan into float32 CxH'xW'.

        ``out`` (e.g. a slot of a batch array) receives the result without an extra copy.
        Mirroring only changes where results are stored: every value is computed from the
        pixel and mean at the same source position, exactly as Caffe's loop does.
        """
        c, h, w = self.output_shape(image.shape)
        rows = slice(plan.h_off, plan.h_off + h)
        cols = slice(plan.w_off, plan.w_off + w)
        if out is None:
            out = np.empty((c, h, w), np.float32)
        target = out[:, :, ::-1] if plan.mirror else out
        region = image[:, rows, cols]
        if self.mean is not None:
            np.subtract(region, self.mean[:, rows, cols], out=target, dtype=np.float32)
        elif self.mean_values.size:
            means = np.broadcast_to(self.mean_values, (c,))[:, None, None]
            np.subtract(region, means, out=target, dtype=np.float32)
        else:
            target[...] = region
        if self.scale != 1:
            np.multiply(out, self.scale, out=out)
        return out

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Draw a plan and transform one CxHxW image."""
        return self.apply(image, self.plan(image.shape[1], image.shape[2], rng))

    def transform_datum(self, datum: caffe_pb2.Datum, rng: np.random.Generator | None = None) -> np.ndarray:
        """Caffe's ``Transform(const Datum&)``: decode encoded datums (force_color/gray), then transform."""
        return self(datum_array(datum, self.decode_flag), rng)

    def apply_torch(self, batch: torch.Tensor, plans: torch.Tensor | Sequence[CropPlan]) -> torch.Tensor:
        """Transform an NxCxHxW batch (uint8 or float, any device) with one plan per item.

        Meant for a uint8 batch already on the GPU: cropping, mirroring, mean and scale run
        there, and the float32 result equals :meth:`apply` bit for bit. ``plans`` is a list of
        :class:`CropPlan` or an int64 Nx3 tensor of (h_off, w_off, mirror) rows; a pinned one
        goes to the GPU without stalling it (nothing here waits for the device).
        """
        n, c, h, w = batch.shape
        _, oh, ow = self.output_shape((c, h, w))
        device = batch.device
        if not isinstance(plans, torch.Tensor):
            plans = torch.tensor([(p.h_off, p.w_off, p.mirror) for p in plans], dtype=torch.int64)
        plans = plans.to(device, non_blocking=True)
        h_off, w_off, flip = plans[:, 0], plans[:, 1], plans[:, 2].bool()
        ar_h = torch.arange(oh, device=device)
        ar_w = torch.arange(ow, device=device)
        rows = (h_off[:, None] + ar_h)[:, :, None]  # N x oh x 1
        cols = (w_off[:, None] + torch.where(flip[:, None], ow - 1 - ar_w, ar_w))[:, None, :]
        items = torch.arange(n, device=device)[:, None, None]
        out = batch[items, :, rows, cols].permute(0, 3, 1, 2).to(torch.float32)  # N x C x oh x ow
        if self.mean is not None:
            out = out - self._device_mean(device, c)[:, rows, cols].permute(1, 0, 2, 3)
        elif self.mean_values.size:
            out = out - self._device_mean(device, c).view(1, c, 1, 1)
        if self.scale != 1:
            out = out * float(self.scale)  # a float32 scalar: the same float32 product as numpy's
        return out.contiguous()

    def _device_mean(self, device: torch.device, channels: int) -> torch.Tensor:
        """The mean image (or the mean values, one per channel), copied to ``device`` once."""
        key = (device, channels)
        if key not in self._torch_mean:
            mean = self.mean if self.mean is not None else np.broadcast_to(self.mean_values, (channels,)).copy()
            self._torch_mean[key] = torch.from_numpy(mean).to(device)
        return self._torch_mean[key]
