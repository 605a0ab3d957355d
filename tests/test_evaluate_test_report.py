"""`caffe-compat test --report` on the real `caffe test` fixture: every record once with its key,
the Caffe lines unchanged, regression, mirror, ONNX, the HTML page, and bad input."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.data.lmdb_dataset import LMDBDataset
from caffe_compat.evaluate import ReportOptions, run_test, write_test_report
from caffe_compat.io.caffemodel import write_caffemodel
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.net.builder import CaffeNet, load_net
from caffe_compat.net.registry import TEST
from caffe_compat.solver.caffe_log import CaffeLog
from test_evaluate_caffe_test import _result_lines, _split
from test_evaluate_report import assert_self_contained


@pytest.fixture
def fx(fixtures, monkeypatch):
    monkeypatch.chdir(fixtures / "test")
    return fixtures / "test"


def _edit(fx: Path, tmp_path: Path, batch: int = 4, name: str = "edited.prototxt", **swap: str) -> Path:
    """test.prototxt with absolute data paths, another batch size and text swapped."""
    text = (fx / "test.prototxt").read_text()
    for old, new in swap.values():
        assert old in text
        text = text.replace(old, new)
    text = (text.replace('"mean.binaryproto"', f'"{fx / "mean.binaryproto"}"')
            .replace('"test_lmdb"', f'"{fx / "test_lmdb"}"').replace("batch_size: 4", f"batch_size: {batch}"))
    (tmp_path / name).write_text(text)
    return tmp_path / name


def _run(model, iterations, **kwargs):
    stream = io.StringIO()
    result = run_test(model, "weights.caffemodel", iterations, log=CaffeLog(stream=stream),
                      report=kwargs.pop("report", ReportOptions()), **kwargs)
    return result, stream.getvalue()


def test_report_run_keeps_caffes_lines(fx):
    result, text = _run("test.prototxt", 3)
    ours, theirs = _result_lines(text), _result_lines((fx / "caffe_test.log").read_text())
    assert len(ours) == len(theirs) == 3 * (3 + 160) + 1 + 3 + 160
    for mine, ref in zip(ours, theirs):
        assert _split(mine)[::2] == _split(ref)[::2]
        assert _split(mine)[1] == pytest.approx(_split(ref)[1], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("batch, iterations", [(5, 1), (5, 9), (7, 3), (13, 1), (1, 2)])
def test_every_record_is_scored_once_with_its_key(fx, tmp_path, batch, iterations):
    # 12 records: batches of 5, 7 or 13 wrap around; Caffe's N batches would score some twice or miss some.
    result, text = _run(_edit(fx, tmp_path, batch), iterations)
    samples = result.samples
    np.testing.assert_array_equal(samples.index, np.arange(12))
    assert samples.keys == [k.decode() for k in LMDBDataset(fx / "test_lmdb").keys]
    np.testing.assert_allclose(samples.outputs, np.load(fx / "probs.npy"), atol=1e-6)  # pycaffe's, row by row
    np.testing.assert_array_equal(samples.labels, np.load(fx / "labels.npy"))
    assert len(result.batches) == iterations and f"Running for {iterations} iterations." in text
    assert len(re.findall(r"Batch \d+, loss =", text)) == iterations  # no lines for the report's extra batches


def test_all_runs_as_many_batches_as_cover_the_source(fx, tmp_path):
    result, text = _run(_edit(fx, tmp_path, 5), None)
    assert "Running for 3 iterations." in text and len(result.batches) == 3 and len(result.samples.keys) == 12


def test_image_data_source_keys_are_the_list_paths(fx, tmp_path):
    model = _edit(fx, tmp_path, kind=('type: "Data"', 'type: "ImageData"'),
                  param=('data_param { source: "test_lmdb" batch_size: 4 backend: LMDB }',
                         f'image_data_param {{ source: "{fx / "test_list.txt"}" root_folder: "{fx / "images"}/" '
                         'batch_size: 5 new_height: 20 new_width: 20 }'))
    result, _ = _run(model, 1)
    names = [line.rsplit(" ", 1)[0] for line in (fx / "test_list.txt").read_text().splitlines()]
    assert result.samples.keys == names
    assert result.samples.outputs.shape == (12, 40)


def test_mirror_averages_with_the_flipped_input(fx):
    result, _ = _run("test.prototxt", 1, mirror=True)
    net = load_net("test.prototxt", TEST, "weights.caffemodel")
    data, labels = torch.from_numpy(np.load(fx / "data.npy")), torch.from_numpy(np.load(fx / "labels.npy")).float()
    with torch.no_grad():
        plain = net.run({"data": data, "label": labels}).blobs["prob"]
        flipped = net.run({"data": data.flip(-1), "label": labels}).blobs["prob"]
    want = ((plain + flipped) / 2).numpy()
    np.testing.assert_allclose(result.samples.outputs, want, atol=1e-6)
    assert not np.allclose(plain.numpy(), want, atol=1e-3)  # the mirror changed something


def test_bf16_and_channels_last_score_every_record_on_the_cpu(fx):
    plain, _ = _run("test.prototxt", 1)
    fast, _ = _run("test.prototxt", 1, bf16=True, channels_last=True)
    np.testing.assert_array_equal(fast.samples.index, np.arange(12))
    np.testing.assert_allclose(fast.samples.outputs, plain.samples.outputs, atol=0.05)


def test_cli_report_html_is_self_contained_with_the_right_galleries(fx, tmp_path):
    out = tmp_path / "rep"
    run = CliRunner().invoke(main, ["test", "-model", "test.prototxt", "-weights", "weights.caffemodel",
                                    "-iterations", "1", "--report", str(out)])
    assert run.exit_code == 0, run.output
    html = (out / "report.html").read_text()
    pictures = assert_self_contained(html)
    cards = re.findall(r'<div class=card data-row="(\d+)">(?:<div class=pic>)?(<img[^>]*>)?', html)
    assert cards and all(img for _, img in cards)  # every gallery card has its thumbnail
    charts = set(re.findall(r'id="chart-([a-z_]+)"', html))
    assert charts == {"histograms", "scatter", "errors", "within", "per_class", "confusion"}
    assert len(pictures) == len(cards) + len(charts)
    rows = list(__import__("csv").DictReader((out / "predictions.csv").open()))
    errors = {r["key"]: abs(float(r["prediction"]) - float(r["ground_truth"])) for r in rows}
    data = json.loads((out / "report.json").read_text())
    worst = data["galleries"]["worst"]
    assert worst[0] == max(errors, key=errors.get) and errors[worst[0]] >= errors[worst[-1]]
    best = data["galleries"]["best0"] + data["galleries"]["best1"]
    assert best[0] == min(errors, key=errors.get)  # the smallest error (1.15 points) leads the best cases
    assert len(rows) == 12 and {r["key"] for r in rows} == set(errors)


def test_cli_report_metrics_equal_a_recomputation_from_the_fixture(fx, tmp_path):
    run = CliRunner().invoke(main, ["test", "-model", "test.prototxt", "-weights", "weights.caffemodel",
                                    "-iterations", "1", "--report", str(tmp_path / "r"), "--no-face-flags"])
    assert run.exit_code == 0, run.output
    m = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]
    expected = np.load(fx / "probs.npy").astype(np.float64) @ np.arange(60, 100)
    truth = 60.0 + np.load(fx / "labels.npy")
    assert m["mae"] == pytest.approx(np.abs(expected - truth).mean(), abs=1e-5)  # float32 forward vs pycaffe's
    assert m["exact_rate"] == np.mean(np.round(expected) == truth)
    assert m["within"]["5"] == np.mean(np.abs(expected - truth) <= 5)


REGRESSION = """
name: "regress"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { crop_size: 16 mean_file: "MEAN" scale: 0.0125 }
  data_param { source: "SOURCE" batch_size: 5 backend: LMDB } }
