"""``caffe.Datum`` <-> arrays, with the exact field layout Caffe's tools write.

Raw datums (``CVMatToDatum``) set channels/height/width, planar BGR bytes, the label (also 0)
and ``encoded: false`` explicitly; encoded datums set only data, label and ``encoded: true``.
Decoding follows ``DecodeDatumNative`` (``IMREAD_UNCHANGED``) unless the transform forces colour
or grey, like ``DataTransformer``.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

from caffe_compat.io.wire import LENGTH_DELIMITED, VARINT, WireError, iter_fields, read_varint
from caffe_compat.proto import caffe_pb2

#: cv2.IMREAD_UNCHANGED. OpenCV is imported only to decode encoded datums: LMDB tools that see raw
#: datums alone (compute-image-mean, inspect) start 0.1 s faster without it.
IMREAD_UNCHANGED = -1


def raw_datum(chw: np.ndarray, label: int) -> bytes:
    """Serialized raw Datum of a uint8 CxHxW array (what ``CVMatToDatum`` + label gives)."""
    c, h, w = chw.shape
    datum = caffe_pb2.Datum(
        channels=c, height=h, width=w, data=chw.tobytes(), label=label, encoded=False
    )
    return datum.SerializeToString()


def encoded_datum(data: bytes, label: int) -> bytes:
    """Serialized encoded Datum (``ReadFileToDatum`` / ``imencode`` path): no shape fields."""
    return caffe_pb2.Datum(data=data, label=label, encoded=True).SerializeToString()


def parse_datum(value: bytes) -> caffe_pb2.Datum:
    """The Datum in ``value``; ValueError (located by callers) if it is not one."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError:
        raise ValueError(f"not a Caffe Datum ({len(value)} bytes that do not parse as one)") from None
    return datum


def decode_flag(force_color: bool = False, force_gray: bool = False) -> int:
    """Caffe's decode mode for encoded datums: native unless a colour mode is forced."""
    if force_color and force_gray:
        raise ValueError("cannot set both force_color and force_gray")
    if force_color or force_gray:
        from caffe_compat.data.imageio import imread_flag

        return imread_flag(force_color)
    return IMREAD_UNCHANGED


