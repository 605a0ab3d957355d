"""Hostile and careless input, round 2 (issue 21): LevelDB, sizes declared by HDF5 files and CSVs,
files that are not regular files, spreadsheet and Markdown injection, link-tools, slow servers, and
the errors that used to say "a bug in caffe-compat". Every bad file is generated here.

The bomb cases run in a subprocess that reports its peak resident memory (``VmHWM`` of
/proc/self/status: ``ru_maxrss`` would carry over the size of the forking pytest process through
exec), which must stay under :data:`PEAK_MB`.
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from caffe_compat.cli.busybox import LINKS
from test_hostile_input import cli, one_error, proc_error, run, script

PEAK_MB = 500


# ---------------------------------------------------------------------------- link-tools


def _exe(tmp_path: Path) -> Path:
    exe = tmp_path / "caffe-compat"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return exe


@pytest.mark.parametrize("blocker", ["file", "dangling"])
def test_link_tools_makes_all_links_or_none(tmp_path, blocker):
    tools = tmp_path / "tools"
    tools.mkdir()
    last = tools / LINKS[-1]  # the last name: every other link would come first
    if blocker == "file":
        last.write_text("mine")
    else:
        last.symlink_to(tmp_path / "gone")
    one_error(cli("link-tools", tools, "--target", _exe(tmp_path)), last.name, "no link was made")
    assert sorted(p.name for p in tools.iterdir()) == [last.name]
    result = cli("link-tools", tools, "--target", _exe(tmp_path), "--force")
    assert result.exit_code == 0, result.output
    assert len(list(tools.iterdir())) == len(LINKS) and os.path.realpath(last) == str(_exe(tmp_path))


# ---------------------------------------------------------------------------- LevelDB


def _leveldb(path: Path, count: int = 50, compact: bool = False) -> Path:
    import plyvel

    from caffe_compat.data.leveldb import build_leveldb

    rng = np.random.default_rng(0)
    with build_leveldb(path) as db:
        for i in range(count):
            db.put(b"%08d" % i, rng.bytes(3000))
    if compact:
        db = plyvel.DB(str(path))
        db.compact_range()
        db.close()
    return path


def test_convert_db_of_a_leveldb_cut_short_is_an_error_naming_it(tmp_path):
    for name, compact in (("in_log", False), ("in_table", True)):
        db = _leveldb(tmp_path / name, compact=compact)
        files = [f for f in db.iterdir() if f.suffix in (".log", ".ldb") and f.stat().st_size]
        assert files
        for f in files:
            os.truncate(f, f.stat().st_size // 3)
        one_error(cli("convert-db", db, tmp_path / "out"), str(db))
        assert not (tmp_path / "out").exists()
        one_error(cli("convert-db", db, tmp_path / "out"), str(db))  # the first try did not "heal" it


def test_convert_db_of_a_damaged_leveldb_record_is_an_error(tmp_path):
    db = _leveldb(tmp_path / "src")
    log = next(db.glob("*.log"))
    raw = bytearray(log.read_bytes())
    raw[70000] ^= 0xFF
    log.write_bytes(raw)
    one_error(cli("convert-db", db, tmp_path / "out"), str(db), "checksum")


def test_convert_db_compares_what_it_wrote_with_what_it_read(tmp_path, monkeypatch):
    from caffe_compat.data import leveldb
    from caffe_compat.data.lmdb_dataset import count_records

    result = cli("convert-db", _leveldb(tmp_path / "src", 5), tmp_path / "whole")
    assert result.exit_code == 0 and "copied 5 records" in result.output
    assert count_records(tmp_path / "whole") == 5
    records = list(leveldb.iter_leveldb(tmp_path / "src"))
    monkeypatch.setattr(leveldb, "iter_leveldb", lambda path: iter(records + records[:1]))  # a repeated key
    one_error(cli("convert-db", tmp_path / "src", tmp_path / "out"), "read 6 records", "holds 5")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- report: injection

HOSTILE_TEXT = ["=cmd|' /C calc'!A0", "+SUM(A1:A9)", "-2+3", "@SUM(1)", "\tTAB", "\rCR", "'=quoted", "<script>alert(1)</script>",
                '<img src=x onerror="alert(1)">', "[link](javascript:alert(1))", "plain"]


def _hostile_predictions():
    from caffe_compat.report.predictions import LabelMap, from_probabilities

    n = len(HOSTILE_TEXT)
    prob = np.eye(n)[[(i + 1) % n for i in range(n)]] * 0.9 + 0.1 / n
    pred = from_probabilities(prob, np.arange(n), HOSTILE_TEXT, np.arange(n), LabelMap(names=tuple(HOSTILE_TEXT)))
    return pred.with_flags([[text] for text in HOSTILE_TEXT])


def test_predictions_csv_is_safe_in_a_spreadsheet_and_reads_back_unchanged(tmp_path):
    from caffe_compat.report import write_report

    write_report(tmp_path / "a", _hostile_predictions())
    rows = list(csv.DictReader((tmp_path / "a" / "predictions.csv").open(newline="")))
    for row in rows:
        for column in ("key", "ground_truth", "argmax", "flags"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\r")), (column, row[column])
    assert [row["key"] for row in rows][:2] == ["'=cmd|' /C calc'!A0", "'+SUM(A1:A9)"]
    result = cli("report", tmp_path / "a" / "predictions.csv", "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "predictions.csv").read_bytes() == (tmp_path / "a" / "predictions.csv").read_bytes()


def test_report_md_escapes_keys_labels_and_flags(tmp_path):
    from caffe_compat.report import write_report

    write_report(tmp_path / "a", _hostile_predictions(), info=[("source", "<b>x</b>")], notes=["<i>note</i>"],
                 title="<script>t</script>")
    text = (tmp_path / "a" / "report.md").read_text()
    assert "alert(1)" in text  # the hostile names are in the tables...
    for raw in ("<script", "<img", "<b>", "<i>", "](javascript"):
        assert re.search(r"(?<!\\)" + re.escape(raw), text) is None, raw  # ...but never as HTML or a link
    assert "\\<script\\>alert(1)\\</script\\>" in text


# ---------------------------------------------------------------------------- report: CSV values

_CLASSIFICATION = "index,key,label,argmax\n{index},{key},{label},{argmax}\n"
_SCORE = "index,key,label,ground_truth,expectation,argmax,prediction\n0,k,{label},{truth},{expectation},70,{expectation}\n"


# Evaluated in the child: its own peak resident memory in MB.
_HWM = "next(int(l.split()[1]) // 1024 for l in open('/proc/self/status') if l.startswith('VmHWM'))"


def _report_peak_mb(csv_path: Path, out: Path) -> tuple[subprocess.CompletedProcess, int]:
    """``caffe-compat report`` in a fresh process, and that process's peak resident memory in MB."""
    proc = script(f"""
        import sys
        from caffe_compat.cli import main
        try:
            main(["report", {str(csv_path)!r}, "-o", {str(out)!r}])
        finally:
            print("peak", {_HWM}, file=sys.stderr)
        """)
    peak = int(proc.stderr.rsplit("peak ", 1)[1].split()[0])
    print(f"peak {peak} MB: report {csv_path.name}")  # shown with -s: the figures in docs/benchmarks.md
    return proc, peak


