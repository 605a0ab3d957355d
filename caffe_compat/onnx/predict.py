"""Run an exported net on image files with ONNX Runtime, preprocessing them as Caffe did.

WHY Caffe's preprocessing: the net was trained on LMDB images that convert_imageset resized
(to the mean image's size) and a TEST-phase DataTransformer centre-cropped, mean-subtracted
and scaled. The same steps here (OpenCV BGR decode, INTER_LINEAR resize, our DataTransformer)
give the net the pixels it saw in ``caffe test``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from tqdm import tqdm

from caffe_compat.data.imageio import ImageReadError, hwc_to_chw, load_image
from caffe_compat.data.transformer import DataTransformer, read_mean_file
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.net.registry import TEST
from caffe_compat.onnx.transform import model_transform
from caffe_compat.proto import caffe_pb2
from caffe_compat.progress import progress_bar
from caffe_compat.data.scores import SCORE_CLASSES, SCORE_MIN, expected_scores

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider", "dml": "DmlExecutionProvider", "coreml": "CoreMLExecutionProvider",
}


def session_providers(names: Sequence[str] | None) -> list[str]:
    """ONNX Runtime provider names for short ones ("cuda", "cpu"), keeping only available ones.

    Asking for CUDA on a machine without it falls back to the CPU rather than failing, the way
    ``caffe test`` without ``-gpu`` runs on the CPU.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if not names:
        names = ["cuda", "cpu"]
    chosen = []
    for name in names:
        full = PROVIDERS.get(name.strip().lower(), name.strip())
        if full not in PROVIDERS.values():
            raise CaffeCompatError(f"--providers: unknown provider '{name}'; choose from {', '.join(PROVIDERS)}")
        if full in available:
            chosen.append(full)
    return chosen or ["CPUExecutionProvider"]


def open_session(onnx_path: str | os.PathLike[str], providers: Sequence[str] | None = None):
    """An ONNX Runtime session, with a clear error for a missing or invalid model file."""
    import onnxruntime as ort

    if not os.path.isfile(onnx_path):
        raise CaffeCompatError(f"{where(onnx_path)}: no such ONNX model")
    wanted = session_providers(providers)
    try:
        session = ort.InferenceSession(os.fspath(onnx_path), providers=wanted)
    except Exception as exc:  # onnxruntime raises its own exception types for every failure
        raise CaffeCompatError(f"{where(onnx_path)}: ONNX Runtime cannot load it: {str(exc).splitlines()[0]}") from exc
    asked = PROVIDERS.get(providers[0].strip().lower(), "") if providers else ""  # the user's first choice
    used = session.get_providers()[0]
    if asked and used != asked:
        hint = " (pip install 'caffe-compat[gpu]' for onnxruntime-gpu)" if asked == PROVIDERS["cuda"] else ""
        log.warning("ONNX Runtime runs %s on %s: %s is not available here%s", where(onnx_path), used, asked, hint)
    return session


@dataclass(frozen=True)
class Preprocess:
    """Caffe's deploy-time preprocessing: resize, centre crop, mean, scale.

    ``resize``: (height, width) the images are resized to first (convert_imageset's
    --resize_height/--resize_width); default the mean image's size, else the net's input size.
    ``crop_size``: transform_param.crop_size; default the net's input side when the resized
    image is larger.
    """

    mean_file: str | os.PathLike[str] | None = None
    mean_value: tuple[float, ...] = ()
    scale: float = 1.0
    resize: tuple[int, int] | None = None
    crop_size: int | None = None

    def transformer(self, input_shape: Sequence[int]) -> tuple[DataTransformer, tuple[int, int]]:
        """The DataTransformer for a net input (C, H, W) and the size to resize images to."""
        if self.mean_file is not None and self.mean_value:
            raise CaffeCompatError("give either a mean file or mean values, not both")
        c, h, w = (int(d) for d in input_shape)
        mean = read_mean_file(self.mean_file) if self.mean_file is not None else None
        resize = self.resize or ((mean.shape[1], mean.shape[2]) if mean is not None else (h, w))
        crop = self.crop_size
        if crop is None and resize != (h, w):
            if h != w:
                raise CaffeCompatError(
                    f"the net's input is {h}x{w} but images are resized to {resize[0]}x{resize[1]}; Caffe "
                    "crops squares only, so resize to the input size (--resize)")
            crop = h
        param = caffe_pb2.TransformationParameter(crop_size=crop or 0, scale=self.scale,
                                                  mean_value=list(self.mean_value))
        transformer = DataTransformer(param, TEST, mean=mean)
        produced = transformer.output_shape((c, *resize))
        if produced != (c, h, w):
            raise CaffeCompatError(
                f"preprocessing gives {produced} per image but the net's input is {(c, h, w)}: "
                "check --resize / --crop_size")
        return transformer, resize


