"""Caffe layers that move values around without arithmetic: Slice, Reshape, Crop, Tile, ArgMax,
Silence, BatchReindex."""

from __future__ import annotations

import math

import torch

from caffe_compat.net.registry import Layer, Shape, register_layer


def canonical_axis(layer: Layer, axis: int, num_axes: int) -> int:
    """Caffe's Blob::CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    if not -num_axes <= axis < num_axes:
        raise layer.fail(f"axis {axis} out of range for a {num_axes}-axis blob")
    return axis + num_axes if axis < 0 else axis


@register_layer("Slice")
class Slice(Layer):
    """Cut the bottom along ``axis`` at ``slice_point``s, or into equal parts when none are given."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.slice_param
        if p.HasField("slice_dim") and p.HasField("axis"):
            raise self.fail("give either axis or the legacy slice_dim, not both")
        axis = p.slice_dim if p.HasField("slice_dim") else p.axis
        self.axis = canonical_axis(self, axis, len(self.bottom_shapes[0]))
        self.points = list(p.slice_point)
        self.num_tops = len(param.top)
        self.top_shapes()  # validate now, not at the first forward

    def _sizes(self, length: int) -> list[int]:
        if self.points:
            if len(self.points) != self.num_tops - 1:
                raise self.fail(
                    f"{len(self.points)} slice_point(s) need {len(self.points) + 1} tops, got {self.num_tops}"
                )
            bounds = [0, *self.points, length]
            if any(b <= a for a, b in zip(bounds, bounds[1:])):
                raise self.fail(
                    f"slice_point {self.points} must be strictly increasing inside (0, {length}) on axis {self.axis}"
                )
            return [b - a for a, b in zip(bounds, bounds[1:])]
        if length % self.num_tops:
            raise self.fail(f"axis {self.axis} of length {length} cannot be sliced into {self.num_tops} equal parts")
        return [length // self.num_tops] * self.num_tops

    def top_shapes(self) -> list[Shape]:
        shape = list(self.bottom_shapes[0])
        return [
            tuple(shape[: self.axis] + [size] + shape[self.axis + 1 :]) for size in self._sizes(shape[self.axis])
        ]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.split(x, self._sizes(x.shape[self.axis]), dim=self.axis))


@register_layer("Reshape")
class Reshape(Layer):
    """Replace axes [axis, axis + num_axes) with ``shape``: 0 copies the bottom's dim at that
    position, one -1 is inferred from the count. A negative ``axis`` counts from the end (-1 = after
    the last axis). The rule is applied to the actual bottom at every forward, like Caffe's Reshape."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.reshape_param
        self.dims = list(p.shape.dim)
        if self.dims.count(-1) > 1:
            raise self.fail(f"new shape {self.dims} has more than one -1 (inferred) dimension")
        if any(d < -1 for d in self.dims):
            raise self.fail(f"new shape {self.dims} has a dimension below -1")
        if p.num_axes < -1:
            raise self.fail(f"num_axes must be >= -1, got {p.num_axes}")
        self.axis, self.num_axes = int(p.axis), int(p.num_axes)
        self.top_shapes()

    def _top_shape(self, bottom: Shape) -> Shape:
        start = self.axis if self.axis >= 0 else len(bottom) + self.axis + 1
        if not 0 <= start <= len(bottom):
            raise self.fail(f"axis {self.axis} out of range for a {len(bottom)}-axis bottom")
        end = len(bottom) if self.num_axes == -1 else start + self.num_axes
        if end > len(bottom):
            raise self.fail(
                f"axis {self.axis} + num_axes {self.num_axes} go past the {len(bottom)} axes of the bottom"
            )
        new = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= len(bottom):
                    raise self.fail(f"dim 0 at position {i} copies axis {start + i}, which the bottom {bottom} lacks")
                d = bottom[start + i]
            new.append(d)
        top = [*bottom[:start], *new, *bottom[end:]]
        count = math.prod(bottom)
        if -1 in new:
            known = math.prod([d for d in top if d != -1])
            if known == 0 or count % known:
                # BVLC's reshape_layer.cpp refuses it too (CHECK_EQ(0, count % explicit_count))
                others = "x".join(str(d) for d in top if d != -1)
                raise self.fail(
                    f"cannot infer the -1 in shape {self.dims} for a bottom of shape {bottom}: its count {count} is "
                    f"not divisible by {known}, the product of the other dimensions ({others}); Caffe refuses it too"
                )
            top[top.index(-1)] = count // known
        if math.prod(top) != count:
            raise self.fail(f"reshape {bottom} -> {tuple(top)} changes the count ({count} vs {math.prod(top)})")
        return tuple(top)

    def top_shapes(self) -> list[Shape]:
        return [self._top_shape(self.bottom_shapes[0])]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x.reshape(self._top_shape(tuple(x.shape))),)


@register_layer("Crop")
class Crop(Layer):
    """Crop bottom 0 to bottom 1's shape on every axis from ``axis`` on, at ``offset`` (one value
    for all cropped axes, one per cropped axis, or none = 0). Bottom 1 only gives the shape."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        if len(self.bottom_shapes) != 2:
            raise self.fail(f"needs 2 bottoms (data, reference), got {len(self.bottom_shapes)}")
        p = param.crop_param
        num_axes = len(self.bottom_shapes[0])
        self.start = canonical_axis(self, p.axis, num_axes)
        offsets = list(p.offset)
        cropped = num_axes - self.start
        if len(offsets) > 1 and len(offsets) != cropped:
            raise self.fail(f"{len(offsets)} offsets given; need 1 or one per axis from {self.start} on ({cropped})")
        self.offsets = offsets * cropped if len(offsets) == 1 else offsets or [0] * cropped
        self.top_shapes()

    def _window(self, data: Shape, ref: Shape) -> list[slice]:
        if len(data) != len(ref):
            raise self.fail(f"bottoms must have the same number of axes, got {data} and {ref}")
        window = [slice(None)] * self.start
        for i, offset in enumerate(self.offsets, start=self.start):
            if data[i] - offset < ref[i]:
                raise self.fail(
                    f"invalid crop in axis {i}: offset {offset} + size {ref[i]} exceeds the bottom's {data[i]}"
                )
            window.append(slice(offset, offset + ref[i]))
        return window

    def top_shapes(self) -> list[Shape]:
        data, ref = self.bottom_shapes
        self._window(data, ref)  # validates the offsets
        return [(*data[: self.start], *ref[self.start :])]

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor]:
        return (x[tuple(self._window(tuple(x.shape), tuple(ref.shape)))],)


