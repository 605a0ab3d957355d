"""Slice, Reshape, Crop, Tile, ArgMax and LRN: Caffe's shape rules, tie order and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layers_util import make_layer, run

from caffe_compat.errors import CaffeCompatError


def test_slice_points_and_equal_parts_and_legacy_slice_dim():
    x = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    tops = run(make_layer('type: "Slice" top: "a" top: "b" top: "c" slice_param { slice_point: 1 slice_point: 4 }', x.shape), x)
    assert [t.shape[1] for t in tops] == [1, 3, 2]
    assert torch.equal(torch.cat(tops, 1), x)
    tops = run(make_layer('type: "Slice" top: "a" top: "b" slice_param { slice_dim: 2 }', x.shape), x)
    assert torch.equal(tops[1], x[:, :, 1:])
    with pytest.raises(CaffeCompatError, match="equal parts"):
        make_layer('type: "Slice" top: "a" top: "b" top: "c" top: "d" slice_param { axis: 1 }', x.shape)
    with pytest.raises(CaffeCompatError, match="strictly increasing"):
        make_layer('type: "Slice" top: "a" top: "b" top: "c" slice_param { slice_point: 4 slice_point: 2 }', x.shape)


@pytest.mark.parametrize(
    "text, bottom, expected",
    [
        ("shape { dim: 0 dim: -1 dim: 10 }", (2, 3, 4, 5), (2, 6, 10)),
        ("shape { dim: 1 dim: -1 } axis: 1 num_axes: 1", (2, 3, 4, 5), (2, 1, 3, 4, 5)),
        ("shape { dim: 0 dim: 0 dim: -1 }", (2, 3, 4, 5), (2, 3, 20)),
        ("shape { dim: 1 dim: 1 } axis: -1", (2, 3, 4), (2, 3, 4, 1, 1)),  # -1 = after the last axis
        ("shape { } axis: 1 num_axes: 0", (2, 3), (2, 3)),
        ("shape { dim: -1 } axis: 1", (2, 3, 4), (2, 12)),
        ("shape { dim: 6 } axis: 0 num_axes: 2", (2, 3, 4), (6, 4)),
    ],
)
def test_reshape_rules(text, bottom, expected):
    layer = make_layer(f'type: "Reshape" reshape_param {{ {text} }}', bottom)
    assert layer.top_shapes() == [expected]
    x = torch.arange(int(np.prod(bottom)), dtype=torch.float32).reshape(bottom)
    (y,) = run(layer, x)
    assert torch.equal(y.reshape(-1), x.reshape(-1))


def test_reshape_follows_the_batch_size_at_forward():
    layer = make_layer('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', (2, 3, 4))
    assert layer(torch.zeros(5, 3, 4))[0].shape == (5, 12)


@pytest.mark.parametrize(
    "text, match",
    [
        ("shape { dim: -1 dim: -1 }", "more than one -1"),
        ("shape { dim: 7 dim: -1 }", r"cannot infer the -1 .*: its count 24 is not divisible by 7, the product "
                                     r"of the other dimensions \(7\)"),
        ("shape { dim: 0 dim: 5 dim: -1 }", r"its count 24 is not divisible by 10, .*\(2x5\); Caffe refuses it too"),
        ("shape { dim: 5 dim: 5 }", "changes the count"),
        ("shape { dim: 0 dim: 0 dim: 0 dim: 0 }", "lacks"),
        ("shape { dim: 1 } axis: 1 num_axes: 5", "go past"),
    ],
)
def test_reshape_errors_name_the_layer(text, match):
    with pytest.raises(CaffeCompatError, match=f"layer 'reshape'.*{match}"):
        make_layer(f'type: "Reshape" reshape_param {{ {text} }}', (2, 3, 4))


def test_crop_offsets_and_reference_gets_no_gradient():
    x = torch.arange(2 * 3 * 9 * 11, dtype=torch.float32).reshape(2, 3, 9, 11).requires_grad_(True)
    ref = torch.zeros(1, 2, 5, 7, requires_grad=True)
    layer = make_layer('type: "Crop" crop_param { axis: 1 offset: 1 offset: 2 offset: 0 }', x.shape, ref.shape)
    (y,) = run(layer, x, ref)
    assert torch.equal(y, x[:, 1:3, 2:7, 0:7])
    y.sum().backward()
    assert ref.grad is None and x.grad.sum() == y.numel()
    with pytest.raises(CaffeCompatError, match="invalid crop in axis 2: offset 5 \\+ size 5"):
        make_layer('type: "Crop" crop_param { offset: 5 }', (2, 3, 9, 11), (2, 3, 5, 7))
    with pytest.raises(CaffeCompatError, match="offsets given"):
        make_layer('type: "Crop" crop_param { offset: 1 offset: 1 offset: 1 }', (2, 3, 9, 11), (2, 3, 5, 7))


def test_tile_repeats_the_whole_block():
    x = torch.arange(6, dtype=torch.float32).reshape(1, 2, 3)
    (y,) = run(make_layer('type: "Tile" tile_param { axis: 1 tiles: 2 }', x.shape), x)
    assert y[0].tolist() == [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]]
    with pytest.raises(CaffeCompatError, match="tiles must be positive"):
        make_layer('type: "Tile" tile_param { tiles: 0 }', x.shape)


def _caffe_argmax(row: np.ndarray, k: int) -> list[tuple[float, int]]:
    """std::partial_sort with std::greater<pair<value, index>>."""
    return sorted(((float(v), i) for i, v in enumerate(row)), reverse=True)[:k]


@settings(max_examples=50, deadline=None)
@given(
    data=st.lists(st.integers(-3, 3), min_size=12, max_size=12).map(lambda v: np.array(v, np.float32).reshape(2, 6) / 2),
    k=st.integers(1, 6),
)
def test_argmax_ties_prefer_the_larger_index(data, k):
    (y,) = run(make_layer(f'type: "ArgMax" argmax_param {{ top_k: {k} out_max_val: true }}', data.shape), torch.tensor(data))
    for n in range(2):
        expected = _caffe_argmax(data[n], k)
        assert y[n, 0].tolist() == [i for _, i in expected]
        assert y[n, 1].tolist() == [v for v, _ in expected]
    (ax,) = run(make_layer(f'type: "ArgMax" argmax_param {{ axis: 1 top_k: {k} }}', data.shape), torch.tensor(data))
    assert ax.tolist() == [[i for _, i in _caffe_argmax(data[n], k)] for n in range(2)]


def test_argmax_errors_and_shapes():
    assert make_layer('type: "ArgMax"', (3, 2, 2, 2)).top_shapes() == [(3, 1, 1, 1)]
    with pytest.raises(CaffeCompatError, match="top_k must be in"):
        make_layer('type: "ArgMax" argmax_param { top_k: 11 }', (3, 10))
    with pytest.raises(CaffeCompatError, match="axis 4 out of range"):
        make_layer('type: "ArgMax" argmax_param { axis: 4 }', (3, 10, 2))


def _lrn_reference(x: np.ndarray, size: int, alpha: float, beta: float, k: float, within: bool) -> np.ndarray:
    """MANIFEST behaviour 7, written as explicit window sums."""
    n, c, h, w = x.shape
    p = (size - 1) // 2
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (p, p), (p, p), (p, p)))
    out = np.empty_like(x, dtype=np.float64)
    for ci in range(c):
        for hi in range(h):
            for wi in range(w):
                if within:
                    s = sq[:, ci + p, hi : hi + size, wi : wi + size].sum(axis=(1, 2))
                    scale = 1 + alpha / size**2 * s
                else:
                    s = sq[:, ci : ci + size, hi + p, wi + p].sum(axis=1)
                    scale = k + alpha / size * s
                out[:, ci, hi, wi] = x[:, ci, hi, wi] * scale**-beta
    return out


@pytest.mark.parametrize("within", [False, True])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn_regions(within, size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 6, 4, 5)).astype(np.float32)
    region = "WITHIN_CHANNEL" if within else "ACROSS_CHANNELS"
    text = f'type: "LRN" lrn_param {{ norm_region: {region} local_size: {size} alpha: 0.7 beta: 0.6 k: 3 }}'
    (y,) = run(make_layer(text, x.shape), torch.tensor(x))
    np.testing.assert_allclose(y.numpy(), _lrn_reference(x, size, 0.7, 0.6, 3.0, within), rtol=1e-5, atol=1e-6)


def test_lrn_rejects_even_size_and_non_4d():
    with pytest.raises(CaffeCompatError, match="odd values"):
        make_layer('type: "LRN" lrn_param { local_size: 4 }', (1, 3, 2, 2))
    with pytest.raises(CaffeCompatError, match="4 axes"):
        make_layer('type: "LRN"', (1, 3, 2))


@pytest.mark.parametrize("within", [False, True])
def test_lrn_bf16_channels_last(within):
    x = torch.randn(2, 5, 4, 4)
    region = "WITHIN_CHANNEL" if within else "ACROSS_CHANNELS"
    layer = make_layer(f'type: "LRN" lrn_param {{ norm_region: {region} local_size: 3 }}', tuple(x.shape))
    (ref,) = run(layer, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (y,) = run(layer, x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=3e-2)
