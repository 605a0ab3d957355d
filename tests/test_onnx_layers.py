"""Every exportable net of tests/fixtures/layers through ONNX Runtime equals Caffe and CaffeNet.

Each fixture net is built in the TEST phase, exported with every blob of Caffe's forward.npz
as an extra graph output, run on the fixture inputs by onnxruntime (CPU) and compared with
Caffe's own forward.npz and with our CaffeNet forward. Nets that cannot be a deploy graph are
listed in NOT_EXPORTABLE with the reason, and must fail with a clear error naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import read_net
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST
from caffe_compat.onnx.export import net_to_onnx

LAYERS = Path(__file__).parent / "fixtures" / "layers"
NETS = sorted(d.name for d in LAYERS.iterdir() if (d / "net.prototxt").is_file())
TOL = 1e-5  # absolute, and relative for large values (bn_zero divides by sqrt(eps))

# fixture net -> (why it has no ONNX deploy graph, a phrase the export error must contain)
NOT_EXPORTABLE = {
    "accuracy": ("only Accuracy layers: training metrics, left out of deploy graphs", "nothing to export"),
    "losses": ("only loss layers, left out of deploy graphs", "nothing to export"),
    "batchnorm_train": ("BatchNorm with use_global_stats: false uses batch statistics", "use_global_stats"),
}
EXPORTABLE = [n for n in NETS if n not in NOT_EXPORTABLE]


def _build(name: str) -> tuple[CaffeNet, dict[str, np.ndarray]]:
    folder = LAYERS / name
    net = CaffeNet(read_net(folder / "net.prototxt"), phase=TEST)
    net.copy_from(folder / "weights.caffemodel")
    return net, {blob: np.load(folder / f"input_{blob}.npy") for blob in net.input_names}


def run_onnx(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def test_fixture_nets_are_all_accounted_for():
    assert set(NOT_EXPORTABLE) <= set(NETS)
    assert len(EXPORTABLE) >= 20


@pytest.mark.parametrize("name", EXPORTABLE)
def test_fixture_net_matches_caffe(name: str):
    net, inputs = _build(name)
    caffe = np.load(LAYERS / name / "forward.npz")
    blobs = [b for b in caffe.files if b not in net.input_names]
    model, _, _ = net_to_onnx(net, extra_outputs=blobs)
    got = run_onnx(model, inputs)
    with torch.no_grad():
        ours = net({k: torch.from_numpy(v) for k, v in inputs.items()}, blobs="all")
    assert set(blobs) <= set(got)
    for blob in blobs:
        np.testing.assert_allclose(got[blob], caffe[blob], rtol=TOL, atol=TOL, err_msg=f"{name}: blob {blob} vs Caffe")
        np.testing.assert_allclose(got[blob], ours[blob].numpy(), rtol=TOL, atol=TOL,
                                   err_msg=f"{name}: blob {blob} vs CaffeNet")


@pytest.mark.parametrize("name", sorted(NOT_EXPORTABLE))
def test_unexportable_fixture_nets_fail_clearly(name: str):
    net, _ = _build(name)
    with pytest.raises(CaffeCompatError, match=NOT_EXPORTABLE[name][1]):
        net_to_onnx(net)


# Nets whose every input has the batch on axis 0 (bias/scale feed per-channel operands).
BATCHED = ["activations", "argmax", "batchnorm_test", "concat", "conv", "crop", "deconv", "eltwise",
           "flatten_reshape", "innerproduct", "lrn", "pool", "power_exp_log", "slice", "softmax", "split", "tile"]


@pytest.mark.parametrize("name", BATCHED)
def test_dynamic_batch_follows_caffe_reshape(name: str):
    """Exported at the prototxt's batch, run at batch 5: equals CaffeNet built for batch 5."""
    from caffe_compat.onnx.export import with_input_batch

    net, inputs = _build(name)
    model, _, _ = net_to_onnx(net, extra_outputs=net.output_names)
    big = CaffeNet(with_input_batch(read_net(LAYERS / name / "net.prototxt"), 5), phase=TEST)
    big.copy_from(LAYERS / name / "weights.caffemodel")
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((5, *v.shape[1:])).astype(np.float32) + (3 if k == "pos" else 0)
             for k, v in inputs.items()}
    got = run_onnx(model, feeds)
    with torch.no_grad():
        want = big({k: torch.from_numpy(v) for k, v in feeds.items()})
    for blob, value in want.items():
        np.testing.assert_allclose(got[blob], value.numpy(), rtol=TOL, atol=TOL, err_msg=f"{name}: {blob}")


@pytest.mark.parametrize("opset", [13, 21])
def test_other_opsets(opset: int):
    """The oldest opset the converters need (Split/Unsqueeze take tensors) and a newer one."""
    for name in EXPORTABLE:
        net, inputs = _build(name)
        model, _, _ = net_to_onnx(net, opset=opset)
        assert model.opset_import[0].version == opset
        got = run_onnx(model, inputs)
        with torch.no_grad():
            want = net({k: torch.from_numpy(v) for k, v in inputs.items()})
        assert set(got) == set(want), name  # Caffe's net outputs, nothing more
        for blob, value in want.items():
            np.testing.assert_allclose(got[blob], value.numpy(), rtol=TOL, atol=TOL, err_msg=f"{name}: {blob}")
