"""SegNet's and ENet's layers: ``BN`` (with ``bn_param``) and ``Upsample`` (pooling-mask unpooling).

Read from alexgkendall/caffe-segnet @344c113 (src/caffe/layers/bn_layer.cpp, upsample_layer.cpp)
and TimoSaemann/caffe-enet @22d356c (the same layers, ENet numbers ``upsample_param`` 147).
The same ``BN`` entry computes hszhao/PSPNet @798bdc9's own BN (src/caffe/layers/bn_layer.cpp)
when its ``bn_param`` holds PSPNet's fields.
"""

from __future__ import annotations

import torch

from caffe_compat.net.fillers import constant_filler, filled
from caffe_compat.net.registry import TEST, Layer, RunningUpdate, Shape, apply_running_updates, register_layer
from caffe_compat.proto import caffe_pb2, dialects

#: caffe-segnet's BNLayer adds this to the batch variance (it is not a parameter there).
BN_VARIANCE_EPS = 1e-9


@register_layer("BN")
class BN(Layer):
    """SegNet/ENet batch normalisation; blobs scale and shift, each (1, C, 1, 1). A ``bn_param``
    with PSPNet's fields (``slope_filler``, ``bias_filler``, ``momentum``, ``eps``, ``frozen``)
    is PSPNet's own BN instead (:meth:`_init_pspnet`: 4 blobs, moving statistics).

    ``bn_mode: LEARN`` (the default) normalises by the statistics of the batch at hand, in TRAIN
    and TEST alike: mean and the biased variance E(x^2) - E(x)^2 over (N, H, W), plus 1e-9, then
    scale * x_norm + shift; optional tops 1 and 2 are that mean and variance (1, C, 1, 1).
    ``bn_mode: INFERENCE`` is scale * x + shift (the nets SegNet's compute_bn_statistics.py
    and ENet's BN-absorbing script write, statistics folded into scale and shift).
    """

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.fail(f"needs a 4-axis (num, channels, height, width) bottom, got {shape}")
        p = param.bn_param
        self.pspnet = dialects.is_pspnet_bn(p)
        if self.pspnet:
            self._init_pspnet(p, phase)
            return
        self.inference = p.bn_mode == caffe_pb2.BNParameter.INFERENCE
        if self.inference and len(param.top) > 1:
            raise self.fail("bn_mode: INFERENCE has no batch mean and variance tops")
        if len(param.top) > 3:
            raise self.fail(f"has at most 3 tops (normalised, batch mean, batch variance), got {len(param.top)}")
        channels = shape[1]
        # Caffe's GetFiller on an unset FillerParameter is the constant 0.
        scale = p.scale_filler if p.HasField("scale_filler") else constant_filler(0.0)
        shift = p.shift_filler if p.HasField("shift_filler") else constant_filler(0.0)
        self.blobs.append(filled((1, channels, 1, 1), scale, self.name))
        self.blobs.append(filled((1, channels, 1, 1), shift, self.name))
        self.num_tops = max(1, len(param.top))

    def _init_pspnet(self, p, phase) -> None:
        """PSPNet's BN (hszhao/PSPNet @798bdc9 src/caffe/layers/bn_layer.cpp): blobs slope, bias,
        moving mean, moving variance, each (1, C, 1, 1); one top. In TEST or ``frozen``:
        y = slope * (x - mean) * (var + eps)^-1/2 + bias with the stored mean and variance (the
        variance itself is stored, eps added at use). In TRAIN, not frozen: the batch's mean and
        biased variance mean((x - mean)^2) over (N, H, W), and the moving blobs become
        momentum * blob + (1 - momentum) * batch statistic."""
        if p.HasField("bn_mode") or p.HasField("scale_filler") or p.HasField("shift_filler"):
            raise self.fail("bn_param mixes SegNet's fields (bn_mode, scale_filler, shift_filler) with "
                            "PSPNet's (slope_filler, bias_filler, momentum, eps, frozen)")
        if len(self.param.top) > 1:
            raise self.fail(f"PSPNet's BN has exactly 1 top, got {len(self.param.top)}")
        self.frozen = bool(p.frozen)
        self.momentum = float(p.momentum)
        self.eps = float(p.eps)
        self.global_stats = self.frozen or phase == TEST
        self.num_tops = 1
        self.inference = False
        channels = self.bottom_shapes[0][1]
        shape = (1, channels, 1, 1)
        # Caffe's GetFiller on an unset FillerParameter is the constant 0.
        slope = p.slope_filler if p.HasField("slope_filler") else constant_filler(0.0)
        bias = p.bias_filler if p.HasField("bias_filler") else constant_filler(0.0)
        self.blobs.append(filled(shape, slope, self.name))
        self.blobs.append(filled(shape, bias, self.name))
        self.blobs.append(torch.nn.Parameter(torch.zeros(shape), requires_grad=False))
        self.blobs.append(torch.nn.Parameter(torch.full(shape, 1.0 if self.frozen else 0.0), requires_grad=False))
        if self.frozen:  # bn_layer.cpp sets lr_mult 0 for slope and bias too
            self.blobs[0].requires_grad_(False)
            self.blobs[1].requires_grad_(False)
        self.register_buffer("batch_mean", torch.zeros(shape), persistent=False)
        self.register_buffer("batch_var", torch.zeros(shape), persistent=False)

    def top_shapes(self) -> list[Shape]:
        c = self.bottom_shapes[0][1]
        return [self.bottom_shapes[0]] + [(1, c, 1, 1)] * (self.num_tops - 1)

    def running_updates(self) -> list[RunningUpdate]:
        if not self.pspnet or self.global_stats:
            return []
        return [(self.blobs[2], self.momentum, self.batch_mean), (self.blobs[3], self.momentum, self.batch_var)]

    def _forward_pspnet(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        slope, bias = self.blobs[0], self.blobs[1]
        if self.global_stats:
            mean, var = self.blobs[2], self.blobs[3]
        else:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
            with torch.no_grad():
                self.batch_mean.copy_(mean.detach() * (1 - self.momentum))
                self.batch_var.copy_(var.detach() * (1 - self.momentum))
            if not self.defer_running_updates:
                apply_running_updates(self.running_updates())
        return ((x - mean) * torch.rsqrt(var + self.eps) * slope + bias,)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.pspnet:
            return self._forward_pspnet(x)
        scale, shift = self.blobs[0], self.blobs[1]
        if self.inference:
            return (x * scale + shift,)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        variance = (x * x).mean(dim=(0, 2, 3), keepdim=True) - mean * mean
        y = (x - mean) / torch.sqrt(variance + BN_VARIANCE_EPS) * scale + shift
        return (y, mean, variance)[: self.num_tops]


@register_layer("Upsample")
class Upsample(Layer):
    """Unpooling: with 2 bottoms (values, a MAX Pooling's mask top) each value goes to the
    position its mask names (h * W + w in the top's plane), zeros elsewhere; later positions win
    when two name the same place, as in Caffe's loop. The top is ``upsample_h`` x ``upsample_w``,
    else bottom * scale (``scale``, or ``scale_h``/``scale_w``) less one where ``pad_out_h``/``_w``.

    With one bottom (the YOLOv3 Caffe forks' Upsample) it repeats each value scale x scale
    times (nearest neighbour).
    """

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.upsample_param
        if len(self.bottom_shapes) not in (1, 2):
            raise self.fail(f"takes 1 bottom (scale) or 2 (values, pooling mask), got {len(self.bottom_shapes)}")
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.fail(f"needs a 4-axis (num, channels, height, width) bottom, got {shape}")
        if len(self.bottom_shapes) == 2 and self.bottom_shapes[1] != shape:
            raise self.fail(f"the mask's shape {self.bottom_shapes[1]} must equal the values' {shape}")
        self.with_mask = len(self.bottom_shapes) == 2
        if p.HasField("upsample_h") and p.HasField("upsample_w"):
            if not self.with_mask:
                raise self.fail("upsample_h/upsample_w need the pooling mask bottom")
            self.size: tuple[int, int] | None = (int(p.upsample_h), int(p.upsample_w))
            self.scale = (0, 0)
            self.pad_out = (False, False)
            if min(self.size) <= 1:
                raise self.fail(f"upsample_h and upsample_w must be > 1, got {self.size}")
        else:
            if p.HasField("scale_h") != p.HasField("scale_w") or (p.HasField("scale_h") and p.HasField("scale")):
                raise self.fail("give upsample_h and upsample_w, or scale, or both scale_h and scale_w")
            self.scale = (int(p.scale_h), int(p.scale_w)) if p.HasField("scale_h") else (int(p.scale),) * 2
            self.pad_out = (bool(p.pad_out_h), bool(p.pad_out_w))
            self.size = None
            if min(self.scale) <= 1:
                raise self.fail(f"the scale must be > 1, got {self.scale}")
            if any(pad and s != 2 for pad, s in zip(self.pad_out, self.scale)):
                raise self.fail("pad_out_h / pad_out_w need a scale of 2")
            if not self.with_mask and any(self.pad_out):
                raise self.fail("pad_out_h / pad_out_w need the pooling mask bottom")

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        return (height * self.scale[0] - int(self.pad_out[0]), width * self.scale[1] - int(self.pad_out[1]))

    def top_shapes(self) -> list[Shape]:
        n, c, h, w = self.bottom_shapes[0]
        return [(n, c, *self.out_size(h, w))]

    def forward(self, x: torch.Tensor, *mask: torch.Tensor) -> tuple[torch.Tensor]:
        if not self.with_mask:
            return (x.repeat_interleave(self.scale[0], dim=2).repeat_interleave(self.scale[1], dim=3),)
        n, c, h, w = x.shape
        oh, ow = self.out_size(h, w)
        index = mask[0].reshape(n, c, h * w).long()
        if index.numel() and (int(index.max()) >= oh * ow or int(index.min()) < 0):
            raise self.fail(f"a mask index is outside the {oh}x{ow} top; check the scale against the pooling layer")
        top = x.new_zeros((n, c, oh * ow))
        return (top.scatter(2, index, x.reshape(n, c, h * w)).reshape(n, c, oh, ow),)
