"""pycaffe's ``caffe.io``: blob/datum <-> array conversions, image loading, ``Transformer``.

Behaviour follows pycaffe's: ``load_image`` gives float32 RGB (or grey) in [0, 1] as H x W x K;
``Transformer.preprocess`` resizes to the input's H x W, transposes, swaps channels, applies
``raw_scale``, subtracts the mean, applies ``input_scale``. Images are read and resized with
OpenCV (already a dependency) instead of scikit-image: bilinear ``resize_image`` and 8-bit
decoding give the same pixels, grey conversion uses scikit-image's weights; only skimage's
anti-aliasing when shrinking is not reproduced.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np

from caffe_compat.data.datum import datum_array
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.blob import array_to_blob, blob_to_array
from caffe_compat.proto import caffe_pb2

_GREY = np.array([0.2125, 0.7154, 0.0721])  # skimage.color.rgb2gray's weights
_INTERPOLATION = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}


# ---------------------------------------------------------------------------- protos


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or diff) in its shape (legacy 4-d when it has num/channels/...)."""
    if not return_diff:
        return blob_to_array(blob, "blobproto").astype(np.float64)
    values = np.asarray(blob.diff, dtype=np.float64)
    legacy = any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
    return values.reshape((blob.num, blob.channels, blob.height, blob.width) if legacy else tuple(blob.shape.dim))


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """A BlobProto with ``shape`` = the array's and float32 values."""
    return array_to_blob(np.asarray(arr), diff=None if diff is None else np.asarray(diff))


def arraylist_to_blobprotovector_str(arraylist: Sequence[np.ndarray]) -> bytes:
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data: bytes) -> list[np.ndarray]:
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """A Datum of a C x H x W array: uint8 as ``data`` bytes, anything else as ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """A Datum's pixels as C x H x W (uint8 for ``data``, float64 for ``float_data``; encoded
    datums are decoded, which pycaffe's could not do)."""
    try:
        array = datum_array(datum)
    except ValueError as exc:
        raise CaffeCompatError(f"datum: {exc}") from None
    return array if array.dtype == np.uint8 else array.astype(np.float64)


