"""The region-pooling layers of the detection forks: Fast/Faster R-CNN's ``ROIPooling`` and
R-FCN's ``PSROIPooling``.

Both take features (N, C, H, W) and ROIs (R, 5) = [batch_index, x1, y1, x2, y2] in image pixels
and give one (C', pooled_h, pooled_w) map per ROI, so R (not N) is the batch of every later
layer. The bin limits follow the forks' float32 arithmetic step by step (C's ``round`` rounds
halves away from zero; torch's rounds them to even, hence :func:`round_away`).

- ``ROIPooling``, read from rbgirshick/caffe-fast-rcnn @0dcd397 (py-faster-rcnn's submodule;
  src/caffe/layers/roi_pooling_layer.cpp and .cu): corners round(x * spatial_scale); ROI size
  max(end - start + 1, 1); bin_size = size / pooled; bin [floor(p * bin_size),
  ceil((p + 1) * bin_size)) shifted by the start and clipped to the map; the bin's max, 0 for an
  empty bin. Backward (the .cu; Backward_cpu is NOT_IMPLEMENTED): the top's gradient goes to the
  bin's argmax, which is what autograd of the gathered maxima gives. Two differences, both on
  degenerate input only: ties between distinct equal values split the gradient where Caffe gives
  it all to the first, and a ROI with end < start pools its 1x1 start pixel but the fork's
  kernel (its ``in_roi`` test) passes it no gradient, while here it gets it.
- ``PSROIPooling``, read from daijifeng001/caffe-rfcn @543f8f6 (psroi_pooling_layer.cu; the
  .cpp is NOT_IMPLEMENTED) and soeaver/py-RFCN-priv @ec89b86 (caffe-priv's
  psroi_pooling_layer.cpp, the same arithmetic on the CPU): start = round(x1) * spatial_scale,
  end = (round(x2) + 1) * spatial_scale, size max(end - start, 0.1), bin size = size /
  group_size, bin [floor(start + p * bin), ceil(start + (p + 1) * bin)) clipped to the map;
  top (r, c, i, j) is the average over its bin of channel (c * group_size + i) * group_size + j,
  0 for an empty bin. Backward (the .cu): each top's gradient / bin area to every pixel of its
  bin, autograd's gradient of the masked sums below. py-RFCN-priv's own GPU kernel is another
  layer under the same name (four bilinear samples per bin, no rounding); its CPU code, used
  here, is R-FCN's.
"""

from __future__ import annotations

import math

import torch

from caffe_compat.net.registry import Layer, Shape, register_layer


def round_away(x: torch.Tensor) -> torch.Tensor:
    """C's ``round``: halves away from zero, exactly (|x| - floor(|x|) is exact in floats)."""
    magnitude = x.abs()
    whole = magnitude.floor()
    return torch.copysign(whole + (magnitude - whole >= 0.5).to(x.dtype), x)


class _RegionPooling(Layer):
    """Shared checks: two bottoms, features (N, C, H, W) and ROIs with 5 values each."""

    own_batch_bottoms = (1,)

    def check_bottoms(self) -> None:
        if len(self.bottom_shapes) != 2:
            raise self.fail(f"takes 2 bottoms (features, rois), got {len(self.bottom_shapes)}")
        features, rois = self.bottom_shapes
        if len(features) != 4:
            raise self.fail(f"features must be (N, C, H, W), got {features}")
        if not rois or math.prod(rois[1:]) != 5:
            raise self.fail(f"rois must be (R, 5) = [batch_index, x1, y1, x2, y2] per ROI, got {rois}")

    def split_rois(self, rois: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch indices as int64, the (R, 4) corners as float32); a batch index out of range
        is an error, as Caffe's CHECKs."""
        rois = rois.reshape(rois.shape[0], 5).float()
        index = rois[:, 0].long()  # C's float -> int conversion truncates
        if index.numel() and (index.min() < 0 or index.max() >= batch):
            raise self.fail(f"a ROI's batch index is outside the {batch} images of the features")
        return index, rois[:, 1:]


