"""A minimal protobuf wire-format walker, so blob payloads never pass through protobuf.

Converting a parsed ``repeated float`` to numpy costs a Python-level step per element and a
second full copy of the data; a 528 MB caffemodel would need three copies in memory. Walking
the wire format ourselves finds where each packed payload lies in the file, so it can be read
straight into a numpy array, while protobuf parses only the small remainder ("skeleton").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Union

from google.protobuf.descriptor import Descriptor, FieldDescriptor

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
_FIXED_SIZE = {FIXED64: 8, FIXED32: 4}
_WIRE_NAMES = {VARINT: "a varint", FIXED64: "64-bit", LENGTH_DELIMITED: "length-delimited", FIXED32: "32-bit"}

# BlobProto field numbers whose packed payloads are cut out of the skeleton.
BLOB_DATA, BLOB_DOUBLE_DATA = 5, 8


class WireError(ValueError):
    """Malformed protobuf bytes; ``offset`` is the byte position of the offending field."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset


def read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``pos``; return (value, position after it)."""
    if pos < end and buf[pos] < 0x80:  # most keys and lengths fit one byte
        return buf[pos], pos + 1
    value = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError(start, "a number runs past the end of the data")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise WireError(start, "a number is longer than 10 bytes")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_key(number: int, wire_type: int) -> bytes:
    return encode_varint((number << 3) | wire_type)


def encode_length_delimited(number: int, payload: bytes | memoryview) -> bytes:
    return encode_key(number, LENGTH_DELIMITED) + encode_varint(len(payload)) + bytes(payload)


@dataclass(frozen=True)
class Field:
    """One field occurrence: its number, wire type, and byte spans in the buffer."""

    number: int
    wire_type: int
    start: int  # first byte of the key
    value_start: int  # first byte of the value (after the length prefix for LEN fields)
    end: int  # one past the last byte


def iter_fields(buf: memoryview, start: int, end: int) -> Iterator[Field]:
    """Yield the fields of the message occupying ``buf[start:end]``."""
    pos = start
    while pos < end:
        key, value_start = read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError(pos, "field number 0 is invalid")
        if wire_type == VARINT:
            _, stop = read_varint(buf, value_start, end)
        elif wire_type in _FIXED_SIZE:
            stop = value_start + _FIXED_SIZE[wire_type]
        elif wire_type == LENGTH_DELIMITED:
            length, value_start = read_varint(buf, value_start, end)
            stop = value_start + length
        else:
            raise WireError(pos, f"field {number} has invalid wire type {wire_type}")
        if stop > end:
            raise WireError(
                pos, f"field {number} needs {stop - value_start} bytes but only {end - value_start} remain"
            )
        yield Field(number, wire_type, pos, value_start, stop)
        pos = stop


@dataclass
class Payload:
    """Where one blob's numbers lie: packed chunks (value offset, byte length) per field."""

    data: list[tuple[int, int]] = field(default_factory=list)
    double_data: list[tuple[int, int]] = field(default_factory=list)


# A path through nested messages down to BlobProto fields: field number -> subtree, where
# the subtree BLOB marks a BlobProto-typed field.
BLOB = "blob"
Spec = Mapping[int, Union["Spec", str]]


def strip_payloads(buf: memoryview, spec: Spec) -> tuple[bytes, list[Payload]]:
    """Copy the message in ``buf`` without the payloads (values) of the blobs ``spec`` points at.

    Each stripped blob gets a one-element ``double_data`` holding the index of its Payload in
    the returned list: upgrades may drop or move layers, and the marker travels with its blob
    (see :func:`take_marker`). Every blob holding values is stripped, so no marker is ambiguous.
    """
    payloads: list[Payload] = []
    skeleton = _strip_message(buf, spec, 0, len(buf), payloads)
    return skeleton, payloads


