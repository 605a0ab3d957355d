"""pycaffe's ``caffe.Classifier``: a TEST net with a Transformer, predicting from images."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from caffe_compat.net.registry import TEST
from caffe_compat.pycaffe import io
from caffe_compat.pycaffe.net import Net


class Classifier(Net):
    """Scores H x W x K images: resized to ``image_dims``, cropped to the net's input (centre,
    or the 10 crops of :func:`~caffe_compat.pycaffe.io.oversample`, averaged), preprocessed."""

    def __init__(self, model_file: str | os.PathLike[str], pretrained_file: str | os.PathLike[str],
                 image_dims: Sequence[int] | None = None, mean: np.ndarray | None = None,
                 input_scale: float | None = None, raw_scale: float | None = None,
                 channel_swap: Sequence[int] | None = None) -> None:
        super().__init__(model_file, pretrained_file, TEST)
        name = self.inputs[0]
        self.transformer = io.Transformer({name: self.blobs[name].data.shape})
        self.transformer.set_transpose(name, (2, 0, 1))
        if mean is not None:
            self.transformer.set_mean(name, mean)
        if input_scale is not None:
            self.transformer.set_input_scale(name, input_scale)
        if raw_scale is not None:
            self.transformer.set_raw_scale(name, raw_scale)
        if channel_swap is not None:
            self.transformer.set_channel_swap(name, channel_swap)
        self.crop_dims = np.array(self.blobs[name].data.shape[2:])
        self.image_dims = np.array(image_dims) if image_dims is not None else self.crop_dims

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """Class scores (N x classes) for a list of images."""
        height, width = (int(d) for d in self.image_dims)
        images = np.zeros((len(inputs), height, width, inputs[0].shape[2]), dtype=np.float32)
        for i, image in enumerate(inputs):
            images[i] = io.resize_image(image, (height, width))
        if oversample:
            images = io.oversample(images, self.crop_dims)
        else:
            top, left = ((self.image_dims - self.crop_dims) / 2.0).astype(int)
            images = images[:, top : top + self.crop_dims[0], left : left + self.crop_dims[1], :]
        name = self.inputs[0]
        batch = np.stack([self.transformer.preprocess(name, image) for image in images])
        scores = self.forward_all(**{name: batch})[self.outputs[0]]
        if oversample:
            scores = scores.reshape((len(scores) // 10, 10, -1)).mean(1)
        return scores
