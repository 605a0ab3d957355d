"""PSPNet's and DeepLab v2's ``Interp``: bilinear resize with corners aligned.

Read from hszhao/PSPNet @798bdc9 (src/caffe/layers/interp_layer.cpp, src/caffe/util/interp.cpp),
the layer of DeepLab v2's caffe: the bottom is cropped by -pad_beg / -pad_end (non-positive
pads only), then resized so the corner pixels map to corner pixels
(source = out_index * (in - 1) / (out - 1)). The output size is ``height`` x ``width``, or from
``zoom_factor`` (in + (in - 1) * (zoom - 1)) and/or ``shrink_factor`` ((in - 1) / shrink + 1).

soeaver's caffe-priv (soeaver/py-RFCN-priv @ec89b86, caffe-priv/src/caffe/layers/interp_layer.cpp)
adds ``use_blob_size``: the output takes the height and width of a second bottom (its FPN nets
resize a coarse level to the next finer one); it is checked first, before the factors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caffe_compat.net.registry import Layer, Shape, register_layer


@register_layer("Interp")
class Interp(Layer):
    """Bilinear (align_corners) resize of the (cropped) bottom; backward is its transpose."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.interp_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.fail(f"needs a 4-axis (num, channels, height, width) bottom, got {shape}")
        self.pad_beg, self.pad_end = int(p.pad_beg), int(p.pad_end)
        if self.pad_beg > 0 or self.pad_end > 0:
            raise self.fail("only non-positive pad_beg / pad_end (cropping) are supported, as in PSPNet")
        self.shrink = int(p.shrink_factor) if p.HasField("shrink_factor") else None
        self.zoom = int(p.zoom_factor) if p.HasField("zoom_factor") else None
        self.fixed = (int(p.height), int(p.width)) if p.HasField("height") and p.HasField("width") else None
        self.use_blob_size = bool(p.use_blob_size)
        if self.use_blob_size and len(self.bottom_shapes) < 2:
            raise self.fail("use_blob_size takes the output size from a second bottom, but the layer has one")
        if self.use_blob_size and len(self.bottom_shapes[1]) != 4:
            raise self.fail(f"use_blob_size needs a 4-axis second bottom, got {self.bottom_shapes[1]}")
        if self.shrink is None and self.zoom is None and self.fixed is None and not self.use_blob_size:
            raise self.fail("give zoom_factor, shrink_factor, both height and width, or use_blob_size")
        if (self.shrink is not None and self.shrink < 1) or (self.zoom is not None and self.zoom < 1):
            raise self.fail("zoom_factor and shrink_factor must be >= 1")
        self.top_shapes()

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        sizes = [height + self.pad_beg + self.pad_end, width + self.pad_beg + self.pad_end]
        if self.shrink is None and self.zoom is None:
            return self.fixed  # type: ignore[return-value]
        if self.shrink is not None:
            sizes = [(s - 1) // self.shrink + 1 for s in sizes]
        if self.zoom is not None:
            sizes = [s + (s - 1) * (self.zoom - 1) for s in sizes]
        return sizes[0], sizes[1]

    def top_shapes(self) -> list[Shape]:
        n, c, h, w = self.bottom_shapes[0]
        if min(h + self.pad_beg + self.pad_end, w + self.pad_beg + self.pad_end) <= 0:
            raise self.fail(f"the crop pad_beg {self.pad_beg}, pad_end {self.pad_end} leaves nothing of {h}x{w}")
        out = tuple(self.bottom_shapes[1][2:]) if self.use_blob_size else self.out_size(h, w)
        if min(out) <= 0:
            raise self.fail(f"output size {out} must be positive")
        return [(n, c, *out)]

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor]:
        h, w = x.shape[-2], x.shape[-1]
        out = (rest[0].shape[-2], rest[0].shape[-1]) if self.use_blob_size else self.out_size(h, w)
        if self.pad_beg or self.pad_end:
            x = x[..., -self.pad_beg : h + self.pad_end, -self.pad_beg : w + self.pad_end]
        if tuple(x.shape[-2:]) == out:
            return (x,)
        return (F.interpolate(x, size=out, mode="bilinear", align_corners=True),)