def load_batch(images: Sequence[str | os.PathLike[str]], input_shape: Sequence[int],
               preprocess: Preprocess = Preprocess()) -> np.ndarray:
    """Image files as the net's float32 N x C x H x W input."""
    transformer, (height, width) = preprocess.transformer(input_shape)
    colour = int(input_shape[0]) == 3
    batch = np.empty((len(images), *(int(d) for d in input_shape)), np.float32)
    for i, image in enumerate(images):
        try:
            pixels = load_image(os.fsencode(image), colour, height, width).pixels
        except ImageReadError as exc:  # its message names the file
            raise CaffeCompatError(str(exc)) from None
        transformer.apply(hwc_to_chw(pixels), transformer.plan(height, width, None), out=batch[i])
    return batch


def _net_input(session) -> tuple[str, tuple[int | None, ...]]:
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        shapes = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise CaffeCompatError(f"predict needs a net with one N x C x H x W image input, this one has {shapes}")
    shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
    if None in shape[1:]:
        raise CaffeCompatError(f"the net's input '{inputs[0].name}' has no fixed C x H x W: {inputs[0].shape}")
    return inputs[0].name, shape


def run_batches(session, batch: np.ndarray, output: str | None = None, batch_size: int = 16,
                progress: bool = False) -> np.ndarray:
    """One output of the net for every row of ``batch``, run in chunks (a fixed-batch model gets
    its last chunk padded with zeros)."""
    name, shape = _net_input(session)
    outputs = [o.name for o in session.get_outputs()]
    if output is None:
        output = "prob" if "prob" in outputs else outputs[0]
    elif output not in outputs:
        raise CaffeCompatError(f"the net has no output '{output}'; outputs are {', '.join(outputs)}")
    chunk = shape[0] or batch_size
    results = []
    for start in tqdm(range(0, len(batch), chunk), desc="predict", unit="batch", disable=not progress):
        part = batch[start:start + chunk]
        rows = len(part)
        if shape[0] and rows < chunk:
            part = np.concatenate([part, np.zeros((chunk - rows, *part.shape[1:]), part.dtype)])
        results.append(session.run([output], {name: part})[0][:rows])
    return np.concatenate(results).reshape(len(batch), -1)


def run_records(session, records, preprocess: Preprocess = Preprocess(), output: str | None = None,
                batch_size: int = 16, mirror: bool = False, progress: bool | None = None,
                source: str | os.PathLike[str] = "<model>") -> tuple[np.ndarray, np.ndarray, str]:
    """The net's output for every record of a source (``(CxHxW array, label)`` items, e.g. an
    LMDB's datums, already resized), with Caffe's TEST transform (or the one in the model's
    metadata); returns (outputs (N, K), labels, output name). ``mirror`` averages each output
    with that of the horizontally mirrored input (test-time augmentation)."""
    name, shape = _net_input(session)
    outputs = [o.name for o in session.get_outputs()]
    output = output or ("prob" if "prob" in outputs else outputs[0])
    if output not in outputs:
        raise CaffeCompatError(f"the net has no output '{output}'; outputs are {', '.join(outputs)}")
    first, _ = records[0]
    size = preprocess.resize or (int(first.shape[1]), int(first.shape[2]))
    found = model_transform(session, source)
    to_model = None
    if found is not None:  # the model subtracts the mean and scales itself: give it cropped pixels
        if preprocess.mean_file is not None or preprocess.mean_value or preprocess.scale != 1.0:
            raise CaffeCompatError(f"{where(source)}: the model subtracts its mean and scales its input itself "
                                   "(its metadata says so): drop --mean_file/--mean_value/--scale")
        to_model = found[1].model_input
        preprocess = Preprocess(crop_size=preprocess.crop_size or found[1].crop_size or None)
    transformer, _ = replace(preprocess, resize=size).transformer(shape[1:])
    chunk = shape[0] or batch_size
    results, labels = [], []

    def run(batch: np.ndarray, rows: int) -> np.ndarray:
        feed = to_model(batch) if to_model is not None else batch
        return session.run([output], {name: feed})[0][:rows].reshape(rows, -1).astype(np.float64)

    bar = progress_bar(total=len(records), desc="predict", unit="image", shown=progress)
    try:
        for start in range(0, len(records), chunk):
            rows = range(start, min(start + chunk, len(records)))
            batch = np.zeros((chunk, *(int(d) for d in shape[1:])), np.float32)
            for slot, index in enumerate(rows):
                image, label = records[index]
                transformer.apply(image, transformer.plan(image.shape[1], image.shape[2], None), out=batch[slot])
                labels.append(float(label))
            part = batch if shape[0] else batch[: len(rows)]
            value = run(part, len(rows))
            if mirror:
                value = (value + run(np.ascontiguousarray(part[..., ::-1]), len(rows))) / 2
            results.append(value)
            bar.update(len(rows))
    finally:
        bar.close()
    return np.concatenate(results), np.asarray(labels), output


