"""Regression tests for what a user porting Caffe shell scripts ran into (QA pass).

Each test is one bug found by running ``caffe-compat`` the way the old scripts ran Caffe's
tools: tool names, flag spellings, typos and wrong files must give one clear line, no
traceback and no half-written output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet
from caffe_compat.net.registry import TEST, TRAIN


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_clear_error(result, *needles: str) -> str:
    """The run failed with exit 1 and a single 'caffe-compat: error:' line naming ``needles``."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("caffe-compat: error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.mark.parametrize("tool", ["convert_imageset", "compute_image_mean", "upgrade_net_proto_text",
                                  "upgrade_net_proto_binary"])
def test_caffe_tool_names_with_underscores_work(tool):
    result = _run(tool, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_mistyped_single_dash_flag_is_named_in_full_with_a_suggestion():
    result = _run("train", "-solvr", "solver.prototxt")
    assert result.exit_code == 2
    assert "No such option '-solvr'" in result.output
    assert "'-solver'" in result.output
    assert "'-s'" not in result.output


def test_mistyped_flag_of_gflags_bool_command_is_named_in_full():
    result = _run("convert_imageset", "-gary", "a/", "b.txt", "c_lmdb")
    assert result.exit_code == 2
    assert "No such option '-gary'" in result.output and "'-gray'" in result.output


def test_atomic_write_into_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(CaffeCompatError, match="folder .* does not exist"):
        atomic_write_bytes(tmp_path / "nodir" / "x.bin", b"x")
    with pytest.raises(CaffeCompatError, match="is a folder"):
        atomic_write_bytes(tmp_path, b"x")


def test_upgrade_binary_into_missing_folder_has_no_traceback(fixtures, tmp_path):
    result = _run("upgrade-net-proto-binary", fixtures / "upgrade" / "v1_weights.caffemodel",
                  tmp_path / "nodir" / "up.caffemodel")
    _one_clear_error(result, "does not exist")
    assert not (tmp_path / "nodir").exists()


def _tiny_outputs(tmp_path: Path) -> Path:
    out = tmp_path / "a.npz"
    np.savez(out, prob=np.ones((2, 3), np.float32))
    return out


def test_compare_with_a_lone_npy_explains_what_is_needed(tmp_path):
    ref = tmp_path / "prob.npy"
    np.save(ref, np.ones((2, 3), np.float32))
    _one_clear_error(_run("compare", _tiny_outputs(tmp_path), ref), "prob.npy", ".npz")


def test_compare_with_a_text_file_is_one_clear_error(fixtures, tmp_path):
    _one_clear_error(_run("compare", _tiny_outputs(tmp_path), fixtures / "upgrade" / "v1_deploy.prototxt"),
                     "not an .npz file")


def test_forward_input_that_is_not_npy_is_one_clear_error(fixtures, tmp_path):
    model = fixtures / "upgrade" / "deploy_upgraded.prototxt"
    bad = fixtures / "upgrade" / "v1_deploy.prototxt"
    _one_clear_error(_run("forward", "-model", model, "-input", f"data={bad}", "-o", tmp_path / "o.npz"),
                     "not a .npy file")
    _one_clear_error(_run("forward", "-model", model, "-input", f"data={_tiny_outputs(tmp_path)}",
                          "-o", tmp_path / "o.npz"), "not an .npz archive")


def test_convert_imageset_with_a_binary_list_has_no_traceback(fixtures, tmp_path):
    images = fixtures / "images"
    result = _run("convert_imageset", f"{images}/", images / "a" / "grad_000.jpg", tmp_path / "x_lmdb")
    _one_clear_error(result, "none of the")
    assert not (tmp_path / "x_lmdb").exists()


def test_extract_frames_failure_leaves_no_output_folder(fixtures, tmp_path):
    out = tmp_path / "frames"
    result = _run("workflow", "extract-frames", fixtures / "images" / "train.txt", "-o", out)
    _one_clear_error(result, "could be read as a video")
    assert not out.exists()


_STAGED_NET = """
name: "staged"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "both" type: "Power" bottom: "data" top: "both" power_param { scale: 3 }
        include { stage: "a" stage: "b" } }
"""


def test_forward_stage_is_comma_separated_like_caffe(tmp_path):
    model = tmp_path / "staged.prototxt"
    model.write_text(_STAGED_NET)
    np.save(tmp_path / "x.npy", np.ones((1, 2), np.float32))
    out = tmp_path / "o.npz"
    result = _run("forward", "-model", model, "-stage", "a,b", "-input", f"data={tmp_path / 'x.npy'}",
                  "-blobs", "both", "-o", out)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(out)["both"], np.full((1, 2), 3, np.float32))


