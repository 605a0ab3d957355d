"""The LMDB reader: every Caffe-written fixture LMDB, worker processes, fork and pickling."""

from __future__ import annotations

import json
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from caffe_compat.data.lmdb_dataset import LMDBDataset, count_records
from caffe_compat.errors import CaffeCompatError


def fixture_lmdbs(root):
    return sorted(p.parent for p in root.rglob("data.mdb"))


def test_reads_every_fixture_lmdb(fixtures) -> None:
    summary = json.loads((fixtures / "lmdb" / "summary.json").read_text())
    dbs = fixture_lmdbs(fixtures)
    assert len(dbs) >= 11
    for db in dbs:
        ds = LMDBDataset(db, cv2.IMREAD_COLOR)  # like force_color: the 16-bit PNG has no 8-bit native decode
        assert len(ds) == count_records(db)
        name = db.name.removesuffix("_lmdb")
        if name in summary:
            assert len(ds) == summary[name]["entries"]
            for i, datum in enumerate(summary[name]["datums"]):
                image, label = ds[i]
                assert ds.keys[i] == datum["key"].encode() and label == datum["label"]
                assert image.dtype == np.uint8 and image.ndim == 3
                if not datum["encoded"]:
                    assert image.shape == (datum["channels"], datum["height"], datum["width"])


def test_native_decode_of_16_bit_png_is_a_clear_error(fixtures) -> None:
    ds = LMDBDataset(fixtures / "lmdb" / "train_encoded_lmdb")
    assert ds[1][0].shape == (1, 32, 32)  # grey PNG decodes natively to one channel, as in Caffe
    with pytest.raises(CaffeCompatError, match="'00000009_b/grey16_016.png': image data type must be unsigned byte"):
        ds[ds.keys.index(b"00000009_b/grey16_016.png")]


def test_dataloader_workers_after_parent_use(fixtures) -> None:
    ds = LMDBDataset(fixtures / "lmdb" / "train_raw32_lmdb")
    direct = [ds[i] for i in range(len(ds))]  # the parent opened the environment before forking
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    images = torch.cat([b[0] for b in loader])
    labels = torch.cat([b[1] for b in loader])
    assert torch.equal(images, torch.from_numpy(np.stack([d[0] for d in direct])))
    assert labels.tolist() == [d[1] for d in direct]


def test_pickled_dataset_reopens_lazily(fixtures) -> None:
    ds = LMDBDataset(fixtures / "lmdb" / "val_raw32_lmdb")
    first = ds[0][0].copy()
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._txn is None
    assert np.array_equal(clone[0][0], first)


def test_fork_child_reads_with_own_handle(fixtures) -> None:
    ds = LMDBDataset(fixtures / "lmdb" / "val_raw32_lmdb")
    expected = ds[3][1]
    pid = os.fork()
    if pid == 0:  # child: inherited handle must be replaced, not reused
        ok = ds[3][1] == expected and ds._pid == os.getpid()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ds[3][1] == expected


def test_zero_copy_view_equals_protobuf_parse(fixtures) -> None:
    from caffe_compat.data.datum import datum_array, parse_datum, raw_datum_view
    from caffe_compat.data.lmdb_dataset import iter_records

    seen = 0
    for db in fixture_lmdbs(fixtures):
        for _, value in iter_records(db):
            datum = parse_datum(value)
            fast = raw_datum_view(memoryview(value))
            if datum.encoded:
                assert fast is None
                continue
            seen += 1
            assert fast[1] == datum.label and np.array_equal(fast[0], datum_array(datum))
    assert seen > 50
    edge = dict(iter_records(fixtures / "lmdb" / "edge_raw16_lmdb"))
    assert raw_datum_view(memoryview(edge[b"00000002_a/grad_002.jpg"]))[1] == -3