@pytest.mark.parametrize("text, fragments", [
    (_CLASSIFICATION.format(index=0, key="k", label=0, argmax=2_000_000_000), ("predictions.csv:2", "argmax", "class index")),
    (_CLASSIFICATION.format(index=0, key="k", label=1_000_000_000, argmax=0), ("label", "class index")),
    (_SCORE.format(label=1_000_000_000, truth=1_000_000_060, expectation=70.5), ("label", "class index")),
], ids=["argmax-2e9", "label-1e9", "score-label-1e9"])
def test_report_csv_class_bombs_are_refused_in_little_memory(tmp_path, text, fragments):
    csv_path = tmp_path / "predictions.csv"
    csv_path.write_text(text)
    proc, peak = _report_peak_mb(csv_path, tmp_path / "out")
    proc_error(proc, str(csv_path), *fragments)
    assert peak < PEAK_MB, peak


@pytest.mark.parametrize("text, fragments", [
    (_CLASSIFICATION.format(index=0, key="k", label=-3, argmax=0), ("label", "class index")),
    (_CLASSIFICATION.format(index=2**64, key="k", label=0, argmax=0), ("index", "2^63")),
    (_CLASSIFICATION.format(index=-1, key="k", label=0, argmax=0), ("index",)),
    (_CLASSIFICATION.format(index=0, key="x" * (200 << 10), label=0, argmax=0), ("predictions.csv:2", "field")),
    (_SCORE.format(label=10, truth=70, expectation="nan"), ("expectation", "finite")),
    (_SCORE.format(label=10, truth="inf", expectation=70.5), ("ground_truth", "finite")),
], ids=["negative-class", "index-past-int64", "negative-index", "field-200KiB", "nan", "inf"])
def test_report_csv_values_are_range_checked(tmp_path, text, fragments):
    csv_path = tmp_path / "predictions.csv"
    csv_path.write_text(text)
    one_error(cli("report", csv_path, "-o", tmp_path / "out"), str(csv_path), *fragments)


