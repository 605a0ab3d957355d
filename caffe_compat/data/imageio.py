"""Image decoding, resizing and encoding as Caffe's ``io.cpp`` does it through OpenCV.

Caffe reads with ``cv::imread`` (``IMREAD_COLOR`` -> 8-bit BGR, or ``IMREAD_GRAYSCALE`` with
``--gray``), resizes with ``cv::resize`` (bilinear) only when both target sides are > 0 and
re-encodes with ``cv::imencode``. We decode from the file's bytes instead of its path, so one
read serves both the pixels and ``--encoded``'s verbatim copy and any path bytes work.

The two OpenCV entry points differ only in libjpeg's data source. ``cv::imread`` uses libjpeg's
stdio source, which at end of file hands the decoder a fake end-of-image marker (FF D9) on every
further read, forever; ``cv::imdecode``'s memory source suspends instead, and OpenCV gives up.
So a JPEG gets as many FF D9 pairs appended as libjpeg can still ask for (one marker segment,
at most 65,535 bytes, can be skipped or read from them before the next marker is an EOI): the
decoder then reads byte for byte what ``cv::imread`` reads from the file, also where the cut
falls inside a header (e.g. the start-of-scan segment) and not just in the entropy-coded data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

_JPEG_SOI = b"\xff\xd8"
_JPEG_SIGNATURE = b"\xff\xd8\xff"  # what OpenCV's JPEG decoder claims a buffer by
_JPEG_EOI = b"\xff\xd9"
# libjpeg's stdio source past end of file: FF D9 on every read. One marker segment (<= 65,535
# bytes) plus the next marker is the most the decoder can read from it before it stops.
_STDIO_EOF_FILL = _JPEG_EOI * (65_536 // 2 + 2)


def imread_flag(is_color: bool) -> int:
    """Caffe's ``CV_LOAD_IMAGE_COLOR`` / ``CV_LOAD_IMAGE_GRAYSCALE`` choice."""
    return cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE


def is_truncated_jpeg(buf: bytes) -> bool:
    """A JPEG with no end-of-image marker near its end (cut-off download or copy)."""
    return buf.startswith(_JPEG_SOI) and _JPEG_EOI not in buf[-1024:]


def decode_image(buf: bytes, flag: int) -> np.ndarray | None:
    """``cv::imread``'s pixels from a file's bytes; None if OpenCV cannot decode them.

    A JPEG is followed by what libjpeg's file reader reads past the end of a file (see the
    module docstring): unread after a whole file's EOI, it makes a truncated file decode as
    ``cv::imread`` decodes it, where ``cv::imdecode`` alone refuses it (OpenCV 5) or decodes
    different pixels (OpenCV 4.10). Always, not only when no EOI is near the end: a cut file
    may hold an EOI of its own (an EXIF thumbnail's).
    """
    if not buf:
        return None
    if buf.startswith(_JPEG_SIGNATURE):
        buf += _STDIO_EOF_FILL
    return cv2.imdecode(np.frombuffer(buf, np.uint8), flag)


def resize_like_caffe(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv::resize(img, Size(width, height))`` (INTER_LINEAR), only when both sides are > 0."""
    if height > 0 and width > 0:
        return cv2.resize(img, (width, height))
    return img


def hwc_to_chw(img: np.ndarray) -> np.ndarray:
    """OpenCV's interleaved HxWxC (or HxW) to Caffe's planar CxHxW, contiguous."""
    if img.ndim == 2:
        return img[None]
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def guess_encoding(name: bytes) -> str:
    """convert_imageset's guess: the lower-cased text after the last '.' (whole name if none)."""
    return os.fsdecode(name[name.rfind(b".") + 1 :]).lower()


def extension_matches(filename: bytes, encoding: str) -> bool:
    """io.cpp's ``matchExt``: lower-cased extension equals the encoding (``jpeg`` counts as ``jpg``)."""
    ext = guess_encoding(filename)
    encoding = encoding.lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def encode_image(img: np.ndarray, encoding: str) -> bytes:
    """``cv::imencode("." + encoding)``; ValueError for an encoding OpenCV cannot write."""
    try:
        ok, buf = cv2.imencode("." + encoding, img)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"OpenCV cannot encode images as '{encoding}'")
    return buf.tobytes()


@dataclass(frozen=True)
class LoadedImage:
    """A decoded (and possibly resized) image plus the file's own bytes."""

    pixels: np.ndarray  # HxWxC or HxW, uint8 (colour/grey modes always give 8 bit)
    file_bytes: bytes
    truncated: bool


class ImageReadError(Exception):
    """Why an image could not be read; ``reason`` is a short key for summaries."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def load_image(path: bytes, is_color: bool, height: int = 0, width: int = 0) -> LoadedImage:
    """Caffe's ``ReadImageToCVMat``: read, decode in colour/grey, resize when both sides > 0."""
    shown = repr(os.fsdecode(path))
    try:
        with open(path, "rb") as handle:
            buf = handle.read()
    except FileNotFoundError:
        raise ImageReadError("missing", f"{shown} does not exist") from None
    except IsADirectoryError:
        raise ImageReadError("directory", f"{shown} is a directory, not an image") from None
    except OSError as exc:
        raise ImageReadError("unreadable", f"cannot read {shown}: {exc.strerror}") from None
    except ValueError:  # a NUL byte in the name: a binary file was given as the list
        raise ImageReadError("unreadable", f"cannot read {shown}: the name contains a NUL byte") from None
    img = decode_image(buf, imread_flag(is_color))
    if img is None:
        raise ImageReadError("undecodable", f"{shown} is not an image OpenCV can decode")
    return LoadedImage(resize_like_caffe(img, height, width), buf, is_truncated_jpeg(buf))