@register_layer("ROIPooling")
class ROIPooling(_RegionPooling):
    """Max over each of pooled_h x pooled_w bins of every ROI (Fast R-CNN)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.roi_pooling_param
        self.pooled_h, self.pooled_w = int(p.pooled_h), int(p.pooled_w)
        self.spatial_scale = float(p.spatial_scale)
        if self.pooled_h <= 0 or self.pooled_w <= 0:
            raise self.fail("roi_pooling_param needs pooled_h > 0 and pooled_w > 0")
        self.check_bottoms()

    def top_shapes(self) -> list[Shape]:
        return [(self.bottom_shapes[1][0], self.bottom_shapes[0][1], self.pooled_h, self.pooled_w)]

    def bins(self, corners: torch.Tensor, size: int, pooled: int, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) of each ROI's bins along one axis (axis 0: x, 1: y), int64 (R, pooled)."""
        scale = torch.tensor(self.spatial_scale, dtype=torch.float32, device=corners.device)
        start = round_away(corners[:, axis] * scale).long()
        end = round_away(corners[:, axis + 2] * scale).long()
        extent = torch.clamp(end - start + 1, min=1).float()
        bin_size = extent / float(pooled)  # exact float32 division
        p = torch.arange(pooled, dtype=torch.float32, device=corners.device)
        lo = torch.floor(p * bin_size[:, None]).long() + start[:, None]
        hi = torch.ceil((p + 1) * bin_size[:, None]).long() + start[:, None]
        return lo.clamp(0, size), hi.clamp(0, size)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor]:
        n, c, h, w = features.shape
        index, corners = self.split_rois(rois, n)
        hs, he = self.bins(corners, h, self.pooled_h, 1)
        ws, we = self.bins(corners, w, self.pooled_w, 0)
        return (range_max(features, index, hs, he, ws, we),)


def _level(length: torch.Tensor) -> torch.Tensor:
    """floor(log2(length)) for lengths >= 1, exactly (int64)."""
    level = torch.zeros_like(length)
    while bool((length >> (level + 1) > 0).any()):
        level = level + (length >> (level + 1) > 0).long()
    return level


def range_max(features: torch.Tensor, index: torch.Tensor, hs: torch.Tensor, he: torch.Tensor,
              ws: torch.Tensor, we: torch.Tensor) -> torch.Tensor:
    """The max of ``features[index[r], :, hs:he, ws:we]`` for every ROI r and bin (i, j), 0 where
    the bin is empty: a 2-D sparse table (maxima of 2^a x 2^b windows), four overlapping windows
    per bin. Exact, and the memory is the features times the levels used, not times R."""
    n, c, h, w = features.shape
    r, ph, pw = index.shape[0], hs.shape[1], ws.shape[1]
    if r == 0:
        return features.new_zeros((0, c, ph, pw))
    lh = (he - hs).clamp(min=1)[:, :, None].expand(r, ph, pw)
    lw = (we - ws).clamp(min=1)[:, None, :].expand(r, ph, pw)
    kh, kw = _level(lh), _level(lw)
    levels_h, levels_w = int(kh.max()) + 1, int(kw.max()) + 1
    rows = [features]
    for a in range(1, levels_h):
        step = 1 << (a - 1)
        prev = rows[-1]
        rows.append(torch.cat([torch.maximum(prev[:, :, :-step], prev[:, :, step:]), prev[:, :, h - step:]], 2))
    tables = []
    for row in rows:
        level = [row]
        for b in range(1, levels_w):
            step = 1 << (b - 1)
            prev = level[-1]
            level.append(torch.cat([torch.maximum(prev[..., :-step], prev[..., step:]), prev[..., w - step:]], 3))
        tables.append(torch.stack(level, 1))
    # (N, Kh, Kw, C, H, W) -> rows of C values, one per (image, level, y, x)
    table = torch.stack(tables, 1).permute(0, 1, 2, 4, 5, 3).reshape(-1, c)
    base = (index[:, None, None] * levels_h + kh) * levels_w + kw
    y0, x0 = hs.clamp(max=h - 1)[:, :, None], ws.clamp(max=w - 1)[:, None, :]
    y1 = (he[:, :, None] - (1 << kh)).clamp(0, h - 1)
    x1 = (we[:, None, :] - (1 << kw)).clamp(0, w - 1)
    corners = [table[(base * h + y) * w + x] for y in (y0, y1) for x in (x0, x1)]
    out = torch.maximum(torch.maximum(corners[0], corners[1]), torch.maximum(corners[2], corners[3]))
    empty = ((he <= hs)[:, :, None] | (we <= ws)[:, None, :])[..., None]
    return torch.where(empty, out.new_zeros(()), out).permute(0, 3, 1, 2)


