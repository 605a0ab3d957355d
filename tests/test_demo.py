"""`caffe-compat demo`: the step runner, the synthetic set and its server, and (slow) a tiny full run."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.workflow import synthetic
from caffe_compat.demo import DemoConfig, Step, missing_requirement, run_demo, run_steps


def test_missing_requirement_names_what_is_missing():
    assert missing_requirement("caffe_compat.report:write_report") is None
    assert missing_requirement("caffe_compat.no_such_module:f") == "caffe_compat.no_such_module is missing"
    assert missing_requirement("caffe_compat.report:no_such_function") == "caffe_compat.report.no_such_function is missing"


def test_runner_says_not_yet_available_skips_dependents_and_never_raises():
    ran: list[str] = []
    lines: list[str] = []

    def ok(name):
        return lambda ctx: ran.append(name)

    def boom(ctx):
        raise CaffeCompatError("data/x.txt:3: bad line")

    steps = [
        Step("a", ok("a")),
        Step("b", ok("b"), needs=("caffe_compat.not_written_yet:step",)),
        Step("c", ok("c"), after=("b",)),
        Step("d", boom),
        Step("e", ok("e"), after=("d",)),
        Step("f", ok("f"), after=("a",)),
    ]
    result = run_steps(steps, {}, lines.append)
    assert ran == ["a", "f"]
    assert [o.status for o in result.outcomes] == ["done", "not yet available", "skipped", "FAILED", "skipped", "done"]
    assert "not yet available: b (caffe_compat.not_written_yet is missing)" in lines
    assert "FAILED: d: data/x.txt:3: bad line" in lines
    assert not result.ok
    assert "not yet available" in result.table()


@settings(max_examples=50, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 0.5), st.integers(0, 2))
def test_score_grows_with_every_visible_feature(eyes, smile, clarity, more, which):
    base = [eyes, smile, clarity]
    better = list(base)
    better[which] = min(1.0, better[which] + more)
    low, high = synthetic.rated_score(*base, noise=0.0), synthetic.rated_score(*better, noise=0.0)
    assert synthetic.SCORE_MIN <= low <= high <= synthetic.SCORE_MAX


def test_synthetic_sheet_served_and_cleaned(tmp_path):
    from caffe_compat.workflow.annotations import clean_annotations

    videos = synthetic.plan_videos(6, seed=3)
    assert len(videos) == 6 + len(synthetic.NOISY_REMARKS) + 1
    synthetic.render_videos(tmp_path / "served", videos, frames=5, size=32, seed=3)
    deleted = next(v for v in videos if v.remark == "已删除")
    assert not (tmp_path / "served" / f"{deleted.video_id}.mp4").exists()
    assert len(list((tmp_path / "served").glob("*.mp4"))) == len(videos) - 1
    with synthetic.serve(tmp_path / "served") as base:
        synthetic.write_sheet(tmp_path / "sheet.csv", videos, base)
        page = next(v for v in videos if v.url_kind == "page")
        html = urllib.request.urlopen(synthetic.video_url(base, page)).read().decode()
        assert f'<video src="/media/{page.video_id}.mp4"' in html
        og = next(v for v in videos if v.url_kind == "og")
        assert f'property="og:video" content="{base}/media/{og.video_id}.mp4"' in \
            urllib.request.urlopen(synthetic.video_url(base, og)).read().decode()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(synthetic.video_url(base, deleted))
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{base}/media/..%2Fsheet.csv")
    result = clean_annotations(tmp_path / "sheet.csv", tmp_path / "clean.csv")
    assert len(result.rows) == 6  # the harmless remark 光线较暗 is kept
    assert {r: result.excluded[r] for r in synthetic.NOISY_REMARKS} == dict.fromkeys(synthetic.NOISY_REMARKS, 1)
    assert sum(result.excluded.values()) == len(synthetic.NOISY_REMARKS) + 1


def test_demo_command_is_registered():
    run = CliRunner().invoke(main, ["demo", "--help"])
    assert run.exit_code == 0 and "--out" in run.output


TINY = DemoConfig(videos=12, video_frames=40, video_size=64, every=10, max_frames=4, train_per_class=4,
                  val_per_class=2, resize=36, crop=32, train_batch=4, val_batch=2, iterations=2)


def test_tiny_demo_leaves_every_artefact(tmp_path, nsfw_dir):
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", TINY, echo=lines.append)
    assert result.ok, result.table()
    status = {o.name: o.status for o in result.outcomes}
    assert all(s == "done" for s in status.values()), result.table()
    out = tmp_path / "demo"
    for rel in ("data/train_lmdb/data.mdb", "data/val_lmdb/data.mdb", "data/mean.binaryproto", "train.log",
                "train_loss.png", "snapshots/demo_iter_2.caffemodel", "report/report.html", "distribution.png",
                "lists/train.txt", "lists/val.txt", "test.log", "model.onnx"):
        assert (out / rel).is_file(), rel
    assert f"report: {out / 'report' / 'report.html'}" in lines
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["metrics"]["samples"] == sum(1 for _ in (out / "lists" / "val.txt").open())
    check_demo_report(out / "report")
    assert "Iteration 2, loss" in (out / "train.log").read_text()


def check_demo_report(folder):
    """The demo's report.html: every picture embedded and non-empty, galleries of the right samples."""
    import csv
    import re

    from test_evaluate_report import assert_self_contained

    html = (folder / "report.html").read_text()
    pictures = assert_self_contained(html)
    cards = re.findall(r'<div class=card data-row="\d+">(?:<div class=pic>)?(<img[^>]*>)?', html)
    assert cards and all(cards) and len(pictures) == len(cards) + html.count('id="chart-')
    notes = json.loads((folder / "report.json").read_text())["notes"]
    assert any(n.startswith("faces found with dlib") for n in notes)  # face flags on by default
    errors = {r["key"]: abs(float(r["prediction"]) - float(r["ground_truth"]))
              for r in csv.DictReader((folder / "predictions.csv").open())}
    galleries = json.loads((folder / "report.json").read_text())["galleries"]
    assert errors[galleries["worst"][0]] == max(errors.values())
    assert errors[(galleries["best0"] + galleries["best1"] + galleries.get("best", []))[0]] == min(errors.values())
