"""Caffe's ``HDF5Output``: writes its two bottoms to ``hdf5_output_param.file_name`` as the
datasets ``data`` and ``label``, in Caffe's legacy 4-d shapes (N, C, H, W).

Caffe creates the file when the net is built and can write only one batch (a second forward
fails on the existing dataset). Here nothing is written until the first forward, so building
the net (``inspect``, ``time``) never truncates a file, and every forward appends its rows: the
file then holds all rows seen so far, rewritten through a temporary name each time, so it is
never half-written.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from caffe_compat.io.hdf5 import write_datasets
from caffe_compat.net.registry import Layer, Shape, register_layer

log = logging.getLogger(__name__)


def _legacy4(shape: Shape) -> Shape:
    """Caffe's num/channels/height/width view of a blob of at most 4 axes."""
    return tuple(shape) + (1,) * (4 - len(shape))


@register_layer("HDF5Output")
class HDF5Output(Layer):
    def __init__(self, param, bottom_shapes, phase) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.file_name = param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.fail("hdf5_output_param.file_name is not set")
        if len(self.bottom_shapes) != 2:
            raise self.fail(f"needs exactly 2 bottoms (data, label), got {len(self.bottom_shapes)}")
        data, label = self.bottom_shapes
        if len(data) > 4 or len(label) > 4:
            raise self.fail(f"writes Caffe's 4-d (N, C, H, W) blobs; got shapes {data} and {label}")
        if data[:1] != label[:1]:
            raise self.fail(f"data blob and label blob must have the same batch size ({data} vs {label})")
        self._rows: dict[str, list[np.ndarray]] = {"data": [], "label": []}

    def top_shapes(self) -> list[Shape]:
        return []

    def forward(self, data: torch.Tensor, label: torch.Tensor) -> tuple[()]:
        for name, blob in (("data", data), ("label", label)):
            values = blob.detach().to("cpu", torch.float32).numpy()
            self._rows[name].append(values.reshape(_legacy4(values.shape)).copy())
        log.info("Saving HDF5 file %s", self.file_name)
        write_datasets(self.file_name, {name: np.concatenate(parts) for name, parts in self._rows.items()})
        log.info("Successfully saved %d rows", data.shape[0])
        return ()
