"""``caffe-compat forward`` / ``compare`` / ``time`` against real Caffe's per-layer dumps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.net.diff import compare_blobs

LAYERS = Path(__file__).parent / "fixtures" / "layers"
TOPICS = sorted(p.name for p in LAYERS.iterdir() if (p / "forward.npz").exists())


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _forward_args(folder: Path) -> list[str]:
    phase = json.loads((folder / "meta.json").read_text()).get("phase", "TEST")
    args = ["forward", "--model", folder / "net.prototxt", "--weights", folder / "weights.caffemodel", "--phase", phase]
    for path in sorted(folder.glob("input_*.npy")):
        args += ["--input", f"{path.stem[len('input_'):]}={path}"]
    return args


def test_every_fixture_folder_is_covered():
    assert len(TOPICS) == 24


@pytest.mark.parametrize("topic", TOPICS)
def test_forward_dump_matches_caffe(topic, tmp_path):
    """Every blob real Caffe dumped (split copies included) within 1e-5 abs / 1e-5 rel."""
    folder = LAYERS / topic
    out = tmp_path / "ours.npz"
    result = _invoke(*_forward_args(folder), "--all", "-o", out)
    assert result.exit_code == 0, result.output
    result = _invoke("compare", out, folder / "forward.npz", "--atol", "1e-5", "--rtol", "1e-5")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "only in B" not in result.output


@pytest.mark.parametrize("topic", [t for t in TOPICS if (LAYERS / t / "backward.npz").exists()])
def test_backward_dump_matches_caffe(topic, tmp_path):
    """Every blob and param diff of Caffe's net.backward() within 1e-4 (relative to the blob)."""
    folder = LAYERS / topic
    diffs = tmp_path / "diffs.npz"
    args = [*_forward_args(folder), "-o", tmp_path / "blobs.npz", "--backward", diffs]
    if (folder / "top_diff.npz").exists():
        args += ["--top_diff", folder / "top_diff.npz"]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    result = _invoke("compare", diffs, folder / "backward.npz", "--atol", "1e-4", "--rtol", "1e-4")
    assert result.exit_code == 0, result.output
    assert "only in B" not in result.output


def test_compare_fails_past_tolerance_and_names_the_blob(tmp_path):
    ref = LAYERS / "lrn" / "forward.npz"
    with np.load(ref) as data:
        arrays = {k: data[k].copy() for k in data.files}
    arrays["lrn_within"][0, 0, 0, 0] += 1e-3
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    result = _invoke("compare", bad, ref)
    assert result.exit_code == 1
    assert re.search(r"lrn_within .* FAIL", result.output)
    assert "FAIL: 1 of 7 blob(s)" in result.output
    assert "first mismatch in B's order: lrn_within" in result.output
    assert _invoke("compare", bad, ref, "-atol", "1e-2").exit_code == 0  # Caffe-style single dash


def test_forward_selected_blobs_and_default_outputs(tmp_path):
    folder = LAYERS / "tile"
    out = tmp_path / "sel.npz"
    assert _invoke(*_forward_args(folder), "--blobs", "tile_c,tile_n", "-o", out).exit_code == 0
    with np.load(out) as data:
        assert sorted(data.files) == ["tile_c", "tile_n"]
    assert _invoke(*_forward_args(folder), "-o", out).exit_code == 0
    with np.load(out) as data:  # net outputs: blobs no layer consumes
        assert sorted(data.files) == ["tile_c", "tile_n", "tile_w"]


def test_forward_with_another_batch_size(tmp_path):
    folder = LAYERS / "lrn"
    x = np.load(folder / "input_data.npy")
    big = tmp_path / "x.npy"
    np.save(big, np.concatenate([x, x, x]))
    out = tmp_path / "big.npz"
    result = _invoke("forward", "--model", folder / "net.prototxt", "--input", f"data={big}", "--all", "-o", out)
    assert result.exit_code == 0, result.output
    with np.load(out) as ours, np.load(folder / "forward.npz") as caffe:
        np.testing.assert_allclose(ours["lrn_across"][4:6], caffe["lrn_across"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "data"], "expected NAME=FILE.npy"),
        (["--input", "data=/nonexistent.npy"], "/nonexistent.npy: cannot read"),
        (["--input", "nosuch=INPUT"], "'nosuch' is not a top of an input"),
        (["--input", "data=INPUT", "--blobs", "ghost"], "no blob(s) 'ghost'"),
        (["--input", "data=INPUT", "--top_diff", "TOPDIFF"], "--top_diff needs --backward"),
        (["--input", "data=INPUT", "--backward", "DIFFS", "--top_diff", "FORWARD"], "unknown blob(s) 'lrn_across'"),
    ],
)
def test_forward_errors_are_one_line(args, message, tmp_path):
    folder = LAYERS / "tile"
    places = {"INPUT": folder / "input_data.npy", "TOPDIFF": folder / "top_diff.npz", "DIFFS": tmp_path / "d.npz",
              "FORWARD": LAYERS / "lrn" / "forward.npz"}
    args = [str(places.get(a, a)) if "=" not in a else a.replace("INPUT", str(places["INPUT"])) for a in args]
    out = tmp_path / "o.npz"
    result = CliRunner().invoke(main, ["forward", "--model", str(folder / "net.prototxt"), *args, "-o", str(out)])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_forward_unwritable_output_is_one_line(tmp_path):
    folder = LAYERS / "tile"
    out = tmp_path / "missing_dir" / "o.npz"
    args = ["forward", "--model", str(folder / "net.prototxt"), "--input", f"data={folder / 'input_data.npy'}"]
    result = CliRunner().invoke(main, [*args, "-o", str(out)])
    assert result.exit_code == 1 and "o.npz: cannot write" in result.output and "Traceback" not in result.output


