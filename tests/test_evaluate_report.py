"""The report's table, numbers, CSV round trip, galleries and files (no net involved)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.report import REPORT_FILES, expected_scores, write_report
from caffe_compat.report.galleries import caption, select_galleries
from caffe_compat.report.metrics import all_metrics, flag_table, unit_of
from caffe_compat.report.predictions import (LabelMap, default_labels, from_probabilities, from_regression,
                                             parse_labels, read_csv, to_csv)


def _fixture_predictions(fixtures, decode="expectation"):
    prob = np.load(fixtures / "test" / "probs.npy")
    labels = np.load(fixtures / "test" / "labels.npy")
    keys = [f"k{i}" for i in range(len(labels))]
    return prob, labels, from_probabilities(prob, labels, keys, np.arange(len(labels)), default_labels(40), decode)


def test_metrics_equal_an_independent_recomputation_from_the_fixture_probabilities(fixtures):
    prob, labels, pred = _fixture_predictions(fixtures)
    summary = json.loads((fixtures / "test" / "summary.json").read_text())
    # independent: plain numpy on the pycaffe probabilities of the real `caffe test` fixture
    expected = prob.astype(np.float64) @ np.arange(60, 100, dtype=np.float64)
    truth = 60.0 + labels
    m = all_metrics(pred)
    assert m["mode"] == "score" and m["samples"] == 12
    assert abs(m["mae"] - np.mean(np.abs(expected - truth))) < 1e-9
    assert abs(m["exact_rate"] - np.mean(np.round(expected) == truth)) < 1e-9
    assert abs(m["within"]["5"] - np.mean(np.abs(expected - truth) <= 5)) < 1e-9
    assert m["mae"] == pytest.approx(10.338613, abs=1e-6) and m["rmse"] == pytest.approx(12.001602, abs=1e-6)
    np.testing.assert_allclose(expected_scores(prob), summary["expected_scores"], rtol=1e-6)
    assert m["top1_accuracy"] == 0.0
    assert m["mae_argmax"] == pytest.approx(np.mean(np.abs(np.array(summary["argmax_scores"]) - summary["true_scores"])))
    assert sum(r["count"] for r in m["per_class"]) == 12
    assert np.asarray(m["confusion"]["matrix"]).sum() == 12


def test_perfect_one_hot_predictions():
    labels = np.array([0, 5, 39, 12])
    pred = from_probabilities(np.eye(40)[labels], labels, list("abcd"), np.arange(4), default_labels(40))
    m = all_metrics(pred)
    assert (m["mae"], m["rmse"], m["exact_rate"], m["within"]["1"], m["top1_accuracy"]) == (0, 0, 1, 1, 1)
    assert m["pearson"] == pytest.approx(1.0)


def test_exact_and_within_count_rounded_expected_scores():
    # Half the mass on 70 and 72 -> expected 71: exact for a 71, within 5 of a 75, not of a 77.
    prob = np.zeros((3, 40))
    prob[:, 10] = prob[:, 12] = 0.5
    pred = from_probabilities(prob, np.array([11, 15, 17]), list("abc"), np.arange(3), default_labels(40))
    m = all_metrics(pred)
    assert m["exact_rate"] == pytest.approx(1 / 3) and m["within"]["5"] == pytest.approx(2 / 3)
    assert m["pearson"] is None  # constant prediction: no NaN in JSON


def test_argmax_and_both_decodings(fixtures):
    prob, labels, _ = _fixture_predictions(fixtures)
    _, _, argmax = _fixture_predictions(fixtures, "argmax")
    _, _, both = _fixture_predictions(fixtures, "both")
    values = 60.0 + prob.argmax(axis=1)
    assert all_metrics(argmax)["mae"] == pytest.approx(np.mean(np.abs(values - 60 - labels)), abs=1e-12)
    m = all_metrics(both)
    assert m["mae"] == pytest.approx(10.338613, abs=1e-6)  # the expectation leads
    assert m["argmax_decode"]["mae"] == all_metrics(argmax)["mae"]


def test_regression_metrics_equal_numpy():
    rng = np.random.default_rng(5)
    labels = rng.integers(100, 500, 50).astype(float)
    values = labels * 0.01 + rng.normal(0, 0.3, 50)
    pred = from_regression(values[:, None], labels, [str(i) for i in range(50)], np.arange(50), label_scale=0.01)
    m = all_metrics(pred)
    truth = labels * 0.01
    assert m["mode"] == "regression" and unit_of(pred) == 0.1
    assert m["mae"] == pytest.approx(np.mean(np.abs(values - truth)), abs=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((values - truth) ** 2)), abs=1e-12)
    assert m["pearson"] == pytest.approx(np.corrcoef(values, truth)[0, 1], abs=1e-12)
    assert m["within"]["3"] == pytest.approx(np.mean(np.abs(values - truth) <= 0.3))


def test_classification_report_has_no_score_axis():
    rng = np.random.default_rng(1)
    prob = rng.dirichlet(np.ones(10), 30)
    labels = rng.integers(0, 10, 30)
    pred = from_probabilities(prob, labels, [f"d{i}" for i in range(30)], np.arange(30), default_labels(10))
    m = all_metrics(pred)
    assert pred.mode == "classification" and m["mode"] == "classification"
    assert m["accuracy"] == pytest.approx(np.mean(prob.argmax(1) == labels))
    top5 = np.argsort(-prob, axis=1)[:, :5]
    assert m["top5_accuracy"] == pytest.approx(np.mean((top5 == labels[:, None]).any(1)))
    for row in m["per_class"]:
        c = row["index"]
        if row["predicted"]:
            assert row["precision"] == pytest.approx(np.mean(labels[prob.argmax(1) == c] == c))
        assert row["count"] == int((labels == c).sum())


def test_parse_labels(tmp_path):
    assert parse_labels("60:99", 40).values[0] == 60 and len(parse_labels("60:99", 40)) == 40
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    assert parse_labels(str(tmp_path / "names.txt"), 2).names == ("cat", "dog")
    (tmp_path / "values.txt").write_text("1\n2.5\n")
    assert parse_labels(str(tmp_path / "values.txt"), 2).values == (1.0, 2.5)
    with pytest.raises(CaffeCompatError, match="gives 30 classes but the net's output has 40"):
        parse_labels("60:89", 40)
    with pytest.raises(CaffeCompatError, match="neither LO:HI"):
        parse_labels(str(tmp_path / "missing.txt"), 2)
    assert default_labels(10) is None


def test_labels_outside_the_class_count_are_a_clear_error():
    with pytest.raises(CaffeCompatError, match="record 'b': label 12 is not a class index 0..9"):
        from_probabilities(np.ones((2, 10)) / 10, np.array([1, 12]), ["a", "b"], np.arange(2), None)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**31 - 1), st.sampled_from(["score", "regression", "classification"]))
def test_the_csv_gives_back_the_same_report_numbers(tmp_path_factory, n, seed, mode):
    rng = np.random.default_rng(seed)
    keys = [f"key,{i} \"q\"" for i in range(n)]  # commas and quotes survive the CSV
    if mode == "regression":
        pred = from_regression(rng.normal(3, 1, (n, 1)), rng.integers(100, 500, n), keys, np.arange(n), 0.01)
    else:
        k = 40 if mode == "score" else 7
        pred = from_probabilities(rng.dirichlet(np.ones(k), n), rng.integers(0, k, n), keys, np.arange(n) * 2,
                                  default_labels(k))
    flags = [tuple(f for f in ("blur", "dark") if rng.random() < 0.5) for _ in range(n)]
    pred = pred.with_flags(flags)
    path = tmp_path_factory.getbasetemp() / "roundtrip.csv"
    path.write_text(to_csv(pred))
    back = read_csv(path)
    assert back.mode == pred.mode and back.keys == pred.keys and back.flags == pred.flags
    np.testing.assert_array_equal(back.index, pred.index)
    assert json.dumps(all_metrics(back)) == json.dumps(all_metrics(pred))
    assert flag_table(back) == flag_table(pred)


def test_galleries_show_the_smallest_and_largest_errors():
    truth = np.array([70, 71, 72, 73, 74, 75, 76], float)
    prediction = np.array([70.2, 73.9, 72.0, 74.1, 60.0, 75.6, 86.0])
    labels = (truth - 60).astype(int)
    prob = np.zeros((7, 40))
    prob[np.arange(7), labels] = 1  # only for the table's shape; prediction is set below
    pred = from_probabilities(prob, labels, [f"s{i}" for i in range(7)], np.arange(7), default_labels(40))
    from dataclasses import replace

    pred = replace(pred, prediction=prediction).with_flags([(), ("blur",), (), ("blur",), (), (), ("dark",)])
    galleries = {g.id: g.rows for g in select_galleries(pred)}
    assert galleries["best0"] == (2, 0)  # errors 0.0 and 0.2, smallest first
    assert galleries["best1"] == (5, 3)  # 0.6 and 1.1 round to 1
    assert galleries["worst"][:2] == (4, 6)  # 14 and 10 points off
    assert galleries["flag-blur"] == (1, 3) and galleries["flag-dark"] == (6,)
    assert caption(pred, 4) == "gt 74 / pred 60.0 (error -14.0)"
    weak = {g.id: g.rows for g in select_galleries(replace(pred, prediction=truth + np.arange(7) + 3.0))}
    assert weak["best0"] == weak["best1"] == () and weak["best"][0] == 0  # no error 0 or 1: the smallest anyway


def test_write_report_writes_the_four_files_self_contained(tmp_path, fixtures):
    _, _, pred = _fixture_predictions(fixtures)
    page = write_report(tmp_path / "rep", pred, info=[("model", "m")], extra={"loss": 5.08343})
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == sorted(REPORT_FILES)
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["metrics"]["mae"] == pytest.approx(10.338613, abs=1e-6) and data["loss"] == 5.08343
    html = page.read_text()
    assert_self_contained(html)
    assert "10.3386" in html and "give --source" in html  # no pictures without a source
    assert "MAE 10.3386 score points on 12 samples" in (tmp_path / "rep" / "report.md").read_text()


def assert_self_contained(html: str) -> list[bytes]:
    """Every src of the page is a non-empty data: URI that decodes to a PNG or a JPEG."""
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and not re.search(r'(href|url)\(?="?(?!data:)[a-z]+:', html)
    pictures = []
    for src in sources:
        head, _, data = src.partition(",")
        assert head in ("data:image/png;base64", "data:image/jpeg;base64"), src[:40]
        raw = base64.b64decode(data, validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" or raw[:3] == b"\xff\xd8\xff"
        assert len(raw) > 100
        pictures.append(raw)
    return pictures


def test_report_command_rerenders_from_the_csv(tmp_path, fixtures):
    _, _, pred = _fixture_predictions(fixtures)
    write_report(tmp_path / "a", pred)
    run = CliRunner().invoke(main, ["report", str(tmp_path / "a" / "predictions.csv"), "-o", str(tmp_path / "b")])
    assert run.exit_code == 0, run.output
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert a["metrics"] == b["metrics"] and a["galleries"] == b["galleries"]


@pytest.mark.parametrize("header", ["key,label,expectation,argmax", "index,key,label", "what,ever"])
def test_csv_with_missing_columns_is_one_line_and_writes_nothing(tmp_path, header):
    (tmp_path / "p.csv").write_text(header + "\n" + ",".join("1" * len(header.split(","))) + "\n")
    run = CliRunner().invoke(main, ["report", str(tmp_path / "p.csv"), "-o", str(tmp_path / "out")])
    assert run.exit_code == 1
    lines = run.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caffe-compat: error: ") and "missing column" in lines[0]
    assert not (tmp_path / "out").exists()


def test_label_map_names_make_a_classifier(tmp_path):
    label_map = LabelMap(names=("cat", "dog", "fish"))
    pred = from_probabilities(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), np.array([0, 1]), ["a", "b"],
                              np.arange(2), label_map)
    page = write_report(tmp_path / "r", pred)
    html = page.read_text()
    assert pred.mode == "classification" and "accuracy (top-1)" in html and "human score" not in html
    assert "gt dog / pred fish 0.80" in html
    assert read_csv(tmp_path / "r" / "predictions.csv").label_map.names == ("cat", "dog", "fish")
