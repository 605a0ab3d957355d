"""Caffe's TEST-phase input transform (pixel type, channel order, mean, scale) inside the model.

WHY in the model: a deployed net is only right when fed exactly the pixels ``caffe test`` fed
it, and a mean file or a ``scale: 0.0125`` typed by hand at every call is how scores go wrong
silently. Exported with the transform, the ONNX graph takes raw pixels (uint8 or float, BGR or
RGB) and does ``(pixel - mean) * scale`` itself in float32, the same IEEE operations as Caffe's
DataTransformer, so its output is Caffe's bit for bit. What the host must still do (decode,
resize to the training images' size, centre crop) is written into the model's metadata under
:data:`METADATA_KEY`, and ``predict`` reads it from there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from caffe_compat.data.transformer import read_mean_file
from caffe_compat.errors import CaffeCompatError, where

METADATA_KEY = "caffe_compat.input_transform"
CHANNEL_ORDERS = ("bgr", "rgb")
MAX_RESIZE_PIXELS = 1 << 28  # as predict's --resize: one float32 colour image of it is 3 GiB already


@dataclass(frozen=True)
class InputTransform:
    """What the model does to its raw input before the first Caffe layer, and what the host does.

    ``mean``: CxHxW (a mean file already centre-cropped to the net's input, as Caffe crops it
    with the image) or C / 1 values, or None. ``channel_order``: the order the model's input
    takes ("rgb" inputs are flipped to Caffe's BGR inside the graph). ``uint8``: the input is
    uint8 and cast to float32 in the graph. ``resize`` / ``crop_size``: the host's part, the
    training images' size (convert_imageset's resize) and the TEST centre crop.
    """

    mean: np.ndarray | None = field(default=None, compare=False)
    scale: float = 1.0
    channel_order: str = "bgr"
    uint8: bool = False
    resize: tuple[int, int] | None = None
    crop_size: int = 0
    mean_source: str = ""  # where the mean came from (file name or "mean_value"), for the record

    @property
    def changes_values(self) -> bool:
        return self.mean is not None or self.scale != 1.0 or self.channel_order != "bgr" or self.uint8

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, input_shape: Sequence[int], mean_file: str | os.PathLike[str] | None = None,
              mean_value: Sequence[float] = (), scale: float = 1.0, channel_order: str = "bgr",
              uint8: bool = False, resize: tuple[int, int] | None = None, crop_size: int = 0) -> InputTransform:
        """The transform for a net input of shape (C, H, W) (batch axis excluded).

        A mean file larger than the input means Caffe's centre crop: the images are resized to
        the mean's size, cropped to the input, and the mean is cropped with them.
        """
        c, h, w = (int(d) for d in input_shape)
        order = channel_order.lower()
        if order not in CHANNEL_ORDERS:
            raise CaffeCompatError(f"--input-format must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
        if order == "rgb" and c != 3:
            raise CaffeCompatError(f"--input-format rgb needs a 3-channel input, the net's has {c}")
        if mean_file is not None and len(mean_value):
            raise CaffeCompatError("give either a mean file or mean values, not both")
        if not np.isfinite(scale) or scale == 0:
            raise CaffeCompatError(f"--scale must be a finite non-zero number, got {scale}")
        mean: np.ndarray | None = None
        source = ""
        if mean_file is not None:
            mean, resize, crop_size = _cropped_mean(read_mean_file(mean_file), mean_file, (c, h, w), resize, crop_size)
            source = os.path.basename(os.fspath(mean_file))
        elif len(mean_value):
            if len(mean_value) not in (1, c):
                raise CaffeCompatError(f"--mean_value: give 1 value or one per channel ({c}), got {len(mean_value)}")
            mean = np.asarray(np.broadcast_to(np.asarray(mean_value, np.float32), (c,)))
            source = "mean_value"
        if resize is not None and crop_size == 0 and tuple(resize) != (h, w):
            if h != w:
                raise CaffeCompatError(f"the net's input is {h}x{w} but images are resized to {resize[0]}x{resize[1]}; "
                                       "Caffe crops squares only")
            crop_size = h
        if crop_size and (crop_size != h or crop_size != w):
            raise CaffeCompatError(f"crop_size {crop_size} does not give the net's {h}x{w} input")
        scale = float(str(np.float32(scale)))  # the float32 Caffe multiplies by, in its shortest decimal form
        return cls(mean, scale, order, uint8, tuple(resize) if resize else None, int(crop_size), source)

    @classmethod
    def from_transform_param(cls, param, input_shape: Sequence[int], source_size: tuple[int, int] | None,
                             channel_order: str = "bgr", uint8: bool = False) -> InputTransform:
        """A train_val Data layer's ``transform_param`` (TEST phase: centre crop, no mirror).

        ``source_size``: the stored images' (H, W) when known (the LMDB's first datum), which is
        what ``predict`` resizes image files to; a mean file's size is used otherwise.
        """
        c, h, w = (int(d) for d in input_shape)
        crop = int(param.crop_size)
        resize = source_size if source_size is not None else None
        return cls.build((c, h, w), param.mean_file if param.HasField("mean_file") else None,
                         list(param.mean_value), float(param.scale), channel_order, uint8, resize, crop)

    # ------------------------------------------------------------------ applying

    def _mean_array(self, channels: int) -> np.ndarray | None:
        if self.mean is None:
            return None
        return self.mean if self.mean.ndim == 3 else self.mean.reshape(-1, 1, 1)

    def apply_numpy(self, batch: np.ndarray) -> np.ndarray:
        """The float32 NxCxHxW the first Caffe layer sees, from the model's raw input batch."""
        x = np.asarray(batch).astype(np.float32)
        if self.channel_order == "rgb":
            x = np.ascontiguousarray(x[:, ::-1])
        mean = self._mean_array(x.shape[1])
        if mean is not None:
            x = np.subtract(x, mean, dtype=np.float32)
        if self.scale != 1.0:
            x = np.multiply(x, np.float32(self.scale), dtype=np.float32)
        return x

    def torch_module(self) -> torch.nn.Module:
        """The same transform as a module (for the torch engine, on the engine's device)."""
        return _TorchTransform(self)

    # ------------------------------------------------------------------ recording

    def to_metadata(self, input_name: str) -> str:
        record: dict[str, Any] = {
            "input": input_name, "dtype": "uint8" if self.uint8 else "float32", "channel_order": self.channel_order,
            "resize": list(self.resize) if self.resize else None, "crop_size": self.crop_size,
            "mean": self.mean_source or None, "scale": self.scale,
        }
        if self.mean is not None and self.mean.ndim == 1:
            record["mean_value"] = [float(v) for v in self.mean]
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_metadata(cls, text: str, path: str | os.PathLike[str]) -> tuple[str, InputTransform]:
        """(input name, the host's part of the transform) from a model's metadata value; every
        field is checked, since a model file can come from anyone."""
        def bad(why: str) -> CaffeCompatError:
            return CaffeCompatError(f"{where(path)}: metadata '{METADATA_KEY}' is not valid: {why}")

        try:
            record = json.loads(text)
        except ValueError as exc:
            raise bad(f"not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise bad(f"a JSON {type(record).__name__}, not an object")
        name, order, dtype = record.get("input"), record.get("channel_order"), record.get("dtype")
        if not isinstance(name, str) or not name:
            raise bad("'input' must name the model's input")
        if order not in CHANNEL_ORDERS or dtype not in ("uint8", "float32"):
            raise bad(f"'channel_order' must be one of {', '.join(CHANNEL_ORDERS)} and 'dtype' uint8 or float32, "
                      f"got {order!r} and {dtype!r}")
        resize, crop, scale = record.get("resize"), record.get("crop_size", 0), record.get("scale", 1.0)
        if resize is not None and not (isinstance(resize, list) and len(resize) == 2
                                       and all(type(v) is int and v > 0 for v in resize)):
            raise bad(f"'resize' must be [height, width] of positive integers, got {str(resize)[:60]}")
        if resize is not None and resize[0] * resize[1] > MAX_RESIZE_PIXELS:
            raise bad(f"'resize' {resize[0]}x{resize[1]} is past any image (at most {MAX_RESIZE_PIXELS:,} pixels)")
        if type(crop) is not int or not 0 <= crop <= (min(resize) if resize else 1 << 16):
            raise bad(f"'crop_size' must be an integer from 0 to the resized size, got {str(crop)[:60]}")
        if type(scale) not in (int, float) or not np.isfinite(scale) or scale == 0:
            raise bad(f"'scale' must be a finite non-zero number, got {str(scale)[:60]}")
        mean = record.get("mean")
        transform = cls(None, float(scale), order, dtype == "uint8", tuple(resize) if resize else None, crop,
                        mean if isinstance(mean, str) else "")
        return name, transform

    def model_input(self, pixels: np.ndarray) -> np.ndarray:
        """Host pixels (float32 BGR NxCxHxW, resized and cropped) in the dtype and channel order
        the model's input takes."""
        if self.channel_order == "rgb":
            pixels = pixels[:, ::-1]
        return np.ascontiguousarray(pixels, np.uint8 if self.uint8 else np.float32)

    def describe(self) -> str:
        parts = [f"{'uint8' if self.uint8 else 'float32'} {self.channel_order.upper()} pixels"]
        if self.mean is not None:
            parts.append(f"minus the mean ({self.mean_source})")
        if self.scale != 1.0:
            parts.append(f"times {self.scale:g}")
        host = []
        if self.resize:
            host.append(f"resize to {self.resize[0]}x{self.resize[1]}")
        if self.crop_size:
            host.append(f"centre crop {self.crop_size}")
        text = "input transform in the graph: " + ", ".join(parts)
        return text + (f"; host: {', '.join(host)} (in the model's metadata)" if host else "")


def _cropped_mean(mean: np.ndarray, path, input_shape: tuple[int, int, int], resize: tuple[int, int] | None,
                  crop_size: int) -> tuple[np.ndarray, tuple[int, int], int]:
    """The part of a mean image that meets the net's input after Caffe's TEST centre crop."""
    c, h, w = input_shape
    mc, mh, mw = mean.shape
    if mc != c:
        raise CaffeCompatError(f"{where(path)}: the mean image has {mc} channels, the net's input {c}")
    if resize is not None and tuple(resize) != (mh, mw):
        raise CaffeCompatError(f"{where(path)}: the mean image is {mh}x{mw} but images are resized to "
                               f"{resize[0]}x{resize[1]}; Caffe needs them equal")
    if (mh, mw) == (h, w):
        return mean, (mh, mw), crop_size
    if mh < h or mw < w or h != w:
        raise CaffeCompatError(f"{where(path)}: a {mh}x{mw} mean image cannot be centre-cropped to the net's "
                               f"{h}x{w} input")
    top, left = (mh - h) // 2, (mw - w) // 2
    return np.ascontiguousarray(mean[:, top:top + h, left:left + w]), (mh, mw), crop_size or h


class _TorchTransform(torch.nn.Module):
    """``(float(x)[, BGR] - mean) * scale`` on whatever device the module is moved to."""

    def __init__(self, transform: InputTransform) -> None:
        super().__init__()
        self.flip = transform.channel_order == "rgb"
        self.scale = transform.scale
        mean = transform._mean_array(0)
        self.register_buffer("mean", None if mean is None else torch.from_numpy(np.array(mean, np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.flip:
            x = x.flip(1)
        if self.mean is not None:
            x = x - self.mean
        if self.scale != 1.0:
            x = x * self.scale
        return x


def model_transform(session, source: str | os.PathLike[str]) -> tuple[str, InputTransform] | None:
    """(input name, transform) recorded in a session's model metadata, or None for a model
    that takes Caffe's already transformed input."""
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        return None
    name, transform = InputTransform.from_metadata(text, source)
    inputs = {arg.name: arg for arg in session.get_inputs()}
    if name not in inputs:
        raise CaffeCompatError(f"{where(source)}: metadata '{METADATA_KEY}' names input '{name[:60]}', the model's "
                               f"are {', '.join(inputs)}")
    kind = getattr(inputs[name], "type", None)  # ONNX Runtime's 'tensor(float)'; our torch engine has none
    wanted = "tensor(uint8)" if transform.uint8 else "tensor(float)"
    if kind is not None and kind != wanted:
        raise CaffeCompatError(f"{where(source)}: metadata '{METADATA_KEY}' says the input is "
                               f"{'uint8' if transform.uint8 else 'float32'} but the model's input '{name}' is {kind}")
    return name, transform
