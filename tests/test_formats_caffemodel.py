"""Caffemodels and solverstates: the fast loader equals protobuf, writes are byte-exact, errors are clear."""

from __future__ import annotations

import time

import numpy as np
import pytest

from caffe_compat.errors import CaffeCompatError
from conftest import nsfw_model_dir
from caffe_compat.io.blob import array_to_blob, blob_to_array
from caffe_compat.io.caffemodel import (
    fit_blobs,
    load_caffemodel,
    load_weights,
    read_caffemodel,
    read_caffemodel_raw,
    write_caffemodel,
)
from caffe_compat.io.solverstate import load_solverstate, read_solverstate, write_solverstate
from caffe_compat.proto import caffe_pb2


def _caffemodels(fixtures):
    """Every fixture caffemodel, plus the real nsfw ResNet-50-1by2 when its package is installed."""
    nsfw = nsfw_model_dir()
    return sorted(fixtures.rglob("*.caffemodel")) + ([nsfw / "resnet_50_1by2_nsfw.caffemodel"] if nsfw else [])


def test_fast_loader_equals_protobuf_for_every_caffemodel(fixtures):
    for path in _caffemodels(fixtures):
        full = read_caffemodel(path)
        net, weights = load_caffemodel(path)
        expected = {layer.name: [blob_to_array(b) for b in layer.blobs] for layer in full.layer if len(layer.blobs)}
        assert list(weights) == list(expected), path
        for name, arrays in expected.items():
            assert len(weights[name]) == len(arrays)
            for got, want in zip(weights[name], arrays):
                assert got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_array_equal(got, want)
        # The skeleton is the full net minus the values.
        for layer in full.layer:
            for blob in layer.blobs:
                del blob.data[:]
        assert net == full, path


def test_written_caffemodels_are_byte_identical(fixtures, tmp_path):
    out = tmp_path / "out.caffemodel"
    for path in _caffemodels(fixtures):
        if path.name == "v1_weights.caffemodel":
            continue
        net, weights = load_caffemodel(path, upgrade=False)
        write_caffemodel(out, net, weights)
        assert out.read_bytes() == path.read_bytes(), path
        full = read_caffemodel_raw(path)
        write_caffemodel(out, full)
        assert out.read_bytes() == full.SerializeToString()


def test_writing_new_weights_into_a_net(tmp_path):
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="ip", type="InnerProduct")
    net.layer.add(name="relu", type="ReLU")
    weights = {"ip": [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float32)]}
    out = tmp_path / "w.caffemodel"
    write_caffemodel(out, net, weights)
    merged = caffe_pb2.NetParameter()
    merged.CopyFrom(net)
    merged.layer[0].blobs.extend(array_to_blob(a) for a in weights["ip"])
    assert out.read_bytes() == merged.SerializeToString()
    loaded = load_weights(out)
    assert list(loaded) == ["ip"]
    np.testing.assert_array_equal(loaded["ip"][0], weights["ip"][0])
    with pytest.raises(CaffeCompatError, match="not in the net: conv9"):
        write_caffemodel(out, net, {"conv9": []})


def test_legacy_blob_style_survives_rewrite(fixtures, tmp_path):
    net, weights = load_caffemodel(fixtures / "upgrade" / "weights_upgraded.caffemodel")
    out = tmp_path / "w.caffemodel"
    write_caffemodel(out, net, weights)
    assert out.read_bytes() == (fixtures / "upgrade" / "weights_upgraded.caffemodel").read_bytes()


def test_nsfw_loads_fast(nsfw_dir):
    path = nsfw_dir / "resnet_50_1by2_nsfw.caffemodel"
    load_weights(path)  # warm the page cache
    start = time.perf_counter()
    weights = load_weights(path)
    elapsed = time.perf_counter() - start
    assert sum(a.size for arrays in weights.values() for a in arrays) == 5_944_567
    assert elapsed < 0.5  # about 0.03 s on a 2-core box; generous for loaded CI machines


def test_fit_blobs_follows_blob_shape_equals():
    legacy = [np.zeros((1, 1, 40, 324), np.float32), np.zeros((1, 1, 1, 40), np.float32)]
    fitted = fit_blobs("ip1", legacy, [(40, 324), (40,)], "w.caffemodel")
    assert [a.shape for a in fitted] == [(40, 324), (40,)]
    with pytest.raises(CaffeCompatError, match=r"w\.caffemodel: layer 'ip1': cannot copy param 1: shape mismatch.*\(41,\)"):
        fit_blobs("ip1", legacy, [(40, 324), (41,)], "w.caffemodel")
    with pytest.raises(CaffeCompatError, match="layer 'ip1': the caffemodel has 2 blobs but the net's layer needs 1"):
        fit_blobs("ip1", legacy, [(40, 324)], "w.caffemodel")
    with pytest.raises(CaffeCompatError, match="shape mismatch"):
        fit_blobs("c", [np.zeros((2, 3), np.float32)], [(3, 2)], "w.caffemodel")