def _strip_message(buf: memoryview, spec: Spec, start: int, end: int, payloads: list[Payload]) -> bytes:
    out = bytearray()
    copied_to = start  # bytes before this offset are in `out` already
    for f in iter_fields(buf, start, end):
        sub = spec.get(f.number)
        if sub is None or f.wire_type != LENGTH_DELIMITED:
            continue
        out += buf[copied_to : f.start]
        if sub == BLOB:
            inner = _strip_blob(buf, f.value_start, f.end, payloads)
        else:
            inner = _strip_message(buf, sub, f.value_start, f.end, payloads)
        out += encode_length_delimited(f.number, inner)
        copied_to = f.end
    out += buf[copied_to:end]
    return bytes(out)


def _strip_blob(buf: memoryview, start: int, end: int, payloads: list[Payload]) -> bytes:
    kept, payload = split_blob(buf, start, end)
    if not payload.data and not payload.double_data:
        return kept
    payloads.append(payload)
    marker = struct.pack("<d", len(payloads) - 1)
    return kept + encode_length_delimited(BLOB_DOUBLE_DATA, marker)


def split_blob(buf: memoryview, start: int, end: int) -> tuple[bytes, Payload]:
    """Split the BlobProto in ``buf[start:end]`` into its other fields and its payload spans."""
    payload = Payload()
    kept = bytearray()
    for f in iter_fields(buf, start, end):
        if f.number in (BLOB_DATA, BLOB_DOUBLE_DATA):
            # Packed (what Caffe writes) is one chunk; the legal unpacked form is one per value.
            chunks = payload.data if f.number == BLOB_DATA else payload.double_data
            chunks.append((f.value_start, f.end - f.value_start))
        else:
            kept += buf[f.start : f.end]
    return bytes(kept), payload


def take_marker(blob) -> int | None:
    """Remove and return the payload index that :func:`strip_payloads` put into ``blob``."""
    if len(blob.double_data) != 1 or len(blob.data) != 0:
        return None
    index = int(blob.double_data[0])
    del blob.double_data[:]
    return index


def _wire_types(fd: FieldDescriptor) -> set[int]:
    """Wire types a parser accepts for field ``fd`` (repeated numbers may come packed)."""
    if fd.type in (fd.TYPE_STRING, fd.TYPE_BYTES, fd.TYPE_MESSAGE):
        return {LENGTH_DELIMITED}
    if fd.type in (fd.TYPE_DOUBLE, fd.TYPE_FIXED64, fd.TYPE_SFIXED64):
        scalar = FIXED64
    elif fd.type in (fd.TYPE_FLOAT, fd.TYPE_FIXED32, fd.TYPE_SFIXED32):
        scalar = FIXED32
    else:
        scalar = VARINT
    # protobuf >= 6 spells it is_repeated; 7 dropped `label`, which 5 still needs.
    is_repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
    return {scalar, LENGTH_DELIMITED} if is_repeated else {scalar}


def check_fields(buf: memoryview, descriptor: Descriptor, start: int = 0, end: int | None = None) -> int:
    """Check that ``buf[start:end]`` is well-formed and its known fields have the declared types.

    Protobuf itself silently keeps a mistyped field as an unknown field, so a mean file or a
    JPEG handed over as a caffemodel would "parse" as an empty net; this catches it. Returns
    the number of fields whose numbers ``descriptor`` declares.
    """
    known = 0
    for f in iter_fields(buf, start, len(buf) if end is None else end):
        fd = descriptor.fields_by_number.get(f.number)
        if fd is None:
            continue
        if f.wire_type not in _wire_types(fd):
            expected = " or ".join(_WIRE_NAMES[t] for t in sorted(_wire_types(fd)))
            raise WireError(
                f.start,
                f"field {f.number} ({descriptor.name}.{fd.name}) is {_WIRE_NAMES[f.wire_type]}, expected {expected}",
            )
        if fd.type == FieldDescriptor.TYPE_INT32 and f.wire_type == 0:
            # protobuf keeps the low 32 bits of a wider value without a word (2^62 reads as 0)
            raw, _ = read_varint(buf, f.value_start, f.end)
            value = raw - (1 << 64) if raw >= 1 << 63 else raw
            if not -(1 << 31) <= value < 1 << 31:
                raise WireError(f.start, f"field {f.number} ({descriptor.name}.{fd.name}) is {value}, past 32 bits")
        known += 1
    return known
