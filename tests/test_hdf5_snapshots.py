"""HDF5 snapshots and weights: Caffe's layout, bit-exact resume, ``.caffemodel.h5`` as weights,
and reading that only ever takes numbers stored in the file."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.caffemodel import load_caffemodel, load_weights
from caffe_compat.io.hdf5 import load_weights_hdf5, read_rows, read_solverstate_hdf5, write_weights_hdf5
from caffe_compat.net.builder import load_net
from caffe_compat.net.registry import TEST
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.solver import Solver, TrainOptions
from test_solver_resume_random import dropout_workdir


def run(resume=None, weights=()):
    out = io.StringIO()
    solver = Solver("solver.prototxt", TrainOptions(progress=False, weights=list(weights)), log=CaffeLog(out))
    if resume:
        solver.restore(resume)
    return solver.solve(), out.getvalue()


def test_hdf5_snapshot_has_caffes_layout_and_resumes_bit_exactly(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(dropout_workdir(fixtures, tmp_path, fmt="HDF5"))
    full, log = run()
    assert "Snapshotting to HDF5 file snaps/drop_iter_4.caffemodel.h5" in log
    assert "Snapshotting solver state to HDF5 file snaps/drop_iter_4.solverstate.h5" in log
    with h5py.File("snaps/drop_iter_4.solverstate.h5", "r") as h5:
        assert h5["iter"][()].tolist() == [4] and h5["iter"].dtype == np.int32
        assert h5["learned_net"][()] == b"snaps/drop_iter_4.caffemodel.h5"
        assert sorted(h5["history"].keys(), key=int) == [str(i) for i in range(len(h5["history"]))]
    with h5py.File("snaps/drop_iter_4.caffemodel.h5", "r") as h5:
        assert h5["data/conv1/0"].shape == (8, 1, 5, 5) and h5["data/conv1/0"].dtype == np.float32
        assert "relu1" in h5["data"] and len(h5["data/relu1"]) == 0  # every layer gets a group, as in Caffe
    final = load_weights("snaps/drop_iter_10.caffemodel.h5")

    resumed, log = run("snaps/drop_iter_4.solverstate.h5")
    assert "Resume sidecar found" in log
    assert resumed.losses == full.losses[4:]
    again = load_weights("snaps/drop_iter_10.caffemodel.h5")
    assert list(again) == list(final)
    for layer, blobs in final.items():
        for a, b in zip(blobs, again[layer]):
            np.testing.assert_array_equal(a, b)


def test_hdf5_weights_equal_the_binary_ones_and_load_as_weights(fixtures, tmp_path, monkeypatch):
    """-weights / copy_from take a .caffemodel.h5 (by its signature, whatever its name)."""
    monkeypatch.chdir(dropout_workdir(fixtures, tmp_path))
    net = load_net("dropnet.prototxt", TEST, weights="init.caffemodel")
    write_weights_hdf5("init.caffemodel.h5", net.to_net_parameter())
    binary = load_weights("init.caffemodel")
    hdf5 = load_weights_hdf5("init.caffemodel.h5")
    assert list(hdf5) == sorted(binary)  # HDF5 lists groups by name
    for name, arrays in binary.items():
        for a, b in zip(arrays, hdf5[name]):
            np.testing.assert_array_equal(a.reshape(b.shape), b)
    (tmp_path / "renamed.bin").write_bytes((tmp_path / "init.caffemodel.h5").read_bytes())
    other = load_net("dropnet.prototxt", TEST, weights="renamed.bin")
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch_equal(a, b)
    first, _ = run(weights=["init.caffemodel"])
    second, _ = run(weights=["init.caffemodel.h5"])
    assert first.losses == second.losses
    with pytest.raises(CaffeCompatError, match="HDF5 weights file"):
        load_caffemodel("init.caffemodel.h5")


def torch_equal(a, b) -> bool:
    return bool((a.detach() == b.detach()).all())


def test_shared_blobs_are_written_by_their_owner_only(tmp_path):
    from caffe_compat.io.prototxt import parse_net_text
    from caffe_compat.net.builder import CaffeNet

    net = CaffeNet(parse_net_text("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "b" }
                inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
        layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" } param { name: "b" }
                inner_product_param { num_output: 3 } }
    """))
    write_weights_hdf5(tmp_path / "w.h5", net.to_net_parameter(), write_diff=True)
    with h5py.File(tmp_path / "w.h5", "r") as h5:
        assert sorted(h5["data/a"]) == ["0", "1"] and len(h5["data/b"]) == 0
        assert sorted(h5["diff/b"]) == ["0", "1"]
    assert list(load_weights_hdf5(tmp_path / "w.h5")) == ["a"]


def test_cli_resumes_from_solverstate_h5(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(dropout_workdir(fixtures, tmp_path, fmt="HDF5"))
    result = CliRunner().invoke(main, ["train", "-solver", "solver.prototxt", "-iterations", "4"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["train", "-solver", "solver.prototxt", "-snapshot", "snaps/drop_iter_4.solverstate.h5"])
    assert result.exit_code == 0, result.output
    assert read_solverstate_hdf5("snaps/drop_iter_10.solverstate.h5")[0] == 10


# ------------------------------------------------------------------ reading only numbers from the file


def _bad(tmp_path, make) -> str:
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as h5:
        make(h5, tmp_path)
    return str(path)


@pytest.mark.parametrize("make, needle", [
    (lambda h5, d: h5.create_dataset("data", data=np.array([b"import os"], dtype=h5py.string_dtype())), "Caffe reads only numbers"),
    (lambda h5, d: h5.create_dataset("data", data=np.zeros(3, dtype=[("a", "f4"), ("b", "i4")])), "Caffe reads only numbers"),
    (lambda h5, d: h5.__setitem__("data", h5py.ExternalLink(str(d / "other.h5"), "/x")), "ExternalLink"),
    (lambda h5, d: h5.__setitem__("data", h5py.SoftLink("/elsewhere")), "SoftLink"),
    (lambda h5, d: h5.create_dataset("data", shape=(4,), dtype="f4", external=[(str(d / "raw.bin"), 0, 16)]), "other files"),
    (lambda h5, d: h5.create_dataset("label", data=np.zeros(3)), "no dataset 'data'"),
])
def test_hdf5_reads_refuse_anything_but_numbers_stored_in_the_file(tmp_path, make, needle):
    (tmp_path / "raw.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    with h5py.File(tmp_path / "other.h5", "w") as other:
        other["x"] = np.ones(3)
    path = _bad(tmp_path, make)
    with pytest.raises(CaffeCompatError, match=needle) as err:
        read_rows(path, ["data"], [0])
    assert path in str(err.value)


def test_not_an_hdf5_file_is_named_as_such(tmp_path):
    path = tmp_path / "w.caffemodel.h5"
    path.write_bytes(b"\x08\x01" * 10)
    with pytest.raises(CaffeCompatError, match="not an HDF5 file"):
        load_weights_hdf5(path)
