"""Fork field numbers in binary files: map a fork's numbers to caffe.proto's and back.

The dialect table (:mod:`caffe_compat.proto.dialects`) says which fork numbers collide with
BVLC's; this module rewrites them on the wire, inside each ``NetParameter.layer``, so protobuf
parses a fork's file with caffe.proto and a written file carries the fork's numbers again.
Writing re-sorts the moved fields into number order (as protobuf writes them), so a fork's
caffemodel read and written back with its own dialect is the same bytes.
"""

from __future__ import annotations

from caffe_compat.io.wire import LENGTH_DELIMITED, encode_key, encode_varint, iter_fields
from caffe_compat.proto import caffe_pb2, dialects
from caffe_compat.proto.dialects import Dialect, Move

_LAYER = 100  # NetParameter.layer
_TYPE = 2  # LayerParameter.type
#: messages moves reach into, by the fork's number of the field holding them
_NESTED = {121: caffe_pb2.PoolingParameter.DESCRIPTOR, 152: caffe_pb2.BNParameter.DESCRIPTOR}


def _layer_type(view: memoryview) -> str:
    for f in iter_fields(view, 0, len(view)):
        if f.number == _TYPE and f.wire_type == LENGTH_DELIMITED:
            return bytes(view[f.value_start : f.end]).decode("utf-8", "replace")
    return ""


def layer_numbers(raw: bytes | memoryview) -> dict[str, set[int]]:
    """Layer type -> the LayerParameter field numbers its layers hold, for a NetParameter."""
    view = memoryview(raw)
    seen: dict[str, set[int]] = {}
    for f in iter_fields(view, 0, len(view)):
        if f.number == _LAYER and f.wire_type == LENGTH_DELIMITED:
            layer = view[f.value_start : f.end]
            seen.setdefault(_layer_type(layer), set()).update(g.number for g in iter_fields(layer, 0, len(layer)))
    return seen


def choose(raw: bytes | memoryview, requested: str | None = None) -> Dialect:
    """The dialect of a binary NetParameter (see :func:`caffe_compat.proto.dialects.choose`)."""
    numbers = layer_numbers(raw)
    return dialects.choose(set(numbers), numbers, requested)


def _applies(move: Move, layer_type: str) -> bool:
    return not move.layer_types or layer_type in move.layer_types


def _rewrite(view: memoryview, moves: list[tuple[tuple[int, ...], int, int]], descriptor, to_fork: bool) -> bytes:
    """The message ``view`` with field numbers changed by ``moves`` ((within, old, new) with
    ``within`` the path of nested fields below this message, by the fork's numbers). Writing
    (``to_fork``) sorts the fields this message's descriptor knows (by their new numbers) into
    number order, unknown ones last."""
    here = {old: new for within, old, new in moves if not within}
    pieces: list[tuple[int, bool, bytes]] = []
    for f in iter_fields(view, 0, len(view)):
        number = here.get(f.number, f.number)
        # ``within`` names the holding field by the fork's number: the new number when writing
        # a fork's file (ours 45 -> PSPNet's 152), the wire's when reading one.
        fork_number = number if to_fork else f.number
        inner = [(within[1:], old, new) for within, old, new in moves if within and within[0] == fork_number]
        known = f.number in descriptor.fields_by_number or number in descriptor.fields_by_number
        if inner and f.wire_type == LENGTH_DELIMITED:
            body = _rewrite(view[f.value_start : f.end], inner, _NESTED[fork_number], to_fork)
            piece = encode_key(number, LENGTH_DELIMITED) + encode_varint(len(body)) + body
        elif number != f.number:
            piece = encode_key(number, f.wire_type) + bytes(view[_value_offset(view, f) : f.end])
        else:
            piece = bytes(view[f.start : f.end])
        pieces.append((number, known, piece))
    if to_fork:
        pieces = sorted((p for p in pieces if p[1]), key=lambda p: p[0]) + [p for p in pieces if not p[1]]
    return b"".join(piece for _, _, piece in pieces)


def _value_offset(view: memoryview, f) -> int:
    """Where the value (length prefix included) of field ``f`` starts: right after its key."""
    pos = f.start
    while view[pos] & 0x80:
        pos += 1
    return pos + 1


def _moves(dialect: Dialect, layer_type: str, to_fork: bool) -> list[tuple[tuple[int, ...], int, int]]:
    return [(m.within, m.ours, m.fork) if to_fork else (m.within, m.fork, m.ours)
            for m in dialect.moves if _applies(m, layer_type)]


def net_to_ours(raw: bytes | memoryview, dialect: Dialect) -> bytes:
    """A fork's NetParameter bytes with its layers' fields at caffe.proto's numbers."""
    view = memoryview(raw)
    if not dialect.moves:
        return bytes(view)
    out = bytearray()
    for f in iter_fields(view, 0, len(view)):
        if f.number == _LAYER and f.wire_type == LENGTH_DELIMITED:
            layer = view[f.value_start : f.end]
            moves = _moves(dialect, _layer_type(layer), to_fork=False)
            if moves:
                body = _rewrite(layer, moves, caffe_pb2.LayerParameter.DESCRIPTOR, to_fork=False)
                out += encode_key(_LAYER, LENGTH_DELIMITED) + encode_varint(len(body)) + body
                continue
        out += view[f.start : f.end]
    return bytes(out)


def layer_to_fork(raw: bytes, layer_type: str, dialect: Dialect) -> bytes:
    """Serialized LayerParameter fields (all of a layer, or a run of them after its blobs)
    with caffe.proto's numbers put back to the fork's, in protobuf's order."""
    moves = _moves(dialect, layer_type, to_fork=True)
    if not moves:
        return raw
    return _rewrite(memoryview(raw), moves, caffe_pb2.LayerParameter.DESCRIPTOR, to_fork=True)


def dialect_of_net(net: caffe_pb2.NetParameter, requested: str | None = None) -> Dialect:
    """The dialect to write ``net`` in: ``requested`` (or ``--dialect``), else the moves its
    fork fields need: ``ceil_mode`` -> opencv's, ``upsample_param`` -> segnet's (the layer's
    origin; ENet's caffe numbers it 147: pass ``enet``), ``interp_param`` or a BN layer with
    PSPNet's ``bn_param`` fields -> pspnet's (bn_param at 152), but a net with caffe-priv's
    ``use_blob_size`` or ``SeLu`` / ``SeLuDropout`` layers -> priv's (interp_param at 20001);
    ``psroi_pooling_param`` -> R-FCN's 10001 (caffe-priv numbers it 148: pass ``priv``, or a
    priv net as above carries it). Their moves touch different layer types, so one file can
    carry several."""
    requested = requested or dialects.selected()
    if requested is not None:
        return dialects.get(requested)
    priv = any(layer.type in ("SeLu", "SeLuDropout") or layer.interp_param.use_blob_size for layer in net.layer)
    needed: set[str] = {"priv"} if priv else set()
    for layer in net.layer:
        if layer.HasField("pooling_param") and layer.pooling_param.HasField("ceil_mode"):
            needed.add("opencv")
        if layer.HasField("upsample_param"):
            needed.add("segnet")
        if (layer.HasField("interp_param") and not priv) or (
                layer.type == "BN" and dialects.is_pspnet_bn(layer.bn_param)):
            needed.add("pspnet")
        if layer.HasField("psroi_pooling_param") and not priv:
            needed.add("rfcn")
    if not needed:
        return dialects.get("bvlc")
    return dialects.combine([dialects.get(name) for name in sorted(needed)])