# ---------------------------------------------------------------------------- HDF5 sizes, sources that never end

_H5_NET = """
name: "h5"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "SOURCE" batch_size: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc1" bottom: "label" top: "loss" }
"""
_BOMB = 800_000_000  # floats: 3.2 GB declared, nothing written


def _h5(path: Path, **datasets) -> Path:
    """An HDF5 file; a dataset given as a shape tuple is declared chunked and never written."""
    import h5py

    with h5py.File(path, "w") as h5:
        for name, values in datasets.items():
            parent, _, leaf = name.rpartition("/")
            group = h5.require_group(parent) if parent else h5
            if isinstance(values, tuple):
                group.create_dataset(leaf, shape=values, dtype="f4", chunks=(min(values[0], 1 << 16), *values[1:]))
            else:
                group[leaf] = values
    return path


def _h5_workdir(tmp_path: Path, data=None, source: str = "list.txt") -> Path:
    tmp_path.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    _h5(tmp_path / "rows.h5", data=rng.normal(size=(6, 4)).astype("f4") if data is None else data,
        label=np.zeros(6, "f4") if data is None else (data[0],))
    (tmp_path / "list.txt").write_text("rows.h5\n")
    (tmp_path / "net.prototxt").write_text(_H5_NET.replace("SOURCE", source))
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 2\n'
                                              'snapshot_prefix: "snap"\n')
    return tmp_path


def _peak_run(args: list, cwd: Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess, int]:
    """``caffe-compat ARGS`` in a fresh process, and its peak resident memory in MB."""
    proc = script(f"""
        import sys
        from caffe_compat.cli import main
        try:
            main({[str(a) for a in args]!r})
        finally:
            print("peak", {_HWM}, file=sys.stderr)
        """, cwd=cwd, timeout=timeout)
    peak = int(proc.stderr.rsplit("peak ", 1)[1].split()[0])
    print(f"peak {peak} MB: {' '.join(map(str, args))}")  # shown with -s: the figures in docs/benchmarks.md
    return proc, peak


