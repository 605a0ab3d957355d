"""Caffe's data side: image lists -> Datum LMDBs, mean images, and reading them for PyTorch.

``convert_imageset`` / ``compute_image_mean`` reproduce Caffe's tools byte for byte;
``LMDBDataset`` and ``ImageListDataset`` read records, ``DataTransformer`` applies
``transform_param`` exactly, and ``CaffeBatches`` is a data layer's batch sequence.
Names are imported lazily so the CLI tools do not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "convert_imageset": "caffe_compat.data.convert_imageset",
    "ConvertOptions": "caffe_compat.data.convert_imageset",
    "compute_image_mean": "caffe_compat.data.image_mean",
    "LMDBDataset": "caffe_compat.data.lmdb_dataset",
    "ImageListDataset": "caffe_compat.data.image_data",
    "DataTransformer": "caffe_compat.data.transformer",
    "CaffeBatches": "caffe_compat.data.batches",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'caffe_compat.data' has no attribute {name!r}")
