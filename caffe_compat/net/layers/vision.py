"""Caffe's spatial layers: Convolution, Deconvolution (N-D) and Pooling (2-D, Caffe's sizes)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffe_compat.net.fillers import filled
from caffe_compat.net.layers.shape_ops import canonical_axis
from caffe_compat.net.registry import TRAIN, Layer, Shape, register_layer
from caffe_compat.proto import caffe_pb2

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _per_axis(layer: Layer, p, field: str, num_spatial: int, default: int | None) -> list[int]:
    """One ConvolutionParameter size per spatial axis, Caffe's way: ``<field>_h``/``<field>_w``
    (2-D only), else the repeated field given once (all axes) or once per axis, else
    ``default`` (``kernel`` has none). Dilation has no _h/_w form."""
    repeated_name = "kernel_size" if field == "kernel" else field
    repeated = list(getattr(p, repeated_name))
    if field != "dilation" and (p.HasField(f"{field}_h") or p.HasField(f"{field}_w")):
        if num_spatial != 2:
            raise layer.fail(f"{field}_h/{field}_w can only be used for 2-D convolution")
        if repeated:
            raise layer.fail(f"give either {repeated_name} or {field}_h/{field}_w, not both")
        if field == "kernel" and not (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise layer.fail("for non-square filters both kernel_h and kernel_w are required")
        return [int(getattr(p, f"{field}_h")), int(getattr(p, f"{field}_w"))]
    if not repeated:
        if default is None:
            raise layer.fail("kernel_size (or kernel_h and kernel_w) is required")
        return [default] * num_spatial
    if len(repeated) not in (1, num_spatial):
        raise layer.fail(
            f"{repeated_name} must be given once or once per spatial axis ({num_spatial}), "
            f"got {len(repeated)}"
        )
    return [int(v) for v in repeated] * (num_spatial if len(repeated) == 1 else 1)


class _ConvolutionBase(Layer):
    """Shared set-up of Convolution and Deconvolution (Caffe's BaseConvolutionLayer)."""

    transposed = False

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.convolution_param
        shape = self.bottom_shapes[0]
        self.channel_axis = canonical_axis(self, p.axis, len(shape))
        self.num_spatial = len(shape) - self.channel_axis - 1
        if self.num_spatial not in _CONV:
            raise self.fail(f"supports 1 to 3 spatial axes, got bottom shape {shape}")
        self.kernel = _per_axis(self, p, "kernel", self.num_spatial, None)
        self.stride = _per_axis(self, p, "stride", self.num_spatial, 1)
        self.pad = _per_axis(self, p, "pad", self.num_spatial, 0)
        self.dilation = _per_axis(self, p, "dilation", self.num_spatial, 1)
        if min(self.kernel) <= 0 or min(self.stride) <= 0 or min(self.dilation) <= 0:
            raise self.fail(
                f"kernel {self.kernel}, stride {self.stride} and dilation {self.dilation} must be > 0"
            )
        self.channels = shape[self.channel_axis]
        self.num_output = int(p.num_output)
        self.group = int(p.group)
        if self.num_output <= 0:
            raise self.fail("convolution_param.num_output must be > 0")
        if self.group <= 0 or self.channels % self.group or self.num_output % self.group:
            raise self.fail(
                f"group {self.group} must divide the input channels ({self.channels}) and "
                f"num_output ({self.num_output})"
            )
        if self.transposed:
            weight = (self.channels, self.num_output // self.group, *self.kernel)
        else:
            weight = (self.num_output, self.channels // self.group, *self.kernel)
        self.blobs.append(filled(weight, p.weight_filler, self.name))
        self.bias_term = p.bias_term
        if self.bias_term:
            self.blobs.append(filled((self.num_output,), p.bias_filler, self.name))
        self.top_shapes()  # reject impossible geometry now, not at the first forward

    def _spatial_out(self, size: int, i: int) -> int:
        raise NotImplementedError

    def top_shapes(self) -> list[Shape]:
        shape = self.bottom_shapes[0]
        spatial = shape[self.channel_axis + 1 :]
        out = tuple(self._spatial_out(size, i) for i, size in enumerate(spatial))
        if min(out, default=1) <= 0:
            raise self.fail(
                f"output size {out} for input {spatial} with kernel {self.kernel}, "
                f"pad {self.pad}, stride {self.stride}, dilation {self.dilation}"
            )
        return [shape[: self.channel_axis] + (self.num_output,) + out]

    def _extent(self, i: int) -> int:
        return self.dilation[i] * (self.kernel[i] - 1) + 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        lead = x.shape[: self.channel_axis]
        if self.channel_axis != 1:
            x = x.reshape(-1, *x.shape[self.channel_axis :])
        bias = self.blobs[1] if self.bias_term else None
        y = self._convolve(x, self.blobs[0], bias)
        if self.channel_axis != 1:
            y = y.reshape(*lead, *y.shape[1:])
        return (y,)


@register_layer("Convolution")
class Convolution(_ConvolutionBase):
    """Grouped, dilated, strided N-D convolution; out = (in + 2p - extent) // stride + 1."""

    def _spatial_out(self, size: int, i: int) -> int:
        return (size + 2 * self.pad[i] - self._extent(i)) // self.stride[i] + 1

    def _convolve(self, x, weight, bias):
        return _CONV[self.num_spatial](
            x, weight, bias, self.stride, self.pad, self.dilation, self.group
        )


@register_layer("Deconvolution")
class Deconvolution(_ConvolutionBase):
    """The transpose of Convolution; weight (C_in, num_output/group, k...);
    out = stride * (in - 1) + extent - 2p."""

    transposed = True

    def _spatial_out(self, size: int, i: int) -> int:
        return self.stride[i] * (size - 1) + self._extent(i) - 2 * self.pad[i]

    def _convolve(self, x, weight, bias):
        return _DECONV[self.num_spatial](
            x, weight, bias, self.stride, self.pad, 0, self.group, self.dilation
        )


def _pool_out(size: int, kernel: int, pad: int, stride: int, ceil: bool) -> int:
    span = (size + 2 * pad - kernel) / stride
    return (math.ceil(span) if ceil else math.floor(span)) + 1


def _torch_pool_out(size: int, kernel: int, pad: int, stride: int, ceil: bool) -> int:
    """Output size PyTorch's pooling kernels produce (they always apply the start-inside rule)."""
    out = _pool_out(size, kernel, pad, stride, ceil)
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register_layer("Pooling")
class Pooling(Layer):
    """MAX / AVE / STOCHASTIC pooling with Caffe's geometry.

    Output size: ceil (default ``round_mode``; the forks' ``ceil_mode``) or floor of (in + 2p - k) / s, plus 1; with any
    padding, a last window starting at or past in + p is dropped. AVE divides by the window
    clipped to [-p, in + p) (padding counts, the overhang past it does not). MAX may have a
    second top: the argmax as h * W + w in the unpadded plane (float, like Caffe).
    """

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.pooling_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.fail(f"needs a 4-axis (num, channels, height, width) bottom, got {shape}")
        self.method = p.pool
        self.global_pooling = p.global_pooling
        if self.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.fail("with global_pooling: true the kernel size cannot be specified")
            self.kernel = None
        elif p.HasField("kernel_size") == (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise self.fail("give kernel_size, or both kernel_h and kernel_w")
        else:
            size = p.kernel_size
            self.kernel = (size, size) if p.HasField("kernel_size") else (p.kernel_h, p.kernel_w)
        self.pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else (p.pad,) * 2
        self.stride = (
            (p.stride_h, p.stride_w) if p.HasField("stride_h") or p.HasField("stride_w")
            else (p.stride,) * 2
        )
        if min(self.stride) <= 0:
            raise self.fail(f"stride {self.stride} must be > 0")
        if self.global_pooling and (any(self.pad) or self.stride != (1, 1)):
            raise self.fail("with global_pooling: true only pad 0 and stride 1 are allowed")
        kernel = self._kernel(shape[2], shape[3])
        if min(kernel) <= 0:
            raise self.fail("filter dimensions cannot be zero")
        if any(pad >= k for pad, k in zip(self.pad, kernel)):
            raise self.fail(f"pad {self.pad} must be smaller than the kernel {kernel}")
        if any(self.pad) and self.method == caffe_pb2.PoolingParameter.STOCHASTIC:
            raise self.fail("padding is implemented only for AVE and MAX pooling")
        if p.HasField("ceil_mode") and p.HasField("round_mode"):
            raise self.fail("give round_mode (BVLC) or ceil_mode (OpenCV and other forks), not both")
        # OpenCV's and the forks' `ceil_mode: false` is BVLC's `round_mode: FLOOR`.
        self.ceil = p.ceil_mode if p.HasField("ceil_mode") else p.round_mode == caffe_pb2.PoolingParameter.CEIL
        self.with_mask = len(param.top) > 1
        if self.with_mask and self.method != caffe_pb2.PoolingParameter.MAX:
            raise self.fail("only MAX pooling has a second (mask) top")
        self.top_shapes()

    def _kernel(self, height: int, width: int) -> tuple[int, int]:
        return (height, width) if self.kernel is None else self.kernel

    def _out_size(self, height: int, width: int) -> tuple[int, int]:
        kernel = self._kernel(height, width)
        out = [
            _pool_out(size, k, p, s, self.ceil)
            for size, k, p, s in zip((height, width), kernel, self.pad, self.stride)
        ]
        if any(self.pad):
            for i, size in enumerate((height, width)):
                if (out[i] - 1) * self.stride[i] >= size + self.pad[i]:
                    out[i] -= 1
        return out[0], out[1]

    def top_shapes(self) -> list[Shape]:
        n, c, h, w = self.bottom_shapes[0]
        oh, ow = self._out_size(h, w)
        if oh <= 0 or ow <= 0:
            raise self.fail(
                f"output size {(oh, ow)} for input {(h, w)} with kernel {self._kernel(h, w)}, "
                f"pad {self.pad}, stride {self.stride}"
            )
        return [(n, c, oh, ow)] * (2 if self.with_mask else 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, w = x.shape[-2], x.shape[-1]
        kernel = self._kernel(h, w)
        out = self._out_size(h, w)
        torch_out = tuple(
            _torch_pool_out(size, k, p, s, self.ceil)
            for size, k, p, s in zip((h, w), kernel, self.pad, self.stride)
        )
        native = torch_out == out and all(2 * p <= k for p, k in zip(self.pad, kernel))
        if self.method == caffe_pb2.PoolingParameter.AVE:
            return (self._average(x, kernel, out, native),)
        if self.method == caffe_pb2.PoolingParameter.STOCHASTIC:
            return (self._stochastic(x, kernel, out),)
        return self._max(x, kernel, out, native)

    def _padding(self, size: tuple[int, int], kernel, out) -> list[int]:
        """F.pad amounts (w_left, w_right, h_top, h_bottom) covering every window."""
        amounts = []
        for i in (1, 0):
            tail = (out[i] - 1) * self.stride[i] + kernel[i] - size[i] - self.pad[i]
            amounts += [self.pad[i], max(0, tail)]
        return amounts

    def _average(self, x, kernel, out, native: bool) -> torch.Tensor:
        if native:
            return F.avg_pool2d(x, kernel, self.stride, self.pad, self.ceil, count_include_pad=True)
        size = (x.shape[-2], x.shape[-1])
        padded = F.pad(x, self._padding(size, kernel, out))
        sums = F.avg_pool2d(padded, kernel, self.stride, divisor_override=1)
        sums = sums[..., : out[0], : out[1]]
        spans = []
        for i in range(2):
            start = torch.arange(out[i], device=x.device) * self.stride[i] - self.pad[i]
            end = torch.clamp(start + kernel[i], max=size[i] + self.pad[i])
            spans.append((end - start).to(sums.dtype))
        return sums / (spans[0][:, None] * spans[1][None, :])

    def _max(self, x, kernel, out, native: bool) -> tuple[torch.Tensor, ...]:
        if native:
            if not self.with_mask:
                return (F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=self.ceil),)
            y, index = F.max_pool2d(
                x, kernel, self.stride, self.pad, ceil_mode=self.ceil, return_indices=True
            )
        else:
            size = (x.shape[-2], x.shape[-1])
            amounts = self._padding(size, kernel, out)
            padded = F.pad(x, amounts, value=float("-inf"))
            y, index = F.max_pool2d(padded, kernel, self.stride, return_indices=True)
            y, index = y[..., : out[0], : out[1]], index[..., : out[0], : out[1]]
            row = index // padded.shape[-1] - amounts[2]
            index = row * size[1] + index % padded.shape[-1] - amounts[0]
            if not self.with_mask:
                return (y,)
        return (y, index.to(torch.float32))

    def _stochastic(self, x, kernel, out) -> torch.Tensor:
        """Caffe's (GPU-only) STOCHASTIC pooling. TRAIN: one value per window, drawn with
        probability proportional to it (the first whose running sum reaches u * window sum);
        TEST: the probability-weighted mean sum(x^2) / sum(x), 0 where sum(x) <= 0."""
        padded = F.pad(x, self._padding((x.shape[-2], x.shape[-1]), kernel, out))
        if self.phase != TRAIN:
            total = F.avg_pool2d(padded, kernel, self.stride, divisor_override=1)
            squares = F.avg_pool2d(padded * padded, kernel, self.stride, divisor_override=1)
            total, squares = total[..., : out[0], : out[1]], squares[..., : out[0], : out[1]]
            return torch.where(total > 0, squares / total.clamp_min(torch.finfo(total.dtype).tiny),
                               torch.zeros_like(total))
        n, c = x.shape[0], x.shape[1]
        full = [(padded.shape[2 + i] - kernel[i]) // self.stride[i] + 1 for i in range(2)]
        windows = F.unfold(padded, kernel, stride=self.stride)
        windows = windows.view(n, c, kernel[0] * kernel[1], *full)[..., : out[0], : out[1]]
        running = windows.cumsum(2)
        threshold = torch.rand_like(running[:, :, :1]) * running[:, :, -1:]
        pick = (running >= threshold).to(torch.uint8).argmax(2, keepdim=True)
        return windows.gather(2, pick).squeeze(2)
