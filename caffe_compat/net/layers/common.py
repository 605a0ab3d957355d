"""Caffe's structural layers: Input, InnerProduct, Eltwise, Softmax, Split, Concat, Flatten."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffe_compat.net.fillers import filled
from caffe_compat.net.layers.shape_ops import canonical_axis
from caffe_compat.net.registry import Layer, Shape, register_layer
from caffe_compat.proto import caffe_pb2


@register_layer("Input")
class Input(Layer):
    """The net's fed blobs; ``input_param.shape`` is given once for all tops or once per top."""

    is_source = True

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        shapes = [tuple(int(d) for d in s.dim) for s in param.input_param.shape]
        tops = len(param.top)
        if len(shapes) not in (1, tops):
            raise self.fail(
                f"input_param needs one shape for all tops or one per top "
                f"({tops} tops, {len(shapes)} shapes)"
            )
        self.shapes = shapes * tops if len(shapes) == 1 else shapes

    def top_shapes(self) -> list[Shape]:
        return list(self.shapes)

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        raise self.fail(f"no value given for its top(s) {list(self.param.top)}; pass them as inputs")


@register_layer("InnerProduct")
class InnerProduct(Layer):
    """y = x W^T + b over the axes from ``axis`` on; W is (N, K), or (K, N) with ``transpose``."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.inner_product_param
        shape = self.bottom_shapes[0]
        if p.num_output <= 0:
            raise self.fail("inner_product_param.num_output must be > 0")
        self.axis = canonical_axis(self, p.axis, len(shape))
        self.num_output = int(p.num_output)
        self.k = math.prod(shape[self.axis:])
        self.transpose = p.transpose
        weight = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        self.blobs.append(filled(weight, p.weight_filler, self.name))
        self.bias_term = p.bias_term
        if self.bias_term:
            self.blobs.append(filled((self.num_output,), p.bias_filler, self.name))

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0][: self.axis] + (self.num_output,)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        lead = x.shape[: self.axis]
        rows = x.reshape(-1, self.k)
        weight = self.blobs[0]
        bias = self.blobs[1] if self.bias_term else None
        if self.transpose:
            y = rows @ weight
            if bias is not None:
                y = y + bias
        else:
            y = F.linear(rows, weight, bias)
        return (y.reshape(*lead, self.num_output),)


@register_layer("Eltwise")
class Eltwise(Layer):
    """Element-wise SUM (with per-bottom ``coeff``), PROD or MAX of same-shape bottoms.

    MAX keeps Caffe's tie rule (bottom 1 wins a tie with bottom 0, later bottoms must be
    strictly greater), so the gradient goes to the same bottom as in Caffe.
    """

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.eltwise_param
        self.op = p.operation
        if len(self.bottom_shapes) < 2:
            raise self.fail(f"needs at least 2 bottoms, got {len(self.bottom_shapes)}")
        if p.coeff and self.op != caffe_pb2.EltwiseParameter.SUM:
            raise self.fail("coeff is only allowed with operation SUM")
        if p.coeff and len(p.coeff) != len(self.bottom_shapes):
            raise self.fail(f"needs one coeff per bottom ({len(self.bottom_shapes)}), got {len(p.coeff)}")
        self.coeff = [float(c) for c in p.coeff] or [1.0] * len(self.bottom_shapes)
        first = self.bottom_shapes[0]
        for blob, shape in zip(param.bottom[1:], self.bottom_shapes[1:]):
            if shape != first:
                raise self.fail(
                    f"bottom '{blob}' has shape {shape} but bottom '{param.bottom[0]}' has {first}"
                )

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor]:
        if self.op == caffe_pb2.EltwiseParameter.PROD:
            y = xs[0]
            for x in xs[1:]:
                y = y * x
        elif self.op == caffe_pb2.EltwiseParameter.MAX:
            y = torch.where(xs[0] > xs[1], xs[0], xs[1])
            for x in xs[2:]:
                y = torch.where(x > y, x, y)
        else:
            terms = [x if c == 1.0 else c * x for c, x in zip(self.coeff, xs)]
            y = terms[0]
            for term in terms[1:]:
                y = y + term
        return (y,)


@register_layer("Softmax")
class Softmax(Layer):
    """Softmax along ``axis`` (default 1, the channels)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.axis = canonical_axis(self, param.softmax_param.axis, len(self.bottom_shapes[0]))

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.softmax(x, dim=self.axis),)


@register_layer("Split")
class Split(Layer):
    """Copies of one blob; each copy is its own autograd node so its diff can be read alone."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.copies = len(param.top)

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]] * self.copies

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(x.view_as(x) for _ in range(self.copies))


@register_layer("Concat")
class Concat(Layer):
    """Join bottoms along ``axis`` (or the legacy ``concat_dim``); other axes must agree."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.concat_param
        first = self.bottom_shapes[0]
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = canonical_axis(self, axis, len(first))
        for blob, shape in zip(param.bottom[1:], self.bottom_shapes[1:]):
            if len(shape) != len(first) or any(
                a != b for i, (a, b) in enumerate(zip(shape, first)) if i != self.axis
            ):
                raise self.fail(
                    f"bottom '{blob}' has shape {shape}, incompatible with bottom "
                    f"'{param.bottom[0]}' {first} outside axis {self.axis}"
                )

    def top_shapes(self) -> list[Shape]:
        shape = list(self.bottom_shapes[0])
        shape[self.axis] = sum(s[self.axis] for s in self.bottom_shapes)
        return [tuple(shape)]

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor]:
        if len(xs) == 1:
            return (xs[0].view_as(xs[0]),)
        return (torch.cat(xs, dim=self.axis),)


@register_layer("Flatten")
class Flatten(Layer):
    """Merge axes ``axis`` .. ``end_axis`` (inclusive) into one."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.flatten_param
        ndim = len(self.bottom_shapes[0])
        self.start = canonical_axis(self, p.axis, ndim)
        self.end = canonical_axis(self, p.end_axis, ndim)

    def top_shapes(self) -> list[Shape]:
        shape = self.bottom_shapes[0]
        merged = math.prod(shape[self.start : self.end + 1])
        return [shape[: self.start] + (merged,) + shape[self.end + 1 :]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.flatten(x, self.start, self.end),)