@pytest.mark.parametrize("loader", [load_caffemodel, read_caffemodel])
def test_bad_caffemodels_say_which_and_where(fixtures, tmp_path, loader):
    good = (fixtures / "solver" / "init.caffemodel").read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], r"truncated or not a Caffe file\): byte \d+: field 100 needs"),
        "empty": (b"", "the file is empty"),
        "jpeg": ((fixtures / "images" / "a" / "grad_000.jpg").read_bytes(), "invalid wire type"),
        "mean": ((fixtures / "mean" / "val_raw32_mean.binaryproto").read_bytes(), r"NetParameter\.name"),
        "text": ((fixtures / "upgrade" / "v1_deploy.prototxt").read_bytes(), "invalid wire type"),
    }
    for name, (payload, message) in cases.items():
        path = tmp_path / f"{name}.caffemodel"
        path.write_bytes(payload)
        with pytest.raises(CaffeCompatError, match=message) as info:
            loader(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_blob_count_mismatch_inside_a_caffemodel_names_the_layer(tmp_path):
    net = caffe_pb2.NetParameter()
    blob = net.layer.add(name="conv7").blobs.add()
    blob.shape.dim.extend([2, 2])
    blob.data.extend([1.0, 2.0, 3.0])
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(CaffeCompatError, match=r"layer 'conv7' blob 0: shape \(2, 2\) needs 4 values but the blob holds 3"):
        load_weights(path)


def test_solverstates_read_and_write(fixtures, tmp_path):
    paths = sorted(fixtures.rglob("*.solverstate"))
    assert paths
    for path in paths:
        state = read_solverstate(path)
        skeleton, history = load_solverstate(path)
        assert skeleton.iter == state.iter and skeleton.learned_net == state.learned_net
        assert len(history) == len(state.history) > 0
        for array, blob in zip(history, state.history):
            np.testing.assert_array_equal(array, blob_to_array(blob))
        out = tmp_path / "s.solverstate"
        write_solverstate(out, state)
        assert out.read_bytes() == path.read_bytes()
    with pytest.raises(CaffeCompatError, match="SolverState"):
        read_solverstate(fixtures / "mean" / "val_raw32_mean.binaryproto")


def test_corrupt_layer_parameter_names_the_layer(tmp_path):
    from caffe_compat.io.wire import encode_length_delimited

    good = caffe_pb2.LayerParameter(name="fine").SerializeToString()
    bad = caffe_pb2.LayerParameter(name="conv3").SerializeToString() + encode_length_delimited(106, b"\x0a\xff")
    path = tmp_path / "corrupt.caffemodel"
    path.write_bytes(encode_length_delimited(100, good) + encode_length_delimited(100, bad))
    for loader in (load_caffemodel, read_caffemodel):
        with pytest.raises(CaffeCompatError, match=r"corrupt\.caffemodel: not a valid .*layer #1 'conv3' does not parse"):
            loader(path)


@pytest.mark.slow
def test_large_caffemodel_loads_with_one_copy_of_memory(tmp_path):
    """A 256 MB model: loading adds about its size to the peak RSS (protobuf would add twice that)."""
    import json
    import subprocess
    import sys

    net = caffe_pb2.NetParameter(name="big")
    net.layer.add(name="fc", type="InnerProduct")
    weights = {"fc": [np.full((8192, 8192), 0.5, np.float32), np.zeros(8192, np.float32)]}
    path = tmp_path / "big.caffemodel"
    write_caffemodel(path, net, weights)
    del weights
    child = (
        "import json, sys\n"
        "from caffe_compat.io.caffemodel import load_weights\n"
        "def hwm():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "base = hwm(); w = load_weights(sys.argv[1])\n"
        "print(json.dumps({'extra_mb': (hwm() - base) / 1024, 'first': float(w['fc'][0][0, 0])}))\n"
    )
    result = json.loads(subprocess.run([sys.executable, "-c", child, str(path)], check=True,
                                       capture_output=True, text=True).stdout)
    assert result["first"] == 0.5
    assert result["extra_mb"] < 1.25 * path.stat().st_size / 2**20