def predict(onnx_path: str | os.PathLike[str] | None, images: Sequence[str | os.PathLike[str]],
            mean_file: str | os.PathLike[str] | None = None, *, mean_value: Sequence[float] = (),
            scale: float | None = None, resize: tuple[int, int] | None = None, crop_size: int | None = None,
            providers: Sequence[str] | None = None, output: str | None = None, batch_size: int = 16,
            progress: bool = False, session=None) -> np.ndarray:
    """The net's output (``prob`` when it has one) for each image file, as an (N, K) array.

    A model exported with its input transform (``export-onnx --mean_file ...`` or from a
    train_val) says in its metadata how to resize and crop and takes raw pixels, so no
    preprocessing flag is needed. ``session``: an engine to run instead of an ONNX Runtime
    session of ``onnx_path`` (``caffe_compat.onnx.engines.TorchEngine``).
    """
    if not images:
        raise CaffeCompatError("predict: no images given")
    if session is None:
        session = open_session(onnx_path, providers)
    _, shape = _net_input(session)
    found = model_transform(session, onnx_path or "<engine>")
    if found is None:
        preprocess = Preprocess(mean_file, tuple(float(v) for v in mean_value), 1.0 if scale is None else scale,
                                resize, crop_size)
        return run_batches(session, load_batch(images, shape[1:], preprocess), output, batch_size, progress)
    if mean_file is not None or len(mean_value) or scale is not None:
        raise CaffeCompatError(f"{where(onnx_path or '<engine>')}: the model subtracts its mean and scales its "
                               "input itself (its metadata says so): drop --mean_file/--mean_value/--scale")
    transform = found[1]
    preprocess = Preprocess(resize=resize or transform.resize, crop_size=crop_size or transform.crop_size or None)
    batch = transform.model_input(load_batch(images, shape[1:], preprocess))
    return run_batches(session, batch, output, batch_size, progress)


def format_predictions(images: Sequence[str | os.PathLike[str]], probs: np.ndarray, top_k: int = 5,
                       score_min: int = SCORE_MIN) -> list[str]:
    """One line per image. Regression nets (one output): ``score 2.8512``. 40-class score nets:
    the expected score Σ p_k·(score_min + k) first, then the top-k classes as scores. Other
    nets: the top-k classes with probabilities."""
    if probs.shape[1] == 1:
        return [f"{os.fspath(image)}: score {float(probs[i, 0]):.4f}" for i, image in enumerate(images)]
    k = min(top_k, probs.shape[1])
    score_net = probs.shape[1] == SCORE_CLASSES
    scores = expected_scores(probs, score_min) if score_net else None
    lines = []
    for i, image in enumerate(images):
        order = np.argsort(-probs[i], kind="stable")[:k]
        if scores is not None:
            classes = ", ".join(f"{score_min + int(c)}: {probs[i, c]:.4f}" for c in order)
            lines.append(f"{os.fspath(image)}: score {scores[i]:.2f} (expected over {score_min}..{score_min + SCORE_CLASSES - 1}); "
                         f"top-{k} scores [{classes}]")
        else:
            classes = ", ".join(f"{int(c)}: {probs[i, c]:.4f}" for c in order)
            lines.append(f"{os.fspath(image)}: top-{k} [{classes}]")
    return lines
