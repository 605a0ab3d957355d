"""Shape inference for ``inspect`` and early, clear errors: every blob's shape in a phase."""

from __future__ import annotations

from typing import Sequence

from caffe_compat.net.registry import TEST, Shape


def infer_blob_shapes(net_param, phase: int = TEST, stages: Sequence[str] = (),
                      level: int = 0) -> dict[str, Shape]:
    """Shape of every blob (Caffe's implicit split copies included) in creation order.

    Builds the net exactly as a run would, so the shapes and any error (unknown bottom, a
    shape mismatch naming both layers and shapes, a bad parameter) are the ones a run gives.
    """
    from caffe_compat.net.builder import CaffeNet

    return dict(CaffeNet(net_param, phase=phase, stages=stages, level=level).blob_shapes)