@register_layer("Tile")
class Tile(Layer):
    """Repeat the whole block from ``axis`` on ``tiles`` times (top dim = tiles * bottom dim)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.tile_param
        self.axis = canonical_axis(self, p.axis, len(self.bottom_shapes[0]))
        self.tiles = int(p.tiles)
        if self.tiles <= 0:
            raise self.fail(f"tiles must be positive, got {self.tiles}")

    def top_shapes(self) -> list[Shape]:
        shape = list(self.bottom_shapes[0])
        shape[self.axis] *= self.tiles
        return [tuple(shape)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        repeats = [1] * x.dim()
        repeats[self.axis] = self.tiles
        return (x.repeat(repeats),)


@register_layer("ArgMax")
class ArgMax(Layer):
    """Indices (and with ``out_max_val`` the values) of the ``top_k`` largest entries, per
    instance (flattened) or along ``axis``. Ties go to the LARGER index: Caffe sorts
    (value, index) pairs in descending order. Indices are float32 like Caffe's blobs."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.argmax_param
        shape = self.bottom_shapes[0]
        self.top_k, self.out_max_val = int(p.top_k), bool(p.out_max_val)
        self.axis = canonical_axis(self, p.axis, len(shape)) if p.HasField("axis") else None
        dim = shape[self.axis] if self.axis is not None else math.prod(shape[1:])
        if not 1 <= self.top_k <= dim:
            raise self.fail(f"top_k must be in [1, {dim}], got {self.top_k}")

    def top_shapes(self) -> list[Shape]:
        shape = self.bottom_shapes[0]
        if self.axis is not None:
            return [tuple(self.top_k if i == self.axis else d for i, d in enumerate(shape))]
        top = [1] * max(len(shape), 3)
        top[0], top[1], top[2] = shape[0], 2 if self.out_max_val else 1, self.top_k
        return [tuple(top)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        x = x.detach().float()
        axis = self.axis if self.axis is not None else 1
        if self.axis is None:
            x = x.reshape(x.shape[0], -1)
        # A stable descending sort of the reversed axis puts equal values in descending index order.
        values, rev = torch.sort(x.flip(axis), dim=axis, descending=True, stable=True)
        values = values.narrow(axis, 0, self.top_k)
        indices = (x.shape[axis] - 1 - rev.narrow(axis, 0, self.top_k)).float()
        if self.axis is not None:
            return (values if self.out_max_val else indices,)
        parts = (indices, values) if self.out_max_val else (indices,)
        top = torch.stack(parts, dim=1)
        return (top.reshape(top.shape[0], *self.top_shapes()[0][1:]),)


@register_layer("Silence")
class Silence(Layer):
    """Consumes its bottoms so they are not net outputs; no tops, zero diffs."""

    def top_shapes(self) -> list[Shape]:
        return []

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ()


@register_layer("BatchReindex")
class BatchReindex(Layer):
    """top[i] = bottom[0][index[i]] for the 1-axis index blob bottom[1]; repeated indices
    accumulate their diffs."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        if len(self.bottom_shapes) != 2 or len(self.bottom_shapes[1]) != 1:
            raise self.fail(f"needs bottoms (data, 1-axis index), got shapes {self.bottom_shapes}")

    def top_shapes(self) -> list[Shape]:
        data, index = self.bottom_shapes
        return [(index[0], *data[1:])]

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor]:
        rows = index.detach().long()
        if not torch.compiler.is_compiling() and bool(((rows < 0) | (rows >= x.shape[0])).any()):
            raise self.fail(f"reindex index out of range [0, {x.shape[0]})")
        return (x.index_select(0, rows),)
