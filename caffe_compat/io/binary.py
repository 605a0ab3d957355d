"""Binary Caffe files (caffemodel, binaryproto, solverstate): checked parsing with clear errors.

protobuf reports a broken file as "Error parsing message" and silently accepts the wrong
message type (mistyped fields become unknown fields). These helpers check the wire format
first, so the user learns which file, what kind was expected and at which byte it breaks.
"""

from __future__ import annotations

import os

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.wire import Payload, Spec, WireError, check_fields, strip_payloads


def _error(path: str | os.PathLike[str], kind: str, exc: WireError) -> CaffeCompatError:
    return CaffeCompatError(
        f"{os.fspath(path)}: not a valid {kind} (truncated or not a Caffe file): byte {exc.offset}: {exc}"
    )


def check_binary(view: memoryview, message_type, path: str | os.PathLike[str], kind: str) -> None:
    """Raise one line unless ``view`` is a well-formed, non-empty ``message_type``."""
    if len(view) == 0:
        raise CaffeCompatError(f"{os.fspath(path)}: not a valid {kind}: the file is empty")
    try:
        if check_fields(view, message_type.DESCRIPTOR) == 0:
            raise WireError(0, f"no {message_type.DESCRIPTOR.name} field found")
    except WireError as exc:
        raise _error(path, kind, exc) from None


def parse_binary(raw: bytes, message_type, path: str | os.PathLike[str], kind: str):
    """Check, then parse ``raw``; a DecodeError from deeper nesting is left to the caller to place."""
    check_binary(memoryview(raw), message_type, path, kind)
    return message_type.FromString(raw)


def strip_binary(
    view: memoryview, message_type, spec: Spec, path: str | os.PathLike[str], kind: str
) -> tuple[bytes, list[Payload]]:
    """Check ``view``, then cut its blob payloads out (see wire.strip_payloads)."""
    check_binary(view, message_type, path, kind)
    try:
        return strip_payloads(view, spec)
    except WireError as exc:
        raise _error(path, kind, exc) from None