def test_hdf5_bombs_are_refused_before_allocating(tmp_path):
    """Weights, solver-state history and HDF5Data rows declaring 3.2 GB in a few KB of file."""
    work = _h5_workdir(tmp_path / "source", data=(_BOMB // 4, 4))
    proc, peak = _peak_run(["train", "-solver", "solver.prototxt"], work)
    proc_error(proc, "rows.h5", "'data'", "stores only")
    assert peak < PEAK_MB, peak

    work = _h5_workdir(tmp_path / "weights")
    _h5(work / "w.caffemodel.h5", **{"data/fc1/0": (_BOMB,), "data/fc1/1": np.zeros(2, "f4")})
    proc, peak = _peak_run(["test", "-model", "net.prototxt", "-weights", "w.caffemodel.h5", "-iterations", 1], work)
    proc_error(proc, "w.caffemodel.h5", "fc1/0", "stores only")
    assert peak < PEAK_MB, peak

    work = _h5_workdir(tmp_path / "history")
    _h5(work / "s.solverstate.h5", iter=np.array([1], "i4"), current_step=np.array([0], "i4"),
        **{"history/0": (_BOMB,), "history/1": np.zeros(2, "f4")})
    proc, peak = _peak_run(["train", "-solver", "solver.prototxt", "-snapshot", "s.solverstate.h5"], work)
    proc_error(proc, "s.solverstate.h5", "history/0", "stores only")
    assert peak < PEAK_MB, peak


def test_hdf5_data_reads_only_the_rows_of_each_batch(tmp_path, monkeypatch):
    import h5py

    from caffe_compat.net.layers.hdf5_data import HDF5Batches

    rows = np.arange(40, dtype="f4").reshape(20, 2)
    _h5(tmp_path / "a.h5", data=rows)
    read = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: read.append(key) or real(self, key))
    batches = HDF5Batches([str(tmp_path / "a.h5")], [20], ["data"], 3)
    np.testing.assert_array_equal(batches[1][0].numpy(), rows[3:6])
    assert read == [slice(3, 6)]
    read.clear()
    shuffled = HDF5Batches([str(tmp_path / "a.h5")], [20], ["data"], 3, shuffle=True, seed=1)
    picked = [shuffled.locate(i)[1] for i in range(3)]
    np.testing.assert_array_equal(shuffled[0][0].numpy(), rows[picked])
    assert len(read) == 1 and sorted(read[0] if isinstance(read[0], list) else []) == sorted(set(picked))


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_sources_that_are_not_regular_files_are_refused_by_name(tmp_path, kind):
    work = _h5_workdir(tmp_path, source="/dev/zero" if kind == "device" else "src")
    if kind == "fifo":
        os.mkfifo(work / "src")
    elif kind == "folder":
        (work / "src").mkdir()
    proc, peak = _peak_run(["train", "-solver", "solver.prototxt"], work, timeout=60)
    proc_error(proc, "/dev/zero" if kind == "device" else "src", {"device": "character device", "fifo": "FIFO",
                                                                   "folder": "folder"}[kind])
    assert peak < PEAK_MB, peak


def test_hdf5_files_listed_that_are_fifos_are_refused_by_name(tmp_path):
    work = _h5_workdir(tmp_path)
    os.mkfifo(work / "pipe.h5")
    (work / "list.txt").write_text("rows.h5\npipe.h5\n")
    proc_error(run("train", "-solver", "solver.prototxt", cwd=work, timeout=60), "pipe.h5", "FIFO")


# ---------------------------------------------------------------------------- downloads: a slow drip


class _Drip(http.server.BaseHTTPRequestHandler):
    """A 1000-byte video sent one byte every half second (over 8 minutes in all)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:  # the client gave up
            pass


def test_a_server_dripping_a_byte_every_half_second_is_cut_off_within_the_timeout(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        sheet = tmp_path / "clean.csv"
        sheet.write_text(f"url,video_id,score\nhttp://127.0.0.1:{httpd.server_address[1]}/v.mp4,drip,70\n")
        started = time.monotonic()
        proc = run("workflow", "download-videos", sheet, "-o", tmp_path / "out", "--timeout", 2, "--retries", 1,
                   "--backoff", 0, "--no-progress", timeout=90)
        took = time.monotonic() - started
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "download_manifest.csv").open()))
    assert [(r["status"], r["attempts"]) for r in rows] == [("failed", "2")], rows
    assert "--speed-limit" in rows[0]["error"], rows
    assert took < 60, took  # two attempts of about --timeout seconds each, not --max-time (1800 s)


# ---------------------------------------------------------------------------- ONNX metadata


def _onnx_with_metadata(path: Path, record: str) -> Path:
    """A float-input model (Flatten of a 1x3x4x4 input) whose transform metadata is ``record``."""
    import onnx
    from onnx import TensorProto, helper

    from caffe_compat.onnx.transform import METADATA_KEY

    graph = helper.make_graph([helper.make_node("Flatten", ["data"], ["prob"])], "g",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 48])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: record})
    onnx.save(model, str(path))
    return path


_GOOD_META = {"input": "data", "dtype": "float32", "channel_order": "bgr", "resize": [4, 4], "crop_size": 0,
              "mean": None, "scale": 1.0}


@pytest.mark.parametrize("record, fragment", [
    ("[1, 2, 3]", "a JSON list"),
    ('"just a string"', "a JSON str"),
    (json.dumps({**_GOOD_META, "resize": [100000, 100000]}), "past any image"),
    (json.dumps({**_GOOD_META, "resize": [4, 4, 4]}), "'resize' must be [height, width]"),
    (json.dumps({**_GOOD_META, "resize": "4x4"}), "'resize' must be [height, width]"),
    (json.dumps({**_GOOD_META, "dtype": "uint8"}), "says the input is uint8"),
    (json.dumps({**_GOOD_META, "input": "other"}), "names input 'other'"),
    (json.dumps({**_GOOD_META, "scale": "x"}), "'scale'"),
], ids=["list", "string", "resize-100000", "resize-3-values", "resize-text", "uint8-on-float", "no-such-input",
        "scale-text"])
def test_hostile_onnx_metadata_is_one_error_naming_the_model(tmp_path, record, fragment):
    import cv2

    model = _onnx_with_metadata(tmp_path / "m.onnx", record)
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((4, 4, 3), np.uint8))
    one_error(cli("predict", "--onnx", model, tmp_path / "x.png"), str(model), fragment)
    good = _onnx_with_metadata(tmp_path / "good.onnx", json.dumps(_GOOD_META))
    assert cli("predict", "--onnx", good, tmp_path / "x.png").exit_code == 0


# ---------------------------------------------------------------------------- import-torch: dtypes, keys, --map

_FC_NET = """name: "fc"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }
"""


def _fc(tmp_path: Path) -> tuple[Path, dict]:
    import torch

    (tmp_path / "fc.prototxt").write_text(_FC_NET)
    weight = torch.tensor([[0.5, -1.0, 2.0], [0.25, 4.0, -0.125]])  # exact in every format below
    return tmp_path / "fc.prototxt", {"fc.weight": weight, "fc.bias": torch.tensor([1.0, -2.0])}


def test_import_torch_takes_narrow_float_safetensors_as_float32(tmp_path):
    import torch
    from safetensors.torch import save_file

    from caffe_compat.io.caffemodel import load_weights

    net, state = _fc(tmp_path)
    for dtype in (torch.bfloat16, torch.float16, torch.float8_e4m3fn):
        save_file({k: v.to(dtype) for k, v in state.items()}, str(tmp_path / "s.safetensors"))
        out = tmp_path / f"{dtype}.caffemodel"
        result = cli("import-torch", "--model", net, "--state", tmp_path / "s.safetensors", "-o", out)
        assert result.exit_code == 0, (dtype, result.output)
        weights = load_weights(out)["fc"]
        np.testing.assert_array_equal(weights[0], state["fc.weight"].numpy())
        np.testing.assert_array_equal(weights[1], state["fc.bias"].numpy())


def test_import_torch_pt_with_integer_keys_is_one_error(tmp_path):
    import torch

    net, state = _fc(tmp_path)
    torch.save({0: state["fc.weight"], 1: state["fc.bias"]}, tmp_path / "s.pt")
    one_error(cli("import-torch", "--model", net, "--state", tmp_path / "s.pt", "-o", tmp_path / "w.caffemodel"),
              "s.pt", "keys must be names", "0 (int)")


@pytest.mark.parametrize("mapping, fragment", [
    ({"blobs": {"fc.0": 7, "fc.1": "b"}}, "'blobs' value for 'fc.0' is 7"),
    ({"blobs": {"fc.0": ["w"], "fc.1": "b"}}, "'blobs' value for 'fc.0'"),
    ({"blobs": {"fc.0": "w", "fc.1": "b"}, "constants": [1]}, "'constants' must be an object"),
    ({"blobs": {"fc.0": "w"}, "constants": {"fc.1": "one"}}, "'constants' value for 'fc.1'"),
    ({"blobs": {"fc.0": "w", "fc.1": "b"}, "ignore": "x*"}, "'ignore' must be a list"),
], ids=["int-key", "list-key", "constants-list", "constant-text", "ignore-text"])
def test_import_torch_map_values_of_the_wrong_json_type(tmp_path, mapping, fragment):
    from safetensors.torch import save_file

    net, state = _fc(tmp_path)
    save_file({"w": state["fc.weight"], "b": state["fc.bias"]}, str(tmp_path / "s.safetensors"))
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    one_error(cli("import-torch", "--model", net, "--state", tmp_path / "s.safetensors", "--map", tmp_path / "map.json",
                  "-o", tmp_path / "w.caffemodel"), "map.json", fragment)
    assert not (tmp_path / "w.caffemodel").exists()


# ---------------------------------------------------------------------------- solver states


def test_solverstates_with_an_iter_past_int32_are_one_error(fixtures, tmp_path, monkeypatch):
    from caffe_compat.io.solverstate import load_solverstate
    from solver_util import lenet_workdir
    from test_hostile_input import SOLVER

    work = lenet_workdir(fixtures, tmp_path)
    monkeypatch.chdir(work)
    Path("snap").mkdir()
    Path("s.prototxt").write_text(SOLVER.format(max_iter=2))
    shutil.copy(fixtures / "solver" / "sgd_step" / "lenet_iter_6.caffemodel", "ok.caffemodel")
    _, history = load_solverstate(fixtures / "solver" / "sgd_step" / "lenet_iter_6.solverstate")
    _h5(work / "big.solverstate.h5", iter=np.array([2**62], np.int64), current_step=np.array([0], np.int32),
        learned_net=np.array(b"ok.caffemodel", dtype="S14"), **{f"history/{i}": a for i, a in enumerate(history)})
    # in a fresh process: the net's Data layer keeps the fixture LMDB open in the process that built it
    proc_error(run("train", "-solver", "s.prototxt", "-snapshot", "big.solverstate.h5", cwd=work), "big.solverstate.h5",
               "'iter' is 4611686018427387904")
    from caffe_compat.io.wire import encode_varint

    raw = (fixtures / "solver" / "sgd_step" / "lenet_iter_6.solverstate").read_bytes()
    Path("big.solverstate").write_bytes(b"\x08" + encode_varint(2**62) + raw)  # protobuf would read iter 0
    proc_error(run("train", "-solver", "s.prototxt", "-snapshot", "big.solverstate", cwd=work), "big.solverstate",
               "SolverState.iter", "4611686018427387904")


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_image_list_files_that_never_end_are_refused_by_name(tmp_path, kind):
    listing = Path("/dev/zero") if kind == "device" else tmp_path / "list.txt"
    if kind == "fifo":
        os.mkfifo(listing)
    proc, peak = _peak_run(["convert-imageset", f"{tmp_path}/", listing, tmp_path / "db"], tmp_path, timeout=60)
    proc_error(proc, str(listing), "character device" if kind == "device" else "FIFO")
    assert peak < PEAK_MB and not (tmp_path / "db").exists()