layer { name: "fc_score" type: "InnerProduct" bottom: "data" top: "fc_score"
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.05 }
                        bias_filler { type: "constant" value: 0.2 } } }
layer { name: "label_score" type: "Power" bottom: "label" top: "label_score" power_param { scale: 0.01 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc_score" bottom: "label_score" top: "loss" }
"""


@pytest.fixture
def regression_net(fx, tmp_path):
    text = REGRESSION.replace("MEAN", str(fx / "mean.binaryproto")).replace("SOURCE", str(fx / "test_lmdb"))
    (tmp_path / "regress.prototxt").write_text(text)
    torch.manual_seed(3)
    write_caffemodel(tmp_path / "regress.caffemodel", CaffeNet(parse_net_text(text), TEST).to_net_parameter())
    return tmp_path / "regress.prototxt", tmp_path / "regress.caffemodel"


def test_regression_report_pc_mae_rmse_equal_numpy(fx, tmp_path, regression_net):
    model, weights = regression_net
    run = CliRunner().invoke(main, ["test", "--model", str(model), "--weights", str(weights), "--iterations", "1",
                                    "--report", str(tmp_path / "r"), "--label-scale", "0.01"])
    assert run.exit_code == 0, run.output
    rows = list(__import__("csv").DictReader((tmp_path / "r" / "predictions.csv").open()))
    pred = np.array([float(r["prediction"]) for r in rows])
    truth = np.array([float(r["ground_truth"]) for r in rows])
    np.testing.assert_allclose(truth, np.load(fx / "labels.npy") * 0.01)
    net = load_net(model, TEST, weights)
    with torch.no_grad():
        want = net.run({"data": torch.from_numpy(np.load(fx / "data.npy")),
                        "label": torch.zeros(12)}).blobs["fc_score"].numpy().reshape(-1)
    np.testing.assert_allclose(pred, want, atol=1e-6)  # every record once, in order
    m = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]
    assert m["mode"] == "regression" and m["samples"] == 12
    assert m["pearson"] == pytest.approx(np.corrcoef(pred, truth)[0, 1], abs=1e-12)
    assert m["mae"] == pytest.approx(np.mean(np.abs(pred - truth)), abs=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((pred - truth) ** 2)), abs=1e-12)
    html = (tmp_path / "r" / "report.html").read_text()
    assert "PC" in html and "top-1" not in html


def test_regression_mirror(fx, tmp_path, regression_net):
    model, weights = regression_net
    result = run_test(model, weights, 1, log=CaffeLog(stream=io.StringIO()), report=ReportOptions(label_scale=0.01),
                      mirror=True)
    net = load_net(model, TEST, weights)
    data = torch.from_numpy(np.load(fx / "data.npy"))
    with torch.no_grad():
        both = [net.run({"data": d, "label": torch.zeros(12)}).blobs["fc_score"] for d in (data, data.flip(-1))]
    np.testing.assert_allclose(result.samples.outputs[:, 0], ((both[0] + both[1]) / 2).numpy().reshape(-1), atol=1e-6)


DEPLOY_HEAD = 'name: "deploy"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }\n'


def test_onnx_report_equals_the_caffe_report(fx, tmp_path):
    from caffe_compat.evaluate import score_onnx
    from caffe_compat.onnx.export import export_onnx

    text = (fx / "test.prototxt").read_text()
    trunk = text[text.index('layer {\n  name: "conv1"'):text.index('layer {\n  name: "loss"')]
    (tmp_path / "deploy.prototxt").write_text(DEPLOY_HEAD + trunk)
    export_onnx(tmp_path / "deploy.prototxt", "weights.caffemodel", tmp_path / "m.onnx")
    for mirror in (False, True):
        caffe, _ = _run("test.prototxt", 1, mirror=mirror)
        onnx = score_onnx(tmp_path / "m.onnx", "test_lmdb", mean_file="mean.binaryproto", scale=0.0125, batch_size=5,
                          mirror=mirror)
        assert onnx.keys == caffe.samples.keys and onnx.kind == "prob"
        np.testing.assert_allclose(onnx.outputs, caffe.samples.outputs, atol=1e-5)
        np.testing.assert_array_equal(onnx.labels, caffe.samples.labels)
    run = CliRunner().invoke(main, ["test", "--onnx", str(tmp_path / "m.onnx"), "--source", "test_lmdb",
                                    "--mean-file", "mean.binaryproto", "--scale", "0.0125", "--report",
                                    str(tmp_path / "onnx"), "--no-face-flags", "--mirror"])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "onnx" / "predictions.csv").read_text().count("\n") == 13


@pytest.fixture
def empty_lmdb(tmp_path):
    env = lmdb.open(str(tmp_path / "empty_lmdb"), map_size=1 << 20)
    env.close()
    return tmp_path / "empty_lmdb"


@pytest.mark.parametrize("case", ["missing blob", "labels count", "label names count", "empty source",
                                  "label scale on classes", "labels on regression"])
def test_bad_input_is_one_line_and_writes_nothing(fx, tmp_path, case, empty_lmdb, regression_net):
    (tmp_path / "names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    model, extra = "test.prototxt", []
    if case == "missing blob":
        extra = ["--output-blob", "scores"]
    elif case == "labels count":
        extra = ["--labels", "60:89"]
    elif case == "label names count":
        extra = ["--labels", str(tmp_path / "names.txt")]
    elif case == "empty source":
        model = str(_edit(fx, tmp_path, src=('"test_lmdb"', f'"{empty_lmdb}"')))
    elif case == "label scale on classes":
        extra = ["--label-scale", "0.01"]
    else:
        model, extra = str(regression_net[0]), ["--labels", "60:99"]
    weights = str(regression_net[1]) if model == str(regression_net[0]) else "weights.caffemodel"
    out = tmp_path / "out"
    run = CliRunner().invoke(main, ["test", "--model", model, "--weights", weights, "--report", str(out), *extra])
    assert run.exit_code == 1, run.output
    errors = [line for line in run.output.splitlines() if line.startswith("caffe-compat: error: ")]
    assert len(errors) == 1 and "Traceback" not in run.output, run.output
    assert not out.exists()
    expected = {"missing blob": "no output blob 'scores'", "labels count": "gives 30 classes but the net's output has 40",
                "label names count": "gives 10 classes", "empty source": "empty",
                "label scale on classes": "--label-scale is for one-output regression nets",
                "labels on regression": "one value per sample"}[case]
    assert expected in errors[0]


def test_report_into_a_folder_that_is_a_file_writes_nothing(fx, tmp_path):
    (tmp_path / "taken").write_text("keep me")
    run = CliRunner().invoke(main, ["test", "--model", "test.prototxt", "--weights", "weights.caffemodel",
                                    "--report", str(tmp_path / "taken"), "--no-face-flags"])
    assert run.exit_code != 0 and (tmp_path / "taken").read_text() == "keep me"


def test_progress_bars_and_log_lines_share_stderr(fx, tmp_path):
    run = CliRunner().invoke(main, ["test", "-model", "test.prototxt", "-weights", "weights.caffemodel",
                                    "-iterations", "1", "--report", str(tmp_path / "r"), "--progress"])
    assert run.exit_code == 0, run.output
    assert re.search(r"test: 100%.*3/3", run.output) and re.search(r"quality flags: 100%.*12/12", run.output)
    assert "caffe.cpp:309] Loss:" in run.output


def test_label_names_give_a_plain_classification_report(fx, tmp_path):
    (tmp_path / "names.txt").write_text("".join(f"class {i}\n" for i in range(40)))
    run = CliRunner().invoke(main, ["test", "-model", "test.prototxt", "-weights", "weights.caffemodel", "-iterations",
                                    "1", "--report", str(tmp_path / "r"), "--labels", str(tmp_path / "names.txt")])
    assert run.exit_code == 0, run.output
    m = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]
    probs, labels = np.load(fx / "probs.npy"), np.load(fx / "labels.npy")
    assert m["mode"] == "classification" and m["accuracy"] == np.mean(probs.argmax(1) == labels)
    text = re.sub(r'"data:[^"]*"', "", (tmp_path / "r" / "report.html").read_text())  # the words, not the pictures
    assert "human score" not in text and "MAE" not in text and "gt class 6 / pred class" in text
