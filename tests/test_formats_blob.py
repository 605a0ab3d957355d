"""BlobProto <-> numpy, .binaryproto files and the wire-format walker behind the fast paths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.blob import array_to_blob, blob_shape, blob_to_array, read_binaryproto, write_binaryproto
from caffe_compat.io.wire import BLOB, WireError, iter_fields, strip_payloads, take_marker
from caffe_compat.proto import caffe_pb2

shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, shapes, elements=st.floats(width=32, allow_nan=False)))
def test_array_blob_round_trip_float32(arr):
    blob = array_to_blob(arr)
    # Same bytes as filling the repeated field through protobuf itself.
    reference = caffe_pb2.BlobProto()
    if arr.ndim:
        reference.shape.dim.extend(arr.shape)
    reference.data.extend(arr.ravel().tolist())
    assert blob.SerializeToString() == reference.SerializeToString()
    back = blob_to_array(blob)
    assert back.dtype == np.float32 and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=4), elements=st.floats(allow_nan=False)))
def test_double_blobs_keep_float64(arr):
    blob = array_to_blob(arr, double=True)
    assert len(blob.data) == 0 and list(blob.double_data) == arr.ravel().tolist()
    back = blob_to_array(blob)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, arr)


def test_legacy_dims_pad_to_four_axes_and_win_over_shape():
    blob = array_to_blob(np.arange(6, dtype=np.float32).reshape(2, 3), legacy_dims=True)
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 2, 3)
    assert not blob.HasField("shape")
    assert blob_to_array(blob).shape == (1, 1, 2, 3)
    blob.shape.dim.extend([6])  # Caffe's Blob::FromProto prefers the legacy fields
    assert blob_shape(blob) == (1, 1, 2, 3)
    with pytest.raises(CaffeCompatError, match="at most 4 axes"):
        array_to_blob(np.zeros((1, 1, 1, 1, 2)), legacy_dims=True)


def test_diff_is_stored_beside_data():
    arr = np.ones((2, 2), np.float32)
    blob = array_to_blob(arr, diff=arr * 3)
    assert list(blob.diff) == [3.0] * 4
    with pytest.raises(CaffeCompatError, match="diff shape"):
        array_to_blob(arr, diff=np.ones(3))


def test_count_mismatch_names_the_blob():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1.0] * 5)
    with pytest.raises(CaffeCompatError, match=r"my blob: shape \(2, 3\) needs 6 values but the blob holds 5"):
        blob_to_array(blob, "my blob")


def test_mean_binaryprotos_match_pycaffe_arrays(fixtures):
    for path in sorted((fixtures / "mean").glob("*.binaryproto")):
        arr = read_binaryproto(path)
        expected = np.load(path.with_suffix(".npy"))
        assert arr.shape == (1, *expected.shape)
        np.testing.assert_array_equal(arr[0], expected)


def test_binaryproto_written_like_compute_image_mean(fixtures, tmp_path):
    source = fixtures / "mean" / "train_raw32_mean.binaryproto"
    out = tmp_path / "mean.binaryproto"
    write_binaryproto(out, read_binaryproto(source), legacy_dims=True)
    assert out.read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "the file is empty"),
        (b"\xff\xd8\xff\xe0garbage", "invalid wire type"),
        (b"name: 'x'\n", "invalid wire type"),
        (bytes.fromhex("2a10") + b"\x00" * 8, "needs 16 bytes but only 8 remain"),
        (bytes.fromhex("0a0461626364"), "BlobProto.num"),
    ],
)
def test_bad_binaryproto_is_one_clear_line(tmp_path, payload, message):
    path = tmp_path / "bad.binaryproto"
    path.write_bytes(payload)
    with pytest.raises(CaffeCompatError, match=message) as info:
        read_binaryproto(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_wire_walker_agrees_with_protobuf():
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="ip", type="InnerProduct")
    layer.blobs.append(array_to_blob(np.arange(12, dtype=np.float32).reshape(3, 4)))
    layer.blobs.append(array_to_blob(np.arange(3, dtype=np.float64), double=True))
    raw = net.SerializeToString()
    fields = list(iter_fields(memoryview(raw), 0, len(raw)))
    assert [f.number for f in fields] == [1, 100]
    skeleton, payloads = strip_payloads(memoryview(raw), {100: {7: BLOB}})
    stripped = caffe_pb2.NetParameter.FromString(skeleton)
    markers = [take_marker(b) for b in stripped.layer[0].blobs]
    assert markers == [0, 1]
    assert [len(p.data) for p in payloads] == [1, 0] and [len(p.double_data) for p in payloads] == [0, 1]
    assert len(skeleton) < len(raw) - 40  # 72 payload bytes gone, two 10-byte markers added


def test_unpacked_payloads_are_read_too():
    """proto2 parsers accept repeated floats one per field; so must the fast path."""
    from caffe_compat.io.blob import buffer_reader, payload_array
    from caffe_compat.io.wire import split_blob

    raw = bytes.fromhex("3a0208032d0000803f2d000000402d00004040")  # shape {dim: 3}, data 1, 2, 3 unpacked
    assert list(caffe_pb2.BlobProto.FromString(raw).data) == [1.0, 2.0, 3.0]
    kept, payload = split_blob(memoryview(raw), 0, len(raw))
    assert len(payload.data) == 3
    np.testing.assert_array_equal(payload_array(payload, buffer_reader(raw), (3,), "b"), [1, 2, 3])


def test_truncated_varint_is_reported():
    with pytest.raises(WireError, match="runs past the end"):
        list(iter_fields(memoryview(b"\x08\xff"), 0, 2))
