"""LevelDB sources (plyvel): a Data layer reads them as it reads the same records in an LMDB;
``convert-db`` makes that LMDB; a LevelDB too big for memory is told how."""

from __future__ import annotations

import io

import pytest
import torch
from click.testing import CliRunner

import caffe_compat.data.leveldb as leveldb
from caffe_compat.cli import main
from caffe_compat.data.leveldb import build_leveldb, iter_leveldb
from caffe_compat.data.lmdb_dataset import iter_records
from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.builder import load_net
from caffe_compat.net.registry import TRAIN
from caffe_compat.solver.caffe_log import CaffeLog
from caffe_compat.solver.solver import Solver, TrainOptions
from solver_util import lenet_workdir


@pytest.fixture
def leveldb_work(fixtures, tmp_path, monkeypatch):
    work = lenet_workdir(fixtures, tmp_path)
    with build_leveldb(work / "data" / "train_leveldb") as db:
        for key, value in iter_records(work / "data" / "train_lmdb"):
            db.put(key, value)
    text = (work / "net.prototxt").read_text()
    (work / "leveldb.prototxt").write_text(text.replace('source: "data/train_lmdb" batch_size: 8 backend: LMDB',
                                                        'source: "data/train_leveldb" batch_size: 8 backend: LEVELDB'))
    monkeypatch.chdir(work)
    return work


def test_data_layer_reads_a_leveldb_like_the_same_lmdb(leveldb_work):
    from_lmdb = load_net("net.prototxt", TRAIN)
    from_leveldb = load_net("leveldb.prototxt", TRAIN)
    for _ in range(3):
        a = from_lmdb.layer_by_name("data").next_batch()
        b = from_leveldb.layer_by_name("data").next_batch()
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_training_from_a_leveldb_equals_training_from_the_lmdb(leveldb_work):
    solver = 'net: "{}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 4\ndisplay: 0\nsnapshot: 0\nrandom_seed: 3\n'
    (leveldb_work / "a.prototxt").write_text(solver.format("net.prototxt"))
    (leveldb_work / "b.prototxt").write_text(solver.format("leveldb.prototxt"))
    runs = [Solver(s, TrainOptions(progress=False, workers=2, weights=["init.caffemodel"]),
                   log=CaffeLog(io.StringIO())).solve() for s in ("a.prototxt", "b.prototxt")]
    assert runs[0].losses == runs[1].losses


def test_convert_db_copies_every_record(leveldb_work):
    result = CliRunner().invoke(main, ["convert-db", "data/train_leveldb", "converted_lmdb"])
    assert result.exit_code == 0, result.output
    records = list(iter_records("converted_lmdb"))
    assert records == list(iter_leveldb("data/train_leveldb")) and records
    assert f"copied {len(records)} records" in result.stderr
    again = CliRunner().invoke(main, ["convert-db", "data/train_leveldb", "converted_lmdb"])
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_a_big_leveldb_names_the_conversion_command(leveldb_work, monkeypatch):
    monkeypatch.setattr(leveldb, "MAX_IN_MEMORY", 1000)
    with pytest.raises(CaffeCompatError, match=r"caffe-compat convert-db data/train_leveldb data/train_leveldb_lmdb"):
        load_net("leveldb.prototxt", TRAIN)


def test_a_half_built_leveldb_never_appears(tmp_path):
    with pytest.raises(RuntimeError):
        with build_leveldb(tmp_path / "db") as db:
            db.put(b"k", b"v")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
