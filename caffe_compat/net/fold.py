"""Inference-only speed-up: fold Caffe's Convolution (or InnerProduct) -> BatchNorm -> Scale
chains (and PSPNet's ``BN`` with its moving statistics) into the convolution.

With global statistics, BatchNorm and the following Scale are a per-channel affine map, so
    W' = W * g / sqrt(var + eps),   b' = (b - mean) * g / sqrt(var + eps) + beta
gives the same top with one conv and no extra passes over memory (about a third of a
ResNet's CPU forward time). The folded net is no longer Caffe's layout: use it for
inference only, not for training, snapshots or per-layer blob dumps.
"""

from __future__ import annotations

import torch

from caffe_compat.net.builder import CaffeNet, Step
from caffe_compat.net.layers.common import InnerProduct
from caffe_compat.net.layers.fork_segnet import BN
from caffe_compat.net.layers.normalization import BatchNorm, Scale
from caffe_compat.net.layers.vision import Convolution

Foldable = Convolution | InnerProduct


def _in_place_on(step: Step, blob: str) -> bool:
    return step.bottoms == (blob,) and step.tops == (blob,)


def _bn_affine(bn: BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(multiplier, offset) of BatchNorm with its stored statistics, in float64."""
    factor = bn.blobs[2].double()
    factor = torch.where(factor == 0, torch.zeros_like(factor), 1 / factor)
    mean, var = bn.blobs[0].double() * factor, bn.blobs[1].double() * factor
    inv = 1 / torch.sqrt(var + bn.eps)
    return inv, -mean * inv


def _pspnet_bn_affine(bn: BN) -> tuple[torch.Tensor, torch.Tensor]:
    """(multiplier, offset) of PSPNet's BN with its moving statistics (and slope, bias), in float64."""
    slope, bias, mean, var = (b.double().reshape(-1) for b in bn.blobs[:4])
    mult = slope / torch.sqrt(var + bn.eps)
    return mult, bias - mean * mult


def _foldable(layer) -> bool:
    """A layer whose top's axis 1 holds its outputs, one weight row (or column) and bias each."""
    if isinstance(layer, Convolution):
        return layer.channel_axis == 1
    return isinstance(layer, InnerProduct) and layer.axis == 1


def fold_batchnorm(net: CaffeNet) -> list[str]:
    """Fold every Convolution (or InnerProduct over axis 1) followed in place by a global-stats
    BatchNorm (and optionally a per-channel Scale) into it; returns the names of the removed layers."""
    removed: list[str] = []
    steps = net.steps
    i = 0
    while i < len(steps):
        conv = steps[i].layer
        if not _foldable(conv) or i + 1 >= len(steps):
            i += 1
            continue
        blob = steps[i].tops[0]
        bn_step = steps[i + 1]
        if not (_in_place_on(bn_step, blob) and (
                (isinstance(bn_step.layer, BatchNorm) and bn_step.layer.use_global_stats)
                or (isinstance(bn_step.layer, BN) and bn_step.layer.pspnet and bn_step.layer.global_stats))):
            i += 1
            continue
        mult, offset = (_bn_affine(bn_step.layer) if isinstance(bn_step.layer, BatchNorm)
                        else _pspnet_bn_affine(bn_step.layer))
        chain = [bn_step]
        if i + 2 < len(steps):
            scale_step = steps[i + 2]
            scale = scale_step.layer
            if (isinstance(scale, Scale) and scale.learned_scale and _in_place_on(scale_step, blob)
                    and scale.axis == 1 and tuple(scale.blobs[0].shape) == (conv.num_output,)):
                gamma = scale.blobs[0].double()
                mult, offset = mult * gamma, offset * gamma
                if scale.bias_term:
                    offset = offset + scale.blobs[1].double()
                chain.append(scale_step)
        _fold_into(conv, mult, offset)
        removed += [s.name for s in chain]
        i += 1 + len(chain)
    net.drop_layers(removed)
    return removed


def _fold_into(conv: Foldable, mult: torch.Tensor, offset: torch.Tensor) -> None:
    weight = conv.blobs[0]
    transposed = isinstance(conv, InnerProduct) and conv.transpose  # (K, num_output)
    shape = (1, -1) if transposed else (-1,) + (1,) * (weight.dim() - 1)
    bias = conv.blobs[1].double() if conv.bias_term else torch.zeros_like(mult)
    with torch.no_grad():
        weight.copy_(weight.double() * mult.reshape(shape))
        new_bias = bias * mult + offset
        if conv.bias_term:
            conv.blobs[1].copy_(new_bias)
        else:
            conv.blobs.append(torch.nn.Parameter(new_bias.float(), requires_grad=weight.requires_grad))
            conv.bias_term = True
