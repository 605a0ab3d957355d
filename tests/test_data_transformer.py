"""DataTransformer: Caffe's crop/mirror/mean/scale bit for bit, on numpy and on torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.data.lmdb_dataset import LMDBDataset
from caffe_compat.data.transformer import CropPlan, DataTransformer, read_mean_file
from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.registry import TEST, TRAIN
from caffe_compat.proto import caffe_pb2


def caffe_transform(data, mean, mean_values, scale, crop, plan):
    """data_transformer.cpp's Transform(const Datum&) loop, element by element, in float32."""
    c_n, h_n, w_n = data.shape
    height, width = (crop, crop) if crop else (h_n, w_n)
    out = np.zeros((c_n, height, width), np.float32)
    for c in range(c_n):
        for h in range(height):
            for w in range(width):
                src = (c, plan.h_off + h, plan.w_off + w)
                dst = (c, h, width - 1 - w) if plan.mirror else (c, h, w)
                x = np.float32(data[src])
                if mean is not None:
                    out[dst] = (x - mean[src]) * scale
                elif mean_values is not None:
                    out[dst] = (x - mean_values[c]) * scale
                else:
                    out[dst] = x * scale
    return out


@settings(max_examples=60, deadline=None)
@given(
    c=st.sampled_from([1, 3]), h=st.integers(4, 9), w=st.integers(4, 9), crop=st.integers(0, 4),
    mirror=st.booleans(), train=st.booleans(), mean_kind=st.sampled_from(["none", "file", "one", "all"]),
    scale=st.sampled_from([1.0, 0.00390625, 0.0125, 1.7]), seed=st.integers(0, 2**16),
)
def test_matches_caffe_loops(c, h, w, crop, mirror, train, mean_kind, scale, seed) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (c, h, w), dtype=np.uint8)
    param = caffe_pb2.TransformationParameter(crop_size=crop, mirror=mirror, scale=scale)
    mean = None
    if mean_kind == "file":
        mean = (rng.random((c, h, w)) * 255).astype(np.float32)
    elif mean_kind == "one":
        param.mean_value.append(float(rng.integers(0, 200)) + 0.3)
    elif mean_kind == "all":
        param.mean_value.extend([float(v) + 0.5 for v in rng.integers(0, 200, c)])
    t = DataTransformer(param, TRAIN if train else TEST, mean=mean)
    plan = t.plan(h, w, np.random.default_rng(seed))
    mv = None if not len(param.mean_value) else np.broadcast_to(np.asarray(param.mean_value, np.float32), (c,))
    expected = caffe_transform(data, mean, mv, np.float32(scale), crop, plan)
    got = t.apply(data, plan)
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    on_torch = t.apply_torch(torch.from_numpy(data[None].copy()), [plan])[0].numpy()
    assert np.array_equal(on_torch, expected)


def test_plans_follow_phase() -> None:
    test = DataTransformer(caffe_pb2.TransformationParameter(crop_size=224), TEST)
    assert test.plan(256, 260, None) == CropPlan(16, 18, False)
    assert not test.needs_rng
    train = DataTransformer(caffe_pb2.TransformationParameter(crop_size=224, mirror=True), TRAIN)
    rng = np.random.default_rng(0)
    plans = [train.plan(256, 256, rng) for _ in range(200)]
    assert {p.mirror for p in plans} == {False, True}
    assert min(p.h_off for p in plans) >= 0 and max(p.h_off for p in plans) <= 32
    assert len({p.w_off for p in plans}) > 10
    with pytest.raises(ValueError, match="rng"):
        train.plan(256, 256, None)


def test_nsfw_data_layer_crop(fixtures) -> None:
    """Caffe's Data layer output (TEST: centre crop 224, mean_value 104/117/123) from the LMDB."""
    image, label = LMDBDataset(fixtures / "nsfw" / "crop_lmdb")[0]
    param = caffe_pb2.TransformationParameter(crop_size=224, mean_value=[104, 117, 123])
    t = DataTransformer(param, TEST)
    expected = np.load(fixtures / "nsfw" / "crop_data.npy")
    assert label == 0
    assert np.array_equal(t(image)[None], expected)
    batch = torch.from_numpy(image[None].copy())
    assert torch.equal(t.apply_torch(batch, [t.plan(256, 256, None)]), torch.from_numpy(expected))


def test_mean_file_crop_and_scale(fixtures) -> None:
    """test/ fixture: crop 16 in TEST, mean_file subtracted at the crop offset, scale 0.0125."""
    root = fixtures / "test"
    param = caffe_pb2.TransformationParameter(crop_size=16, mean_file=str(root / "mean.binaryproto"), scale=0.0125)
    t = DataTransformer(param, TEST)
    ds = LMDBDataset(root / "test_lmdb")
    got = np.stack([t(ds[i][0]) for i in range(len(ds))])
    assert np.array_equal(got, np.load(root / "data.npy"))


def test_encoded_datum_force_color_and_gray(fixtures) -> None:
    from caffe_compat.data.datum import parse_datum
    from caffe_compat.data.lmdb_dataset import iter_records

    key, value = list(iter_records(fixtures / "lmdb" / "train_encoded_lmdb"))[1]  # the grey PNG
    datum = parse_datum(value)
    native = DataTransformer(None, TEST).transform_datum(datum)
    colour = DataTransformer(caffe_pb2.TransformationParameter(force_color=True), TEST).transform_datum(datum)
    assert native.shape == (1, 32, 32) and colour.shape == (3, 32, 32)
    assert np.array_equal(colour[0], native[0]) and np.array_equal(colour[2], native[0])


def test_parameter_errors(fixtures) -> None:
    with pytest.raises(CaffeCompatError, match="mean_file and mean_value"):
        DataTransformer(caffe_pb2.TransformationParameter(mean_file="m", mean_value=[1]), TEST)
    with pytest.raises(CaffeCompatError, match="force_color and force_gray"):
        DataTransformer(caffe_pb2.TransformationParameter(force_color=True, force_gray=True), TEST)
    t = DataTransformer(caffe_pb2.TransformationParameter(mean_value=[1, 2]), TEST)
    with pytest.raises(CaffeCompatError, match="1 mean_value or as many as channels"):
        t(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(CaffeCompatError, match="crop_size 5 is larger"):
        DataTransformer(caffe_pb2.TransformationParameter(crop_size=5), TEST)(np.zeros((1, 4, 8), np.uint8))
    with pytest.raises(CaffeCompatError, match="mean_file has shape"):
        DataTransformer(None, TEST, mean=np.zeros((3, 2, 2), np.float32))(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(CaffeCompatError, match="nope.binaryproto: cannot read"):
        read_mean_file(fixtures / "nope.binaryproto")