@register_layer("PSROIPooling")
class PSROIPooling(_RegionPooling):
    """Average over each of group_size x group_size bins, bin (i, j) read from its own channel
    group (R-FCN's position-sensitive score maps)."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.psroi_pooling_param
        for name in ("spatial_scale", "output_dim", "group_size"):
            if not p.HasField(name):
                raise self.fail(f"psroi_pooling_param needs {name}")
        self.spatial_scale = float(p.spatial_scale)
        self.output_dim, self.group_size = int(p.output_dim), int(p.group_size)
        if self.output_dim <= 0 or self.group_size <= 0:
            raise self.fail("psroi_pooling_param needs output_dim > 0 and group_size > 0")
        self.check_bottoms()
        channels = self.bottom_shapes[0][1]
        if channels != self.output_dim * self.group_size ** 2:
            raise self.fail(f"features have {channels} channels; output_dim {self.output_dim} x group_size "
                            f"{self.group_size}^2 = {self.output_dim * self.group_size ** 2}")

    def top_shapes(self) -> list[Shape]:
        return [(self.bottom_shapes[1][0], self.output_dim, self.group_size, self.group_size)]

    def bins(self, corners: torch.Tensor, size: int, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) of each ROI's bins along one axis, int64 (R, group_size)."""
        scale = torch.tensor(self.spatial_scale, dtype=torch.float32, device=corners.device)
        start = round_away(corners[:, axis]) * scale
        end = (round_away(corners[:, axis + 2]) + 1) * scale
        extent = torch.clamp(end - start, min=0.1)  # float32(0.1), as max<float>(x, 0.1)
        bin_size = extent / float(self.group_size)
        p = torch.arange(self.group_size, dtype=torch.float32, device=corners.device)
        lo = torch.floor(p * bin_size[:, None] + start[:, None]).long()
        hi = torch.ceil((p + 1) * bin_size[:, None] + start[:, None]).long()
        return lo.clamp(0, size), hi.clamp(0, size)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor]:
        n, _, h, w = features.shape
        g = self.group_size
        index, corners = self.split_rois(rois, n)
        hs, he = self.bins(corners, h, 1)
        ws, we = self.bins(corners, w, 0)
        mask_h = bin_masks(hs, he, h, features.dtype)  # (R, g, H)
        mask_w = bin_masks(ws, we, w, features.dtype)  # (R, g, W)
        grouped = features.reshape(n, self.output_dim, g, g, h, w)
        if n == 1:
            along_w = torch.einsum("cijhw,rjw->rcijh", grouped[0], mask_w)
        else:
            along_w = torch.einsum("ncijhw,rjw->nrcijh", grouped, mask_w)
            along_w = along_w[index, torch.arange(index.shape[0])]
        sums = torch.einsum("rcijh,rih->rcij", along_w, mask_h)
        area = ((he - hs)[:, :, None] * (we - ws)[:, None, :]).to(features.dtype)  # (R, g, g)
        out = sums / area.clamp(min=1)[:, None]
        return (torch.where(area[:, None] > 0, out, out.new_zeros(())),)


def bin_masks(start: torch.Tensor, end: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """1 where start <= pixel < end: (R, bins, size)."""
    pixel = torch.arange(size, device=start.device)
    return ((pixel >= start[..., None]) & (pixel < end[..., None])).to(dtype)
