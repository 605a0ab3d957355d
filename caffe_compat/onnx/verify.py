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

INPUT_STD = 50.0  # about the spread of mean-subtracted 8-bit pixels


def max_abs_differences(net: CaffeNet, model: onnx.ModelProto, seed: int = 0) -> dict[str, float]:
    """Per graph output, max |onnxruntime - CaffeNet| on one seeded N(0, 50^2) input batch at
    the prototxt's shapes."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    feeds = {i.name: (rng.standard_normal(net.blob_shapes[i.name]) * INPUT_STD).astype(np.float32)
             for i in model.graph.input}
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise CaffeCompatError(f"net '{net.name}': onnxruntime cannot load the exported graph: {exc}") from exc
    names = [o.name for o in model.graph.output]
    got = session.run(names, feeds)
    with torch.no_grad():
        want = net({k: torch.from_numpy(v) for k, v in feeds.items()}, blobs=names)
    return {name: float(np.max(np.abs(value - want[name].float().numpy()), initial=0.0))
            for name, value in zip(names, got)}
