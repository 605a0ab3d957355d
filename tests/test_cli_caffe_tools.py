"""Caffe's command lines as they are: -help everywhere, tool names through links (busybox),
glog's environment variables, solver_mode GPU on a CPU box, device_query, extract_features,
upgrade_solver_proto_text, Python layers from PYTHONPATH in ``train``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from caffe_compat.cli import COMMANDS, main
from caffe_compat.cli.busybox import LINKS, busybox_args
from caffe_compat.data.leveldb import iter_leveldb
from caffe_compat.data.lmdb_dataset import iter_records
from caffe_compat.io.prototxt import read_solver
from caffe_compat.net.builder import load_net
from caffe_compat.net.registry import TEST
from caffe_compat.proto import caffe_pb2
from solver_util import lenet_workdir

EXE = Path(sys.executable).with_name("caffe-compat")


def _run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


@pytest.mark.parametrize("command", [[]] + [[c] for c in sorted(COMMANDS)] + [["workflow", "balance-split"]])
@pytest.mark.parametrize("flag", ["-help", "--help"])
def test_help_flags_work_everywhere(command, flag):
    result = _run(*command, flag)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_caffe_train_help_is_not_read_as_short_flags():
    result = _run("train", "-help")
    assert result.exit_code == 0 and "-solver" in result.output and "No such option" not in result.output


@pytest.mark.parametrize("argv0, args, expected", [
    ("/x/build/tools/caffe", ["train", "-solver", "s"], (["train", "-solver", "s"], "caffe")),
    ("caffe.bin", ["time"], (["time"], "caffe")),
    ("./build/tools/compute_image_mean", ["db", "m"], (["compute-image-mean", "db", "m"], "compute_image_mean")),
    ("convert_imageset.bin", ["-gray"], (["convert-imageset", "-gray"], "convert_imageset")),
    (".venv/bin/caffe-compat", ["inspect", "x"], (["inspect", "x"], None)),
])
def test_busybox_arguments(argv0, args, expected):
    assert busybox_args([argv0, *args]) == expected


@pytest.mark.skipif(not EXE.exists(), reason="caffe-compat is not installed in this environment")
def test_links_made_by_link_tools_act_as_caffe_tools(fixtures, tmp_path):
    """What examples/imagenet/make_imagenet_mean.sh does, through $TOOLS links."""
    tools = tmp_path / "tools"
    tools.mkdir()
    made = subprocess.run([str(EXE), "link-tools", str(tools)], capture_output=True, text=True, check=True)
    assert sorted(Path(line).name for line in made.stdout.split()) == sorted(LINKS)
    script = tmp_path / "make_mean.sh"
    script.write_text(textwrap.dedent("""\
        #!/usr/bin/env sh
        set -e
        $TOOLS/compute_image_mean $DATA/train_raw32_lmdb $OUT/mean.binaryproto
        $TOOLS/caffe device_query -help > /dev/null
        echo "Done."
        """))
    env = {**os.environ, "TOOLS": str(tools), "DATA": str(fixtures / "lmdb"), "OUT": str(tmp_path)}
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "Done." in done.stdout and "mean_value channel [0]: 117.702" in done.stderr
    assert (tmp_path / "mean.binaryproto").read_bytes() == (fixtures / "mean" / "train_raw32_mean.binaryproto").read_bytes()


# ------------------------------------------------------------------ glog's environment


@pytest.fixture
def lenet(fixtures, tmp_path, monkeypatch):
    work = lenet_workdir(fixtures, tmp_path)
    (work / "solver.prototxt").write_text(
        'net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 2\ndisplay: 1\nsnapshot: 0\n'
        'snapshot_prefix: "snap"\nsolver_mode: GPU\nrandom_seed: 1\n')
    monkeypatch.chdir(work)
    return work


def test_glog_minloglevel_drops_lower_severities(lenet, monkeypatch):
    shown = _run("train", "-solver", "solver.prototxt", env={"GLOG_minloglevel": "0"})
    assert shown.exit_code == 0 and "] Iteration 1" in shown.stderr
    quiet = _run("train", "-solver", "solver.prototxt", env={"GLOG_minloglevel": "2"})
    assert quiet.exit_code == 0, quiet.output
    assert not [line for line in quiet.stderr.splitlines() if line[:1] in "IW" and line[1:5].isdigit()]
    assert "test_iter" not in quiet.stderr  # continuation lines of a dropped record go too
    failing = _run("train", "-solver", "nope.prototxt", env={"GLOG_minloglevel": "3"})
    assert failing.exit_code == 1 and "caffe-compat: error:" in failing.stderr  # errors are never dropped


def test_glog_log_dir_gets_a_glog_named_file_unless_logtostderr(lenet, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    result = _run("train", "-solver", "solver.prototxt", env={"GLOG_log_dir": str(logs)})
    assert result.exit_code == 0, result.output
    files = [p for p in logs.iterdir() if not p.is_symlink()]
    assert len(files) == 1 and ".log.INFO." in files[0].name
    text = (logs / f"{files[0].name.split('.')[0]}.INFO").read_text()
    assert text.startswith("Log file created at: ")
    assert "solver.cpp:239] Iteration 1" in text and "Optimization Done." in text
    again = _run("train", "-solver", "solver.prototxt", env={"GLOG_log_dir": str(logs), "GLOG_logtostderr": "1"})
    assert again.exit_code == 0 and len([p for p in logs.iterdir() if not p.is_symlink()]) == 1
    missing = _run("train", "-solver", "solver.prototxt", env={"GLOG_log_dir": str(tmp_path / "none")})
    assert missing.exit_code == 1 and "GLOG_log_dir" in missing.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_solver_mode_gpu_without_cuda_says_so_once(lenet):
    result = _run("train", "-solver", "solver.prototxt")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "solver_mode is GPU" in line]
    assert len(lines) == 1 and lines[0].startswith("W") and "training on the CPU" in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_query_without_cuda_is_one_clear_line():
    result = _run("device_query", "-gpu", "0")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "caffe-compat: error: device_query: no CUDA device is visible (torch.cuda.device_count() is 0); "
        "caffe-compat runs on the CPU here"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_query_lists_the_gpu():
    result = _run("device_query", "-gpu", "0")
    assert result.exit_code == 0, result.output
    assert "Querying GPUs 0" in result.stderr and torch.cuda.get_device_name(0) in result.stderr


# ------------------------------------------------------------------ tools


def test_upgrade_solver_proto_text(tmp_path):
    old = tmp_path / "old.prototxt"
    old.write_text('net: "n.prototxt"\nbase_lr: 0.001\nsolver_type: ADAM\nmomentum: 0.9\n')
    result = _run("upgrade_solver_proto_text", old, tmp_path / "new.prototxt")
    assert result.exit_code == 0, result.output
    new = (tmp_path / "new.prototxt").read_text()
    assert 'type: "Adam"' in new and "solver_type" not in new
    assert read_solver(tmp_path / "new.prototxt").type == "Adam"
    assert "Wrote upgraded SolverParameter text proto to" in result.stderr
    again = _run("upgrade_solver_proto_text", tmp_path / "new.prototxt", tmp_path / "same.prototxt")
    assert "File already in latest proto format" in again.stderr
    assert (tmp_path / "same.prototxt").read_text() == new


@pytest.mark.parametrize("db_type", ["lmdb", "leveldb"])
def test_extract_features_writes_caffes_datums(lenet, db_type):
    result = _run("extract_features", "init.caffemodel", "net.prototxt", "ip2,pool1", "ip2_db,pool1_db", 3, db_type)
    assert result.exit_code == 0, result.output
    assert "Extracted features of 24 query images for feature blob ip2" in result.stderr
    assert "Successfully extracted the features!" in result.stderr
    net = load_net("net.prototxt", TEST, weights="init.caffemodel")
    with torch.no_grad():
        want = [net.forward(blobs=["ip2", "pool1"]) for _ in range(3)]
    read = iter_records if db_type == "lmdb" else iter_leveldb
    for blob, db in (("ip2", "ip2_db"), ("pool1", "pool1_db")):
        records = list(read(db))
        assert [k for k, _ in records] == [f"{i:010d}".encode() for i in range(24)]
        expected = torch.cat([w[blob] for w in want]).numpy()
        for (_, value), item in zip(records, expected):
            datum = caffe_pb2.Datum.FromString(value)
            shape = item.shape + (1,) * (3 - item.ndim)
            assert (datum.channels, datum.height, datum.width) == shape
            np.testing.assert_array_equal(np.array(datum.float_data, np.float32), item.reshape(-1))
    exists = _run("extract_features", "init.caffemodel", "net.prototxt", "ip2", "ip2_db", 1, db_type)
    assert exists.exit_code == 1 and "already exists" in exists.stderr


PYLAYER = '''
import caffe_compat.pycaffe as caffe


class Double(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
'''


@pytest.mark.skipif(not EXE.exists(), reason="caffe-compat is not installed in this environment")
def test_train_finds_python_layers_on_pythonpath(lenet):
    (lenet / "mylayers").mkdir()
    (lenet / "mylayers" / "double_layer.py").write_text(PYLAYER)
    text = (lenet / "net.prototxt").read_text()
    text = text.replace('bottom: "pool2"\n  top: "ip1"', 'bottom: "pool2d"\n  top: "ip1"')
    at = text.index('layer {\n  name: "ip1"')
    text = text[:at] + ('layer {\n  name: "double"\n  type: "Python"\n  bottom: "pool2"\n  top: "pool2d"\n'
                        '  python_param { module: "double_layer" layer: "Double" }\n}\n') + text[at:]
    (lenet / "net.prototxt").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(lenet / "mylayers")}
    done = subprocess.run([str(EXE), "train", "-solver", "solver.prototxt", "-weights", "init.caffemodel"],
                          capture_output=True, text=True, env=env, cwd=lenet)
    assert done.returncode == 0, done.stderr
    assert "Iteration 2, loss = " in done.stderr
    sys.modules.pop("double_layer", None)
    missing = _run("train", "-solver", "solver.prototxt")  # this process has no mylayers on its path
    assert missing.exit_code == 1
    assert "cannot import python_param.module 'double_layer'" in missing.stderr and "Traceback" not in missing.output
