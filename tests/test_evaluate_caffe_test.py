"""`caffe-compat test` against a real `caffe test` run (tests/fixtures/test, see MANIFEST.md)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.evaluate import REPORT_BLOBS, run_test
from caffe_compat.solver.caffe_log import CaffeLog

_LINE = re.compile(r"caffe\.cpp:(?:304|309|321)\] (.*)$")
_VALUE = re.compile(r"^(.*?)(-?[0-9.e+-]+|nan|inf)((?: \(\* .*\))?)$")


def _result_lines(text: str) -> list[str]:
    """The `Batch i, x = v`, `Loss:` and final `x = m` messages of a caffe test log, in order."""
    return [m.group(1) for line in text.splitlines() if (m := _LINE.search(line))]


def _split(message: str) -> tuple[str, float, str]:
    """('Batch 0, prob = ', 0.0083, '') -- the text around a message's number."""
    head, value, tail = _VALUE.match(message).groups()
    return head, float(value), re.sub(r"[-0-9.e+]+", "#", tail)


@pytest.fixture
def in_test_fixture(fixtures, monkeypatch):
    """Caffe ran with cwd = tests/fixtures/test (the prototxt's paths are relative to it)."""
    monkeypatch.chdir(fixtures / "test")
    return fixtures / "test"


def _run(keep=()):
    stream = io.StringIO()
    result = run_test("test.prototxt", "weights.caffemodel", iterations=3, log=CaffeLog(stream=stream), keep=keep)
    return result, stream.getvalue()


def test_log_lines_match_caffe_test(in_test_fixture):
    result, text = _run()
    ours = _result_lines(text)
    theirs = _result_lines((in_test_fixture / "caffe_test.log").read_text())
    assert len(ours) == len(theirs) == 3 * (3 + 160) + 1 + 3 + 160
    for mine, ref in zip(ours, theirs):
        head, value, tail = _split(mine)
        ref_head, ref_value, ref_tail = _split(ref)
        assert (head, tail) == (ref_head, ref_tail)
        assert value == pytest.approx(ref_value, rel=1e-4, abs=1e-6), (mine, ref)
    assert result.outputs == ["accuracy", "accuracy_top5", "loss", "prob"]  # by blob name


def test_batch_losses_and_mean_loss_match_caffe(in_test_fixture):
    summary = json.loads((in_test_fixture / "summary.json").read_text())
    result, _ = _run()
    np.testing.assert_allclose(result.batch_losses, summary["per_batch_loss"], rtol=1e-5)
    assert result.loss == pytest.approx(summary["mean_loss"], rel=1e-5)
    means = result.means()
    assert means["loss"][0] == pytest.approx(5.08343, rel=1e-5)
    assert means["accuracy"][0] == summary["mean_accuracy"]


def test_kept_prob_and_label_equal_pycaffe(in_test_fixture):
    result, _ = _run(keep=REPORT_BLOBS)
    np.testing.assert_allclose(result.kept_array("prob"), np.load(in_test_fixture / "probs.npy"), atol=1e-6)
    np.testing.assert_array_equal(result.kept_array("label"), np.load(in_test_fixture / "labels.npy"))


def test_cli_report_gives_the_fixture_mae(in_test_fixture, tmp_path):
    out = tmp_path / "report"
    run = CliRunner().invoke(main, ["test", "-model", "test.prototxt", "-weights", "weights.caffemodel",
                                    "-iterations", "3", "--report", str(out)])
    assert run.exit_code == 0, run.output
    assert f"report: {out / 'report.html'}" in run.output
    data = json.loads((out / "report.json").read_text())
    assert data["metrics"]["mae"] == pytest.approx(10.338613, abs=1e-5)
    assert data["metrics"]["rmse"] == pytest.approx(12.001602, abs=1e-5)
    assert data["caffe_test"]["batch_loss"] == pytest.approx([4.75373, 5.29693, 5.19962], rel=1e-5)


def test_missing_weights_is_one_clear_line(in_test_fixture):
    run = CliRunner().invoke(main, ["test", "--model", "test.prototxt", "--weights", "nope.caffemodel"])
    assert run.exit_code == 1
    assert "caffe-compat: error: --weights nope.caffemodel: no such file" in run.output
    assert "Traceback" not in run.output


def _without_layers(in_test_fixture, tmp_path, *names: str) -> Path:
    """test.prototxt minus the named layers, with its data paths made absolute."""
    text = (in_test_fixture / "test.prototxt").read_text()
    for name in names:
        text = re.sub(r'layer \{\s*name: "%s".*?\n\}\n' % name, "", text, flags=re.S)
    model = tmp_path / "edited.prototxt"
    model.write_text(text.replace('"mean.binaryproto"', f'"{in_test_fixture / "mean.binaryproto"}"')
                     .replace('"test_lmdb"', f'"{in_test_fixture / "test_lmdb"}"'))
    return model


def test_report_derives_prob_from_softmax_with_loss(in_test_fixture, tmp_path):
    # A train_val-style net without a Softmax 'prob' layer: the report uses the loss's softmax.
    model = _without_layers(in_test_fixture, tmp_path, "prob")
    run = CliRunner().invoke(main, ["test", "--model", str(model), "--weights", "weights.caffemodel",
                                    "--iterations", "3", "--report", str(tmp_path / "r")])
    assert run.exit_code == 0, run.output
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["metrics"]["mae"] == pytest.approx(10.338613, abs=1e-5)


def test_report_needs_prob_or_softmax_loss(in_test_fixture, tmp_path):
    model = _without_layers(in_test_fixture, tmp_path, "prob", "loss")
    run = CliRunner().invoke(main, ["test", "--model", str(model), "--weights", "weights.caffemodel",
                                    "--iterations", "1", "--report", str(tmp_path / "r")])
    assert run.exit_code == 1
    assert "no Softmax, SoftmaxWithLoss, one-output EuclideanLoss" in run.output and "Traceback" not in run.output
    assert not (tmp_path / "r").exists()