# ---------------------------------------------------------------------------- images


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """An image as float32 in [0, 1]: H x W x 3 RGB, or H x W x 1 grey with ``color=False``."""
    img = cv2.imread(str(filename), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CaffeCompatError(f"{filename}: not an image OpenCV can read")
    scale = float(np.iinfo(img.dtype).max) if img.dtype.kind in "ui" else 1.0
    img = img.astype(np.float64) / scale
    if img.ndim == 3:
        img = img[:, :, 2::-1] if img.shape[2] >= 3 else img[:, :, :1]  # BGR(A) -> RGB
        if not color and img.shape[2] == 3:
            img = img @ _GREY
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    if color and img.shape[2] == 1:
        img = np.tile(img, (1, 1, 3))
    return img


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """``im`` (H x W x K) resized to ``new_dims`` (height, width), float32."""
    height, width = int(new_dims[0]), int(new_dims[1])
    im = np.asarray(im, dtype=np.float32)
    if im.shape[0] == height and im.shape[1] == width:
        return im.copy()
    if im.min() == im.max():  # a constant image stays exactly constant
        return np.full((height, width, im.shape[-1]), im.min(), np.float32)
    flag = _INTERPOLATION.get(interp_order, cv2.INTER_LINEAR)
    channels = [cv2.resize(np.ascontiguousarray(im[:, :, k]), (width, height), interpolation=flag)
                for k in range(im.shape[-1])]
    return np.stack(channels, axis=-1).astype(np.float32)


def oversample(images: Sequence[np.ndarray], crop_dims: Sequence[int]) -> np.ndarray:
    """The 4 corner and the centre crops of every image, and their mirrors: 10 per image."""
    shape = np.array(images[0].shape)
    crop = np.array(crop_dims)
    starts = [(i, j) for i in (0, shape[0] - crop[0]) for j in (0, shape[1] - crop[1])]
    centre = shape[:2] / 2.0 - crop / 2.0
    starts.append((int(centre[0]), int(centre[1])))
    crops = np.empty((10 * len(images), crop[0], crop[1], shape[-1]), dtype=np.float32)
    at = 0
    for image in images:
        for i, j in starts:
            crops[at] = image[i : i + crop[0], j : j + crop[1], :]
            at += 1
        crops[at : at + 5] = crops[at - 5 : at, :, ::-1, :]  # mirrored
        at += 5
    return crops


# ---------------------------------------------------------------------------- Transformer


class Transformer:
    """Turns images (H x W x K) into net inputs and back, per input blob (pycaffe's)."""

    def __init__(self, inputs: Mapping[str, Sequence[int]]) -> None:
        self.inputs = {name: tuple(shape) for name, shape in inputs.items()}
        self.transpose: dict[str, tuple[int, ...]] = {}
        self.channel_swap: dict[str, tuple[int, ...]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def _check(self, name: str) -> None:
        if name not in self.inputs:
            raise CaffeCompatError(f"{name} is not one of the net inputs: {self.inputs}")

    def preprocess(self, name: str, data: np.ndarray) -> np.ndarray:
        """H' x W' x K -> K x H x W float32 for the net."""
        self._check(name)
        out = np.asarray(data).astype(np.float32, copy=False)
        size = self.inputs[name][2:]
        if out.shape[:2] != size:
            out = resize_image(out, size)
        if name in self.transpose:
            out = out.transpose(self.transpose[name])
        if name in self.channel_swap:
            out = out[list(self.channel_swap[name]), :, :]
        out = np.array(out, dtype=np.float32)  # in-place float32 arithmetic from here, as pycaffe's
        if name in self.raw_scale:
            out *= self.raw_scale[name]
        if name in self.mean:
            out -= self.mean[name]
        if name in self.input_scale:
            out *= self.input_scale[name]
        return out

    def deprocess(self, name: str, data: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`preprocess` (without the resize)."""
        self._check(name)
        out = np.array(data, copy=True).squeeze()
        if name in self.input_scale:
            out = out / self.input_scale[name]
        if name in self.mean:
            out = out + self.mean[name]
        if name in self.raw_scale:
            out = out / self.raw_scale[name]
        if name in self.channel_swap:
            out = out[np.argsort(self.channel_swap[name]), :, :]
        if name in self.transpose:
            out = out.transpose(np.argsort(self.transpose[name]))
        return out

    def set_transpose(self, name: str, order: Sequence[int]) -> None:
        """Axis order, e.g. (2, 0, 1) for H x W x K images into K x H x W."""
        self._check(name)
        if len(order) != len(self.inputs[name]) - 1:
            raise CaffeCompatError("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[name] = tuple(order)

    def set_channel_swap(self, name: str, order: Sequence[int]) -> None:
        """Channel order after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check(name)
        if len(order) != self.inputs[name][1]:
            raise CaffeCompatError("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[name] = tuple(order)

    def set_raw_scale(self, name: str, scale: float) -> None:
        """Scale before the mean (255 for models trained on [0, 255] pixels)."""
        self._check(name)
        self.raw_scale[name] = scale

    def set_mean(self, name: str, mean: np.ndarray) -> None:
        """Per-channel (K,) or elementwise (K x H x W, resized if needed) mean to subtract."""
        self._check(name)
        mean = np.asarray(mean)
        if mean.ndim == 1:
            if mean.shape[0] != self.inputs[name][1]:
                raise CaffeCompatError("Mean channels incompatible with input.")
            mean = mean[:, None, None]
        else:
            shape = (1, *mean.shape) if mean.ndim == 2 else mean.shape
            if len(shape) != 3:
                raise CaffeCompatError("Mean shape invalid")
            mean = mean.reshape(shape)
            want = self.inputs[name][1:]
            if shape != want:
                low, high = mean.min(), mean.max()
                unit = (mean - low) / (high - low)
                mean = resize_image(unit.transpose(1, 2, 0), want[1:]).transpose(2, 0, 1) * (high - low) + low
        self.mean[name] = mean

    def set_input_scale(self, name: str, scale: float) -> None:
        """Scale after the mean."""
        self._check(name)
        self.input_scale[name] = scale