def test_compare_unreadable_file(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    result = CliRunner().invoke(main, ["compare", str(junk), str(LAYERS / "tile" / "forward.npz")])
    assert result.exit_code == 1 and "junk.npz: not a readable .npz" in result.output


def test_compare_rules():
    ref = {"a": np.array([1.0, np.nan, np.inf]), "big": np.array([1e4]), "s": np.array(2.0), "only_b": np.zeros(1)}
    ours = {"a": np.array([1.0, np.nan, np.inf]), "big": np.array([1e4 + 0.05]), "s": np.array([2.0]), "x": np.zeros(1)}
    result = compare_blobs(ours, ref, atol=1e-5, rtol=1e-5)
    rows = {row.name: row for row in result.rows}
    assert rows["a"].passed and rows["a"].max_abs == 0  # matching NaN and inf
    assert rows["big"].passed  # 5e-6 relative to the blob's magnitude
    assert rows["s"].passed  # () vs (1,) hold the same value
    assert result.only_a == ["x"] and result.only_b == ["only_b"]
    assert not compare_blobs({"a": np.array([0.0, np.nan])}, {"a": np.array([0.0, 1.0])}).passed
    assert not compare_blobs({"a": np.zeros((2, 3))}, {"a": np.zeros((3, 2))}).passed
    assert not compare_blobs({"a": np.zeros(1)}, {"b": np.zeros(1)}).passed  # nothing compared


def test_time_prints_caffe_style_report():
    folder = LAYERS / "activations"
    result = _invoke("time", "--model", folder / "net.prototxt", "-iterations", "2")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "*** Benchmark begins ***" in out and "*** Benchmark ends ***" in out
    assert "Testing for 2 iterations." in out and "Iteration: 2 forward-backward time:" in out
    for layer in ("relu", "prelu_ch", "tanh_inplace", "data_data_0_split"):
        assert re.search(rf"^\s*{layer}\tforward: [\d.e+-]+ ms\.$", out, re.M), layer
        assert re.search(rf"^\s*{layer}\tbackward: [\d.e+-]+ ms\.$", out, re.M), layer
    for line in ("Average Forward pass", "Average Backward pass", "Average Forward-Backward", "Total Time"):
        assert re.search(rf"^{line}: [\d.e+-]+ ms\.$", out, re.M), line


def test_time_backward_gives_autograds_diffs():
    """The layer-by-layer backward that ``time`` measures computes the same parameter diffs as
    one autograd pass over the whole net (in-place ReLU, implicit split and loss weight included)."""
    import torch

    from caffe_compat.io.prototxt import parse_net_text
    from caffe_compat.net.builder import CaffeNet
    from caffe_compat.net.registry import TRAIN
    from caffe_compat.net.timing import time_net

    net = CaffeNet(parse_net_text("""
        layer { name: "in" type: "Input" top: "x" top: "label" top: "h2"
                input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } shape { dim: 4 dim: 5 } } }
        layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
                inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
        layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
        layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
                inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" loss_weight: 2 }
        layer { name: "e" type: "EuclideanLoss" bottom: "h" bottom: "h2" top: "e" }
    """), TRAIN)
    torch.manual_seed(0)
    inputs = {"x": torch.randn(4, 6), "label": torch.tensor([0.0, 2, 1, 2]), "h2": torch.randn(4, 5)}
    time_net(net, iterations=1, inputs=inputs, progress=False)
    timed = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad()
    net.loss(net(inputs)).backward()
    for name, p in net.named_parameters():
        torch.testing.assert_close(timed[name], p.grad)


def test_time_gpu_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = CliRunner().invoke(main, ["time", "--model", str(LAYERS / "tile" / "net.prototxt"), "-gpu", "0"])
    assert result.exit_code == 1 and "no CUDA device" in result.output
