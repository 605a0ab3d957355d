"""Caffe's weight fillers (``include/caffe/filler.hpp``), drawn from torch's RNG.

The distributions, fan computations and shape checks follow Caffe exactly; the random
streams are torch's (seed them with ``torch.manual_seed``), so values are reproducible
between runs of this package but are not bit-identical to Caffe's boost RNG.
"""

from __future__ import annotations

import math

import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2

def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Caffe's (fan_in, fan_out): count/shape[0] and count/shape[1] (count for 1-D blobs)."""
    count = math.prod(shape)
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _variance_n(param, shape: tuple[int, ...]) -> float:
    fan_in, fan_out = _fans(shape)
    if param.variance_norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if param.variance_norm == caffe_pb2.FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _bilinear(shape: tuple[int, ...]) -> torch.Tensor:
    """Per-(out, in) 2-D bilinear upsampling kernel, as used with Deconvolution."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(f"bilinear filler needs a 4-D blob with a square kernel, got {shape}")
    width = shape[3]
    f = math.ceil(width / 2.0)
    c = (width - 1) / (2.0 * f)
    ramp = 1 - (torch.arange(width, dtype=torch.float64) / f - c).abs()
    return (ramp[:, None] * ramp[None, :]).to(torch.float32).expand(shape)


def fill(blob: torch.Tensor, param, layer_name: str = "?") -> torch.Tensor:
    """Fill ``blob`` in place per the FillerParameter ``param``; returns ``blob``.

    Errors (unknown type, sparsity on a filler that has none, empty blob) name the layer.
    """
    shape = tuple(blob.shape)
    kind = param.type

    def fail(message: str) -> CaffeCompatError:
        return CaffeCompatError(f"layer '{layer_name}': filler '{kind}': {message}")

    if blob.numel() == 0:
        raise fail(f"cannot fill an empty blob of shape {shape}")
    if param.sparse != -1 and kind != "gaussian":
        raise fail("sparsity is only supported by the gaussian filler")
    with torch.no_grad():
        if kind == "constant":
            blob.fill_(param.value)
        elif kind == "uniform":
            blob.uniform_(param.min, param.max)
        elif kind == "gaussian":
            blob.normal_(param.mean, param.std)
            if param.sparse < -1:
                raise fail(f"sparse must be >= -1, got {param.sparse}")
            if param.sparse >= 0:
                # Keep each weight with probability sparse / num_outputs (outputs = shape[0]).
                keep = param.sparse / shape[0] if shape else 1.0
                if keep > 1:
                    raise fail(f"sparse {param.sparse} exceeds the {shape[0]} outputs")
                blob.mul_(torch.bernoulli(torch.full(shape, keep, device=blob.device)))
        elif kind == "positive_unitball":
            blob.uniform_(0, 1)
            rows = blob.view(shape[0], -1) if shape else blob.view(1, 1)
            rows.div_(rows.sum(dim=1, keepdim=True))
        elif kind == "xavier":
            scale = math.sqrt(3.0 / _variance_n(param, shape or (1,)))
            blob.uniform_(-scale, scale)
        elif kind == "msra":
            blob.normal_(0.0, math.sqrt(2.0 / _variance_n(param, shape or (1,))))
        elif kind == "bilinear":
            try:
                blob.copy_(_bilinear(shape))
            except ValueError as exc:
                raise fail(str(exc)) from None
        else:
            raise fail(
                "unknown filler type; Caffe knows constant, gaussian, positive_unitball, "
                "uniform, xavier, msra, bilinear"
            )
    return blob


def filled(shape, param, layer_name: str = "?") -> torch.nn.Parameter:
    """A new float32 Parameter of ``shape`` filled per ``param`` (how layers make blobs)."""
    blob = torch.empty(tuple(shape), dtype=torch.float32)
    return torch.nn.Parameter(fill(blob, param, layer_name))


def constant_filler(value: float):
    """A FillerParameter ``{type: "constant" value: v}`` (Caffe's implicit default fillers)."""
    param = caffe_pb2.FillerParameter()
    param.type = "constant"
    param.value = value
    return param
