"""soeaver's caffe-priv: ``SeLu`` and ``SeLuDropout`` (self-normalising nets, Klambauer et al. 2017).

Read from soeaver/py-RFCN-priv @ec89b86 (caffe-priv/src/caffe/layers/selu_layer.cpp,
selu_dropout_layer.cpp and .cu, caffe-priv/src/caffe/proto/caffe.proto), the Caffe of the nets in
soeaver/caffe-model (its PSPNet "-selu" nets). caffe-priv's ``Interp`` with ``use_blob_size`` is
in ``fork_pspnet.py`` with DeepLab's layer it extends.

- ``SeLu`` (``selu_param { lambda alpha }``, defaults 1.050700987, 1.67326324):
  lambda * x for x > 0, lambda * alpha * (exp(x) - 1) otherwise.
- ``SeLuDropout`` (``selu_dropout_param { dropout_ratio alpha }``, defaults 0.1, -1.75809934):
  the identity in TEST. In TRAIN each value is kept with probability q = 1 - dropout_ratio, a
  dropped one becomes ``alpha`` (SELU's negative saturation, -lambda * alpha), and the result is
  a * value + b with a = (q * (1 + alpha^2 * (1 - q)))^-1/2 and b = -a * (1 - q) * alpha, which
  keeps zero mean and unit variance; the gradient is a where kept, 0 where dropped.
"""

from __future__ import annotations

import torch

from caffe_compat.net.layers.activations import NeuronLayer
from caffe_compat.net.registry import TRAIN, register_layer


@register_layer("SeLu")
class SeLu(NeuronLayer):
    """lambda * x for x > 0, else lambda * alpha * (exp(x) - 1), with the layer's own constants."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.selu_param
        self.lam, self.alpha = float(getattr(p, "lambda")), float(p.alpha)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        # exp of the non-positive part only: exp(x) of a large x would overflow and its
        # (unselected) gradient would turn into NaN through torch.where.
        negative = self.lam * self.alpha * (torch.exp(torch.clamp(x, max=0.0)) - 1.0)
        return (torch.where(x > 0, self.lam * x, negative),)


@register_layer("SeLuDropout")
class SeLuDropout(NeuronLayer):
    """Alpha-dropout with caffe-priv's affine correction in TRAIN; the identity in TEST."""

    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.selu_dropout_param
        self.ratio, self.alpha = float(p.dropout_ratio), float(p.alpha)
        if not 0.0 < self.ratio < 1.0:
            raise self.fail(f"dropout_ratio must be in (0, 1) (caffe-priv checks it), got {self.ratio}")
        q = 1.0 - self.ratio
        self.a = (q * (1.0 + self.alpha * self.alpha * (1.0 - q))) ** -0.5
        self.b = -self.a * (1.0 - q) * self.alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if self.phase != TRAIN:
            return (x,)
        keep = torch.rand_like(x) >= self.ratio
        return (self.a * torch.where(keep, x, torch.full_like(x, self.alpha)) + self.b,)