def datum_array(datum: caffe_pb2.Datum, flag: int = IMREAD_UNCHANGED) -> np.ndarray:
    """The datum's pixels as CxHxW: uint8 for data/encoded datums, float32 for float_data.

    ValueError (caught and located by callers) for an undecodable or non-8-bit encoded image or
    a data field whose size disagrees with channels*height*width, or an empty datum.
    """
    if datum.encoded:
        from caffe_compat.data.imageio import decode_image, hwc_to_chw

        img = decode_image(datum.data, flag)
        if img is None:
            raise ValueError("could not decode the encoded image")
        if img.dtype != np.uint8:
            raise ValueError(f"image data type must be unsigned byte, got {img.dtype}")
        return hwc_to_chw(img)
    shape = (datum.channels, datum.height, datum.width)
    count = shape[0] * shape[1] * shape[2]
    if count <= 0:
        raise ValueError(f"empty datum: channels x height x width is {'x'.join(map(str, shape))}")
    data = datum.data  # every access copies the bytes: take them once
    if data:
        if len(data) != count:
            raise ValueError(f"data has {len(data)} bytes, shape {shape} needs {count}")
        return np.frombuffer(data, np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise ValueError(f"float_data has {len(datum.float_data)} values, shape {shape} needs {count}")
    return np.asarray(datum.float_data, np.float32).reshape(shape)



def raw_datum_view(value: memoryview) -> tuple[np.ndarray, int] | None:
    """Pixels (a zero-copy view into ``value``) and label of a plain raw uint8 Datum.

    Walks the wire format instead of parsing, since protobuf would copy the pixel bytes twice;
    returns None for anything else (encoded, float_data, malformed, size mismatch) so callers
    fall back to :func:`parse_datum` + :func:`datum_array` and their checks and messages.
    """
    varints = {}
    span = (0, 0)
    try:
        for f in iter_fields(value, 0, len(value)):
            if f.wire_type == VARINT and f.number in (1, 2, 3, 5, 7):
                varints[f.number] = read_varint(value, f.value_start, f.end)[0]
            elif f.wire_type == LENGTH_DELIMITED and f.number == 4:
                span = (f.value_start, f.end)
            else:
                return None
    except WireError:
        return None
    if varints.get(7):
        return None
    shape = (varints.get(1, 0), varints.get(2, 0), varints.get(3, 0))
    if not span[1] - span[0] or span[1] - span[0] != shape[0] * shape[1] * shape[2]:
        return None
    label = varints.get(5, 0) & 0xFFFFFFFF  # an int32 field: the low 32 bits, two's complement
    label = label - (1 << 32) if label >= 1 << 31 else label
    return np.frombuffer(value[span[0] : span[1]], np.uint8).reshape(shape), label


class RawLayout:
    """The byte layout of one plain raw Datum, to spot others laid out the same at a glance.

    Caffe's tools write every raw datum of a DB with the same header (channels, height, width,
    the data key and length) and a short tail (label, ``encoded: false``). A value with this
    exact header and a tail of only label / ``encoded: 0`` varints has the same shape and its
    pixels at the same offset, i.e. what :func:`raw_datum_view` would return, without walking
    the wire format each time. Tails are few (one per label value), so their check is cached.
    """

    _MAX_TAILS = 4096

    def __init__(self, header: bytes, shape: tuple[int, int, int]) -> None:
        self.header = header
        self.shape = shape
        self.size = shape[0] * shape[1] * shape[2]
        self.length = len(header) + self.size  # where the tail starts
        self._tails: dict[bytes, bool] = {}

    @classmethod
    def of(cls, value: memoryview) -> "RawLayout | None":
        """The layout of ``value`` if it is a plain raw datum whose header holds only the shape."""
        view = raw_datum_view(value)
        if view is None:
            return None
        data_start = None
        for f in iter_fields(value, 0, len(value)):  # valid: raw_datum_view walked it already
            if f.number == 4:
                data_start = f.value_start
                break
            if f.number not in (1, 2, 3):
                return None
        return cls(bytes(value[:data_start]), view[0].shape)

    def pixels(self, value: memoryview) -> np.ndarray | None:
        """Zero-copy CxHxW pixels of ``value`` if it has this layout, else None (use the full path)."""
        flat = self.flat_pixels(value)
        return None if flat is None else flat.reshape(self.shape)

    def flat_pixels(self, value: memoryview) -> np.ndarray | None:
        """:meth:`pixels` as one flat array (the mean's hot loop saves the reshape)."""
        if len(value) < self.length or value[: len(self.header)] != self.header:
            return None
        tail = bytes(value[self.length :])
        ok = self._tails.get(tail)
        if ok is None:
            ok = _is_raw_tail(tail)
            if len(self._tails) >= self._MAX_TAILS:
                self._tails.clear()
            self._tails[tail] = ok
        if not ok:
            return None
        return np.frombuffer(value, np.uint8, self.size, len(self.header))


def _is_raw_tail(tail: bytes) -> bool:
    """Whether ``tail`` holds only label (5) and ``encoded: 0`` (7) varints."""
    try:
        for f in iter_fields(memoryview(tail), 0, len(tail)):
            if f.wire_type != VARINT or f.number not in (5, 7):
                return False
            if f.number == 7 and read_varint(tail, f.value_start, f.end)[0]:
                return False
    except WireError:
        return False
    return True


def example_datum(data: bytes, label: int, channels: int, height: int, width: int) -> bytes:
    """Serialized Datum as Caffe's example converters (MNIST, CIFAR-10) write it: shape, data and
    label, and no ``encoded`` field (which ``CVMatToDatum`` sets)."""
    return caffe_pb2.Datum(channels=channels, height=height, width=width, data=data,
                           label=label).SerializeToString()
