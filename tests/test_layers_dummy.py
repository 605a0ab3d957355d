"""DummyData: shapes (current and legacy fields), fillers, and Caffe's refill rule."""

from __future__ import annotations

import pytest
import torch
from layers_util import make_layer, run

from caffe_compat.errors import CaffeCompatError


def test_constant_tops_are_filled_once_others_every_forward():
    layer = make_layer(
        'type: "DummyData" top: "a" top: "b" dummy_data_param { '
        'data_filler { type: "constant" value: 3 } data_filler { type: "uniform" min: 2 max: 4 } '
        "shape { dim: 2 dim: 3 } shape { dim: 5 } }"
    )
    assert layer.top_shapes() == [(2, 3), (5,)]
    a1, b1 = run(layer)
    a2, b2 = run(layer)
    assert torch.equal(a1, torch.full((2, 3), 3.0)) and a1 is a2
    assert not torch.equal(b1, b2) and bool(((b1 >= 2) & (b1 <= 4)).all())


def test_default_filler_is_zero_and_legacy_dims():
    layer = make_layer('type: "DummyData" top: "a" top: "b" dummy_data_param { num: 2 channels: 3 channels: 1 height: 4 width: 5 }')
    a, b = run(layer)
    assert a.shape == (2, 3, 4, 5) and b.shape == (2, 1, 4, 5)
    assert not a.any() and not b.any()


@pytest.mark.parametrize(
    "body, match",
    [
        ('shape { dim: 2 } num: 1 channels: 1 height: 1 width: 1', "both shape and legacy"),
        ('shape { dim: 2 } shape { dim: 3 } shape { dim: 4 }', "specify 'shape' once"),
        ('shape { dim: 2 } data_filler { } data_filler { } data_filler { }', "number of data fillers"),
        ('num: 1 num: 2 num: 3 channels: 1 height: 1 width: 1', "specify 'num' once"),
    ],
)
def test_errors(body, match):
    with pytest.raises(CaffeCompatError, match=match):
        make_layer(f'type: "DummyData" top: "a" top: "b" dummy_data_param {{ {body} }}')