_MEMORY_NET = """
name: "mem"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 4 channels: 3 height: 5 width: 6 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_memory_data_declares_caffe_shapes_and_takes_caller_tops():
    net = CaffeNet(parse_net_text(_MEMORY_NET), phase=TRAIN)
    assert net.blob_shapes["data"] == (4, 3, 5, 6)
    assert net.blob_shapes["label"] == (4,)
    data = torch.ones(4, 3, 5, 6)
    out = net.forward({"data": data, "label": torch.zeros(4)})
    assert out["loss"].item() == pytest.approx(np.log(2), rel=1e-6)  # equal logits -> log(2)
    with pytest.raises(CaffeCompatError, match="layer 'data' .*come from the caller"):
        net.forward()


def test_memory_data_without_dimensions_names_the_missing_fields():
    text = _MEMORY_NET.replace("batch_size: 4 channels: 3 ", "")
    with pytest.raises(CaffeCompatError, match="layer 'data' .*batch_size, channels"):
        CaffeNet(parse_net_text(text), phase=TEST)


def test_forward_feeds_memory_data_at_another_batch_size(tmp_path):
    model = tmp_path / "mem.prototxt"
    model.write_text(_MEMORY_NET)
    np.save(tmp_path / "x.npy", np.ones((2, 3, 5, 6), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(2, np.float32))
    result = _run("forward", "-model", model, "-phase", "TRAIN", "-input", f"data={tmp_path / 'x.npy'}",
                  "-input", f"label={tmp_path / 'y.npy'}", "-blobs", "ip", "-o", tmp_path / "o.npz")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["ip"], np.full((2, 2), 90, np.float32))


def test_inspect_nsfw_caffemodel_builds_its_memory_data_training_net(nsfw_dir):
    result = _run("inspect", nsfw_dir / "resnet_50_1by2_nsfw.caffemodel")
    assert result.exit_code == 0, result.output
    assert "unknown type 'MemoryData'" not in result.output
    data_row = next(line for line in result.output.splitlines() if line.startswith("data "))
    assert "MemoryData" in data_row and "(32,3,224,224) (32)" in data_row


def test_time_shows_no_progress_bar_when_piped_to_a_log(fixtures):
    # CliRunner's stderr is not a terminal, like `caffe-compat time ... 2>&1 | tee log`.
    result = _run("time", "-model", fixtures / "upgrade" / "deploy_upgraded.prototxt", "-iterations", "2")
    assert result.exit_code == 0, result.output
    assert "it/s" not in result.output and "iter/s" not in result.output and "\r" not in result.output
    assert "Average Forward pass" in result.output


def test_train_log_file_in_missing_folder_is_one_clear_error(fixtures, tmp_path):
    solver = fixtures / "solver" / "sgd_step" / "solver.prototxt"
    result = _run("train", "-solver", solver, "-iterations", "1", "-log", tmp_path / "nodir" / "train.log")
    _one_clear_error(result, "train.log", "cannot open the log file")


def test_typo_after_a_valid_flag_with_the_same_first_letter_names_the_typo():
    result = _run("train", "-solver", "s.prototxt", "-snapshto", "x.solverstate")
    assert result.exit_code == 2
    assert "No such option '-snapshto'" in result.output and "'-snapshot'" in result.output


def test_weights_of_another_net_are_one_clear_error(tmp_path, nsfw_dir):
    """Loading the nsfw caffemodel into an unrelated net names both nets instead of loading nothing."""
    from click.testing import CliRunner

    from caffe_compat.cli import main
    from tests.conftest import FIXTURES

    result = CliRunner().invoke(main, [
        "forward", "-model", str(FIXTURES / "upgrade/deploy_upgraded.prototxt"),
        "-weights", str(nsfw_dir / "resnet_50_1by2_nsfw.caffemodel"),
        "-input", f"data={FIXTURES / 'upgrade/forward_input.npy'}", "-o", str(tmp_path / "x.npz")])
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("caffe-compat: error:")]
    assert len(errors) == 1 and "weights of another net?" in errors[0] and len(errors[0]) < 400
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.npz").exists()


def test_library_warnings_are_glog_lines(tmp_path):
    """Partially matching weights warn once, in glog format, with a shortened layer list."""
    import logging
    import re

    from caffe_compat.cli.glog import GlogFormatter

    record = logging.LogRecord("caffe_compat.net.weights", logging.WARNING, "/x/weights.py", 93,
                               "msg %s", ("a",), None)
    assert re.fullmatch(r"W\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ weights\.py:93\] msg a",
                        GlogFormatter().format(record))


def test_lazy_command_table_matches_what_the_modules_register():
    """Every command a cli module registers is in COMMANDS under that module, and nothing else is."""
    import importlib

    from caffe_compat.cli import COMMANDS

    for module in set(COMMANDS.values()):
        importlib.import_module(f"caffe_compat.cli.{module}")
    assert set(main.commands) == set(COMMANDS)
    for name, command in main.commands.items():
        assert command.callback.__module__ == f"caffe_compat.cli.{COMMANDS[name]}", name


def test_a_tool_that_reads_lmdbs_starts_without_torch_or_opencv():
    import subprocess
    import sys

    code = ("import sys; from caffe_compat.cli import main; main.get_command(None, 'compute-image-mean'); "
            "print('torch' in sys.modules, 'matplotlib' in sys.modules, 'cv2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]
