"""Check an exported graph against the net it came from: same random input, both runtimes.

WHY: a legacy model can hold a layer combination no test covered; one forward through
onnxruntime and through CaffeNet (the reference for Caffe's semantics) tells the user at export
time whether the ONNX file computes what their Caffe model did.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.builder import CaffeNet
from caffe_compat.onnx.transform import InputTransform

INPUT_STD = 50.0  # about the spread of mean-subtracted 8-bit pixels


def _random_input(rng: np.random.Generator, shape, raw: InputTransform | None) -> np.ndarray:
    """N(0, 50^2) values, or 8-bit pixel values for an input that takes raw pixels."""
    if raw is None:
        return (rng.standard_normal(shape) * INPUT_STD).astype(np.float32)
    pixels = rng.integers(0, 256, shape)
    return pixels.astype(np.uint8 if raw.uint8 else np.float32)


def max_abs_differences(net: CaffeNet, model: onnx.ModelProto, transform: InputTransform | None = None,
                        image: str | None = None, seed: int = 0) -> dict[str, float]:
    """Per graph output, max |onnxruntime - CaffeNet| on one seeded random batch at ``net``'s
    shapes; the ``image`` input gets raw pixels that ``transform`` turns into CaffeNet's input."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    feeds = {i.name: _random_input(rng, net.blob_shapes[i.name], transform if i.name == image else None)
             for i in model.graph.input}
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise CaffeCompatError(f"net '{net.name}': onnxruntime cannot load the exported graph: {exc}") from exc
    names = [o.name for o in model.graph.output]
    got = session.run(names, feeds)
    fed = {k: transform.apply_numpy(v) if k == image and transform is not None else v for k, v in feeds.items()}
    with torch.no_grad():
        want = net({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in fed.items()}, blobs=names)
    return {name: float(np.max(np.abs(value - want[name].float().numpy()), initial=0.0))
            for name, value in zip(names, got)}
