"""The face-score report: metrics from the `prob` blob, and the HTML/PNG/JSON it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.errors import CaffeCompatError
from caffe_compat.report import expected_scores, score_metrics, write_report


def test_metrics_match_the_real_caffe_test_fixture(fixtures):
    summary = json.loads((fixtures / "test" / "summary.json").read_text())
    prob = np.load(fixtures / "test" / "probs.npy")
    labels = np.load(fixtures / "test" / "labels.npy")
    np.testing.assert_allclose(expected_scores(prob), summary["expected_scores"], rtol=1e-6)
    m = score_metrics(prob, labels)
    assert m.mae == pytest.approx(10.338613, abs=1e-6)
    assert m.rmse == pytest.approx(12.001602, abs=1e-6)
    assert m.top1_accuracy == 0.0
    assert m.mae_argmax == pytest.approx(np.mean(np.abs(np.array(summary["argmax_scores"]) - summary["true_scores"])))


def test_perfect_one_hot_predictions():
    labels = np.array([0, 5, 39, 12])
    prob = np.eye(40)[labels]
    m = score_metrics(prob, labels)
    assert (m.mae, m.rmse, m.exact_hit_rate, m.within5_rate, m.top1_accuracy) == (0, 0, 1, 1, 1)
    assert m.pearson == pytest.approx(1.0)


def test_hit_and_within5_rates_count_rounded_expected_scores():
    # Half the mass on 70 and 72 -> expected 71: a hit for a 71, within 5 of a 75, not of a 77.
    prob = np.zeros((3, 40))
    prob[:, 10] = prob[:, 12] = 0.5
    m = score_metrics(prob, np.array([11, 15, 17]))
    assert m.exact_hit_rate == pytest.approx(1 / 3)
    assert m.within5_rate == pytest.approx(2 / 3)
    assert m.top1_accuracy == 0.0
    assert np.isnan(m.pearson)  # constant prediction


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_expected_score_stays_within_the_score_range(n, seed):
    rng = np.random.default_rng(seed)
    prob = rng.dirichlet(np.ones(40), size=n)
    labels = rng.integers(0, 40, size=n)
    exp = expected_scores(prob)
    assert np.all((exp >= 60) & (exp <= 99))
    m = score_metrics(prob, labels)
    assert 0 <= m.mae <= m.rmse <= 39


def test_mismatched_rows_are_a_clear_error():
    with pytest.raises(CaffeCompatError, match="one label per prob row"):
        score_metrics(np.ones((3, 40)) / 40, np.array([1, 2]))


def test_write_report_writes_html_png_and_json(tmp_path, fixtures):
    prob = np.load(fixtures / "test" / "probs.npy")
    labels = np.load(fixtures / "test" / "labels.npy")
    page = write_report(tmp_path / "rep", prob, labels, extra={"loss": 5.08343})
    assert page.name == "report.html" and page.is_file()
    assert (tmp_path / "rep" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["metrics"]["mae"] == pytest.approx(10.338613, abs=1e-6)
    assert data["loss"] == 5.08343 and len(data["expected_scores"]) == 12
    html = page.read_text()
    assert "10.3386" in html and 'src="report.png"' in html
    assert not list((tmp_path / "rep").glob(".*tmp"))  # atomic writes left no temp files
