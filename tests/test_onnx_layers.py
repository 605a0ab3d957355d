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


def _check_against_caffe(name: str, model, inputs: dict[str, np.ndarray], net: CaffeNet, blobs) -> None:
    caffe = np.load(LAYERS / name / "forward.npz")
    got = run_onnx(model, inputs)
    with torch.no_grad():
        ours = net({k: torch.from_numpy(v) for k, v in inputs.items()}, blobs="all")
    assert set(blobs) <= set(got)
    for blob in blobs:
        np.testing.assert_allclose(got[blob], caffe[blob], rtol=TOL, atol=TOL, err_msg=f"{name}: blob {blob} vs Caffe")
        np.testing.assert_allclose(got[blob], ours[blob].numpy(), rtol=TOL, atol=TOL,
                                   err_msg=f"{name}: blob {blob} vs CaffeNet")


@pytest.mark.parametrize("name", EXPORTABLE)
def test_fixture_net_matches_caffe(name: str):
    """At the prototxt's batch, every blob of Caffe's forward.npz (split copies included)."""
    net, inputs = _build(name)
    caffe = np.load(LAYERS / name / "forward.npz")
    blobs = [b for b in caffe.files if b not in net.input_names]
    model, _, _ = net_to_onnx(net, extra_outputs=blobs, dynamic_batch=False)
    _check_against_caffe(name, model, inputs, net, blobs)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_fixture_net_with_fold_bn(name: str):
    """`export-onnx --fold-bn` (a no-op where no BatchNorm follows a convolution) keeps Caffe's outputs."""
    from caffe_compat.onnx.export import export_onnx

    net, inputs = _build(name)
    result = export_onnx(LAYERS / name / "net.prototxt", LAYERS / name / "weights.caffemodel", None,
                         batch="prototxt", fold_bn=True)
    _check_against_caffe(name, result.model, inputs, net, net.output_names)


# Nets whose dynamic export Caffe's own reshape rules forbid, and the layer the refusal names.
NO_DYNAMIC_BATCH = {"scale": "scale_all"}  # a learned Scale blob spans axis 0


@pytest.mark.parametrize("name", EXPORTABLE)
def test_dynamic_batch_at_twice_the_batch(name: str):
    """Exported with a dynamic batch and run at twice it: equals CaffeNet reshaped to that batch
    (Caffe's Reshape semantics); inputs that are not batched keep their shapes. Nets that Caffe
    cannot reshape are refused with the layer's name."""
    from caffe_compat.onnx.export import deploy_net_param

    net, inputs = _build(name)
    if name in NO_DYNAMIC_BATCH:
        with pytest.raises(CaffeCompatError, match=f"layer '{NO_DYNAMIC_BATCH[name]}'.*--batch prototxt"):
            net_to_onnx(net)
        return
    model, _, graph_inputs = net_to_onnx(net, extra_outputs=net.output_names)
    batched = {blob for blob, dims in graph_inputs if dims and isinstance(dims[0], str)}
    assert batched, name
    feeds = {k: np.concatenate([v, v]) if k in batched else v for k, v in inputs.items()}
    steps = [s for s in net.steps]
    big = CaffeNet(deploy_net_param(net.name, steps, {k: v.shape for k, v in feeds.items()}), phase=TEST)
    big.copy_from(LAYERS / name / "weights.caffemodel")
    got = run_onnx(model, feeds)
    with torch.no_grad():
        want = big({k: torch.from_numpy(v) for k, v in feeds.items()})
    caffe = np.load(LAYERS / name / "forward.npz")
    halves = 0
    for blob, value in want.items():
        assert got[blob].shape == value.shape, (name, blob)
        np.testing.assert_allclose(got[blob], value.numpy(), rtol=TOL, atol=TOL, err_msg=f"{name}: {blob}")
        # the batch is the fixture's twice over: each half is Caffe's own forward
        half = caffe[blob].shape[0] if caffe[blob].ndim else 0
        if half and got[blob].shape == (2 * half, *caffe[blob].shape[1:]):
            halves += 1
            for part in (got[blob][:half], got[blob][half:]):
                np.testing.assert_allclose(part, caffe[blob], rtol=TOL, atol=TOL, err_msg=f"{name}: {blob} vs Caffe")
    assert halves, name


def test_only_batched_inputs_get_the_batch_symbol():
    """A Bias operand (3, 4) and a second Softmax input with its own batch keep their shapes."""
    for name, static in (("bias", {"bb": [3, 4]}), ("softmax", {"d2": [4, 10]}), ("crop", {"ref_c": [1, 2, 5, 7]})):
        net, _ = _build(name)
        _, _, graph_inputs = net_to_onnx(net)
        dims = dict(graph_inputs)
        assert dims["data"][0] == "N", name
        for blob, shape in static.items():
            assert list(dims[blob]) == shape, (name, blob)


@pytest.mark.parametrize("opset", [13, 21])
def test_other_opsets(opset: int):
    """The oldest opset the converters need (Split/Unsqueeze take tensors) and a newer one."""
    for name in EXPORTABLE:
        net, inputs = _build(name)
        model, _, _ = net_to_onnx(net, opset=opset, dynamic_batch=False)
        assert model.opset_import[0].version == opset
        got = run_onnx(model, inputs)
        with torch.no_grad():
            want = net({k: torch.from_numpy(v) for k, v in inputs.items()})
        assert set(got) == set(want), name  # Caffe's net outputs, nothing more
        for blob, value in want.items():
            np.testing.assert_allclose(got[blob], value.numpy(), rtol=TOL, atol=TOL, err_msg=f"{name}: {blob}")
