"""Every net in tests/fixtures/layers against real Caffe: forward tops, backward diffs, params.

Per fixture folder (see MANIFEST.md, "layers/"): build net.prototxt in its phase, load
weights.caffemodel, feed input_<blob>.npy, and compare every blob of forward.npz (Caffe's
implicit split copies included). Where Caffe ran a backward pass, put top_diff.npz on the
non-loss outputs and loss_weight on the loss tops, backpropagate, and compare every blob diff
(an in-place blob's diff is the one w.r.t. its first in-place layer's input) and every param
diff of backward.npz. BatchNorm TRAIN running statistics must equal params_after_forward.npz.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_compat.io.prototxt import read_net
from caffe_compat.net.builder import CaffeNet, NetRun
from caffe_compat.net.registry import TEST, TRAIN

LAYERS = Path(__file__).parent / "fixtures" / "layers"
NETS = sorted(d.name for d in LAYERS.iterdir() if (d / "net.prototxt").is_file())
BACKWARD_NETS = [n for n in NETS if (LAYERS / n / "backward.npz").is_file()]
STATS_NETS = [n for n in NETS if (LAYERS / n / "params_after_forward.npz").is_file()]

FORWARD_TOL = 1e-5  # absolute, and relative for large values
BACKWARD_TOL = 1e-4


def build(name: str) -> tuple[CaffeNet, dict[str, torch.Tensor]]:
    folder = LAYERS / name
    meta = json.loads((folder / "meta.json").read_text())
    net = CaffeNet(read_net(folder / "net.prototxt"), phase=TRAIN if meta["phase"] == "TRAIN" else TEST)
    report = net.copy_from(folder / "weights.caffemodel")
    assert not report.initialised and not report.ignored
    inputs = {blob: torch.from_numpy(np.load(folder / f"input_{blob}.npy")) for blob in net.input_names}
    return net, inputs


def assert_close(kind: str, name: str, ours: torch.Tensor | None, ref: np.ndarray, tol: float) -> None:
    got = np.zeros_like(ref) if ours is None else ours.detach().numpy()
    assert got.shape == ref.shape, f"{kind} '{name}': shape {got.shape} != Caffe's {ref.shape}"
    err = np.abs(got.astype(np.float64) - ref)
    bound = tol * np.maximum(1.0, np.abs(ref))
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else ()
    assert np.all(err <= bound), (
        f"{kind} '{name}': max abs err {err.max():.3g} (at {worst}: ours {got[worst]!r}, "
        f"Caffe {ref[worst]!r})"
    )


@pytest.mark.parametrize("name", NETS)
def test_forward_matches_caffe(name: str) -> None:
    net, inputs = build(name)
    meta = json.loads((LAYERS / name / "meta.json").read_text())
    with torch.no_grad():
        blobs = net(inputs, blobs="all")
    reference = np.load(LAYERS / name / "forward.npz")
    assert sorted(blobs) == sorted(reference.files)
    assert net.output_names == meta["outputs"]
    assert {b: list(s) for b, s in net.blob_shapes.items()} == meta["blobs"]
    for blob in reference.files:
        assert_close("forward blob", blob, blobs[blob], reference[blob], FORWARD_TOL)


def backward(net: CaffeNet, inputs: dict[str, torch.Tensor], top_diff: dict[str, np.ndarray]) -> NetRun:
    """Caffe's net.backward() after net.forward(), with force_backward's full propagation."""
    leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
    run = net.run(leaves, record=True)
    for value in run.first.values():
        if value.requires_grad and not value.is_leaf:
            value.retain_grad()
    objective = sum(weight * value.sum() for _, weight, value in run.losses)
    for blob, diff in top_diff.items():
        objective = objective + (run.blobs[blob] * torch.from_numpy(diff)).sum()
    objective.backward()
    return run


@pytest.mark.parametrize("name", BACKWARD_NETS)
def test_backward_matches_caffe(name: str) -> None:
    net, inputs = build(name)
    folder = LAYERS / name
    # Loss tops keep Caffe's top diff = loss_weight; a net of losses only has no top_diff.npz.
    diffs = np.load(folder / "top_diff.npz") if (folder / "top_diff.npz").is_file() else {}
    run = backward(net, inputs, {blob: diffs[blob] for blob in getattr(diffs, "files", ())})
    reference = np.load(folder / "backward.npz")
    for key in reference.files:
        if "/" in key:
            layer, index = key.rsplit("/", 1)
            blob = net.layer_by_name(layer).blobs[int(index)]
            assert_close("param diff", key, blob.grad, reference[key], BACKWARD_TOL)
        else:
            assert_close("blob diff", key, run.first[key].grad, reference[key], BACKWARD_TOL)


@pytest.mark.parametrize("name", STATS_NETS)
def test_batchnorm_running_stats_match_caffe(name: str) -> None:
    net, inputs = build(name)
    with torch.no_grad():
        net(inputs)
    after = np.load(LAYERS / name / "params_after_forward.npz")
    for key in after.files:
        layer, index = key.rsplit("/", 1)
        ours = net.layer_by_name(layer).blobs[int(index)].detach().numpy()
        np.testing.assert_allclose(ours, after[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_every_fixture_folder_is_covered() -> None:
    assert len(NETS) == 24
    assert set(BACKWARD_NETS) == set(NETS) - {"accuracy", "argmax", "threshold"}
