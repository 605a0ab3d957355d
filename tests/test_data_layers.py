"""Data and ImageData layers: Caffe's batches, wrap-around, loaders with workers, rank shards."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe_compat.data.lmdb_dataset import LMDBDataset
from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.registry import TEST, TRAIN, layer_class
from caffe_compat.proto import caffe_pb2

TRAIN_LABELS = [3, 17, 5, 39, 12, 0, 21, 8, 26, 14, 33, 2, 19, 27, 36, 11, 24, 6]


def make_layer(text: str, phase: int):
    param = caffe_pb2.LayerParameter()
    text_format.Merge(text, param)
    return layer_class(param)(param, [], phase)


def data_layer(source, phase=TEST, batch=5, transform="", tops=("data", "label")):
    tops_text = " ".join(f'top: "{t}"' for t in tops)
    return make_layer(f'name: "data" type: "Data" {tops_text} transform_param {{ {transform} }} '
                      f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}', phase)


def test_nsfw_data_layer_reproduced(fixtures, monkeypatch) -> None:
    monkeypatch.chdir(fixtures)
    net = caffe_pb2.NetParameter()
    text_format.Merge((fixtures / "nsfw" / "data_layer.prototxt").read_text(), net)
    layer = layer_class(net.layer[0])(net.layer[0], [], TEST)
    assert layer.top_shapes() == [(1, 3, 224, 224), (1,)]
    data, label = layer.next_batch()
    assert torch.equal(data, torch.from_numpy(np.load(fixtures / "nsfw" / "crop_data.npy")))
    assert label.tolist() == [0.0] and label.dtype == torch.float32


def test_score_net_data_layer_three_batches(fixtures, monkeypatch) -> None:
    """test/test.prototxt's Data layer (crop 16, mean_file, scale 0.0125): Caffe's data.npy."""
    monkeypatch.chdir(fixtures / "test")
    net = caffe_pb2.NetParameter()
    text_format.Merge((fixtures / "test" / "test.prototxt").read_text(), net)
    layer = layer_class(net.layer[0])(net.layer[0], [], TEST)
    batches = [layer.next_batch() for _ in range(3)]
    assert torch.equal(torch.cat([d for d, _ in batches]), torch.from_numpy(np.load("data.npy")))
    assert torch.cat([lb for _, lb in batches]).long().tolist() == np.load("labels.npy").tolist()


def test_sequential_wraparound_logged(fixtures, caplog) -> None:
    layer = data_layer(fixtures / "lmdb" / "train_raw32_lmdb", batch=5)
    caplog.set_level(logging.INFO, logger="caffe_compat.data")
    labels = [layer.next_batch()[1].long().tolist() for _ in range(4)]
    assert sum(labels, []) == (TRAIN_LABELS + TRAIN_LABELS)[:20]
    assert caplog.text.count("Restarting data prefetching from start.") == 1
    layer.rewind()
    assert layer.next_batch()[1].long().tolist() == TRAIN_LABELS[:5]


def test_single_top_has_no_label(fixtures) -> None:
    layer = data_layer(fixtures / "lmdb" / "val_raw32_lmdb", batch=2, tops=("data",))
    assert layer.top_shapes() == [(2, 3, 32, 32)]
    assert len(layer.next_batch()) == 1


def test_loader_with_workers_equals_next_batch(fixtures) -> None:
    transform = "crop_size: 28 mirror: true scale: 0.5 mean_value: 100"
    layer = data_layer(fixtures / "lmdb" / "train_raw32_lmdb", TRAIN, 4, transform)
    layer.seed = 7
    expected = [layer.next_batch() for _ in range(6)]
    # another net on the same LMDB open in the parent (e.g. the TEST net) must not break workers
    data_layer(fixtures / "lmdb" / "train_raw32_lmdb").next_batch()
    got = list(layer.make_loader(num_workers=2, stop=6))
    for (d, lb), (ed, el) in zip(got, expected, strict=True):
        assert torch.equal(d, ed) and torch.equal(lb, el)
    raw = layer.make_loader(num_workers=0, stop=6, raw=True)
    for (images, lb, plans), (ed, _) in zip(raw, expected, strict=True):
        assert images.dtype == torch.uint8
        assert torch.equal(raw.dataset.finish(images, plans), ed)


def test_rank_shards_like_caffe_skip(fixtures) -> None:
    layer = data_layer(fixtures / "lmdb" / "train_raw32_lmdb", TRAIN, 3)
    shards = [[lb.long().tolist() for _, lb in layer.make_loader(rank=r, world_size=2, stop=2)] for r in range(2)]
    offsets = {r: [(b * 3 + i) * 2 + r for b in range(2) for i in range(3)] for r in range(2)}
    for r in range(2):
        assert sum(shards[r], []) == [TRAIN_LABELS[o % 18] for o in offsets[r]]


def test_image_data_layer_matches_converted_lmdb(fixtures) -> None:
    images = fixtures / "images"
    layer = make_layer(
        f'name: "img" type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{images}/val.txt" '
        f'root_folder: "{images}/" new_height: 32 new_width: 32 batch_size: 7 }}', TEST)
    assert layer.top_shapes() == [(7, 3, 32, 32), (7,)]
    data, label = layer.next_batch()
    lmdb = LMDBDataset(fixtures / "lmdb" / "val_raw32_lmdb")
    assert np.array_equal(data.numpy(), np.stack([lmdb[i][0] for i in range(7)]).astype(np.float32))
    assert label.long().tolist() == [lmdb[i][1] for i in range(7)]


def test_image_data_shuffle_covers_each_epoch(fixtures) -> None:
    images = fixtures / "images"
    layer = make_layer(
        f'name: "img" type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{images}/val.txt" '
        f'root_folder: "{images}/" new_height: 8 new_width: 8 batch_size: 7 shuffle: true }}', TRAIN)
    first, second = (layer.next_batch()[1].long().tolist() for _ in range(2))
    assert sorted(first) == sorted(second) == sorted([1, 15, 22, 38, 4, 31, 10])
    assert first != second


def test_layer_errors_name_the_layer(fixtures, tmp_path) -> None:
    with pytest.raises(CaffeCompatError, match="layer 'data'.*does not exist"):
        data_layer(tmp_path / "missing_lmdb")
    with pytest.raises(CaffeCompatError, match="layer 'data'.*batch_size must be > 0"):
        data_layer(fixtures / "lmdb" / "val_raw32_lmdb", batch=0)
    with pytest.raises(CaffeCompatError, match="crop_size 40 is larger"):
        data_layer(fixtures / "lmdb" / "val_raw32_lmdb", transform="crop_size: 40").top_shapes()
    with pytest.raises(CaffeCompatError, match="records of one batch differ in shape"):
        data_layer(fixtures / "lmdb" / "val_width30only_lmdb", batch=2).next_batch()
    images = fixtures / "images"
    bad = make_layer(
        f'name: "img" type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{images}/train.txt" '
        f'root_folder: "{images}/" new_height: 8 new_width: 8 batch_size: 20 }}', TEST)
    with pytest.raises(CaffeCompatError, match=r"layer 'img'.*train.txt:9: could not load 'd/not_an_image.jpg'"):
        bad.next_batch()
    with pytest.raises(CaffeCompatError, match="new_height .* and new_width .* together"):
        make_layer(f'name: "img" type: "ImageData" top: "data" image_data_param {{ source: "{images}/val.txt" '
                   'new_height: 8 }', TEST)
