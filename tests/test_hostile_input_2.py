"""Hostile and careless input, round 2 (issue 21): LevelDB, sizes declared by HDF5 files and CSVs,
files that are not regular files, spreadsheet and Markdown injection, link-tools, slow servers, and
the errors that used to say "a bug in caffe-compat". Every bad file is generated here.

The bomb cases run in a subprocess that reports its peak resident memory (``ru_maxrss``), which
must stay under :data:`PEAK_MB`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_hostile_input import cli, one_error, proc_error, run, script

PEAK_MB = 500


# ---------------------------------------------------------------------------- link-tools


def _exe(tmp_path: Path) -> Path:
    exe = tmp_path / "caffe-compat"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return exe


@pytest.mark.parametrize("blocker", ["file", "dangling"])
def test_link_tools_makes_all_links_or_none(tmp_path, blocker):
    tools = tmp_path / "tools"
    tools.mkdir()
    last = tools / "device_query"  # the last name: every other link would come first
    if blocker == "file":
        last.write_text("mine")
    else:
        last.symlink_to(tmp_path / "gone")
    one_error(cli("link-tools", tools, "--target", _exe(tmp_path)), "device_query", "no link was made")
    assert sorted(p.name for p in tools.iterdir()) == ["device_query"]
    result = cli("link-tools", tools, "--target", _exe(tmp_path), "--force")
    assert result.exit_code == 0, result.output
    assert len(list(tools.iterdir())) == 8 and os.path.realpath(last) == str(_exe(tmp_path))


# ---------------------------------------------------------------------------- LevelDB


def _leveldb(path: Path, count: int = 50, compact: bool = False) -> Path:
    import plyvel

    from caffe_compat.data.leveldb import build_leveldb

    rng = np.random.default_rng(0)
    with build_leveldb(path) as db:
        for i in range(count):
            db.put(b"%08d" % i, rng.bytes(3000))
    if compact:
        db = plyvel.DB(str(path))
        db.compact_range()
        db.close()
    return path


def test_convert_db_of_a_leveldb_cut_short_is_an_error_naming_it(tmp_path):
    for name, compact in (("in_log", False), ("in_table", True)):
        db = _leveldb(tmp_path / name, compact=compact)
        files = [f for f in db.iterdir() if f.suffix in (".log", ".ldb") and f.stat().st_size]
        assert files
        for f in files:
            os.truncate(f, f.stat().st_size // 3)
        one_error(cli("convert-db", db, tmp_path / "out"), str(db))
        assert not (tmp_path / "out").exists()
        one_error(cli("convert-db", db, tmp_path / "out"), str(db))  # the first try did not "heal" it


def test_convert_db_of_a_damaged_leveldb_record_is_an_error(tmp_path):
    db = _leveldb(tmp_path / "src")
    log = next(db.glob("*.log"))
    raw = bytearray(log.read_bytes())
    raw[70000] ^= 0xFF
    log.write_bytes(raw)
    one_error(cli("convert-db", db, tmp_path / "out"), str(db), "checksum")


def test_convert_db_compares_what_it_wrote_with_what_it_read(tmp_path, monkeypatch):
    from caffe_compat.data import leveldb
    from caffe_compat.data.lmdb_dataset import count_records

    result = cli("convert-db", _leveldb(tmp_path / "src", 5), tmp_path / "whole")
    assert result.exit_code == 0 and "copied 5 records" in result.output
    assert count_records(tmp_path / "whole") == 5
    records = list(leveldb.iter_leveldb(tmp_path / "src"))
    monkeypatch.setattr(leveldb, "iter_leveldb", lambda path: iter(records + records[:1]))  # a repeated key
    one_error(cli("convert-db", tmp_path / "src", tmp_path / "out"), "read 6 records", "holds 5")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- report: injection

HOSTILE_TEXT = ["=cmd|' /C calc'!A0", "+SUM(A1:A9)", "-2+3", "@SUM(1)", "\tTAB", "\rCR", "'=quoted", "<script>alert(1)</script>",
                '<img src=x onerror="alert(1)">', "[link](javascript:alert(1))", "plain"]


def _hostile_predictions():
    from caffe_compat.report.predictions import LabelMap, from_probabilities

    n = len(HOSTILE_TEXT)
    prob = np.eye(n)[[(i + 1) % n for i in range(n)]] * 0.9 + 0.1 / n
    pred = from_probabilities(prob, np.arange(n), HOSTILE_TEXT, np.arange(n), LabelMap(names=tuple(HOSTILE_TEXT)))
    return pred.with_flags([[text] for text in HOSTILE_TEXT])


def test_predictions_csv_is_safe_in_a_spreadsheet_and_reads_back_unchanged(tmp_path):
    import csv

    from caffe_compat.report import write_report

    write_report(tmp_path / "a", _hostile_predictions())
    rows = list(csv.DictReader((tmp_path / "a" / "predictions.csv").open(newline="")))
    for row in rows:
        for column in ("key", "ground_truth", "argmax", "flags"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\r")), (column, row[column])
    assert [row["key"] for row in rows][:2] == ["'=cmd|' /C calc'!A0", "'+SUM(A1:A9)"]
    result = cli("report", tmp_path / "a" / "predictions.csv", "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "predictions.csv").read_bytes() == (tmp_path / "a" / "predictions.csv").read_bytes()


def test_report_md_escapes_keys_labels_and_flags(tmp_path):
    from caffe_compat.report import write_report

    write_report(tmp_path / "a", _hostile_predictions(), info=[("source", "<b>x</b>")], notes=["<i>note</i>"],
                 title="<script>t</script>")
    text = (tmp_path / "a" / "report.md").read_text()
    assert "alert(1)" in text  # the hostile names are in the tables...
    for raw in ("<script", "<img", "<b>", "<i>", "](javascript"):
        assert re.search(r"(?<!\\)" + re.escape(raw), text) is None, raw  # ...but never as HTML or a link
    assert "\\<script\\>alert(1)\\</script\\>" in text


# ---------------------------------------------------------------------------- report: CSV values

_CLASSIFICATION = "index,key,label,argmax\n{index},{key},{label},{argmax}\n"
_SCORE = "index,key,label,ground_truth,expectation,argmax,prediction\n0,k,{label},{truth},{expectation},70,{expectation}\n"


def _report_peak_mb(csv_path: Path, out: Path) -> tuple[subprocess.CompletedProcess, int]:
    """``caffe-compat report`` in a fresh process, and that process's peak resident memory in MB."""
    proc = script(f"""
        import resource, sys
        from caffe_compat.cli import main
        try:
            main(["report", {str(csv_path)!r}, "-o", {str(out)!r}])
        finally:
            print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)
        """)
    return proc, int(proc.stderr.rsplit("peak ", 1)[1].split()[0])


@pytest.mark.parametrize("text, fragments", [
    (_CLASSIFICATION.format(index=0, key="k", label=0, argmax=2_000_000_000), ("predictions.csv:2", "argmax", "class index")),
    (_CLASSIFICATION.format(index=0, key="k", label=1_000_000_000, argmax=0), ("label", "class index")),
    (_SCORE.format(label=1_000_000_000, truth=1_000_000_060, expectation=70.5), ("label", "class index")),
], ids=["argmax-2e9", "label-1e9", "score-label-1e9"])
def test_report_csv_class_bombs_are_refused_in_little_memory(tmp_path, text, fragments):
    csv_path = tmp_path / "predictions.csv"
    csv_path.write_text(text)
    proc, peak = _report_peak_mb(csv_path, tmp_path / "out")
    proc_error(proc, str(csv_path), *fragments)
    assert peak < PEAK_MB, peak


@pytest.mark.parametrize("text, fragments", [
    (_CLASSIFICATION.format(index=0, key="k", label=-3, argmax=0), ("label", "class index")),
    (_CLASSIFICATION.format(index=2**64, key="k", label=0, argmax=0), ("index", "2^63")),
    (_CLASSIFICATION.format(index=-1, key="k", label=0, argmax=0), ("index",)),
    (_CLASSIFICATION.format(index=0, key="x" * (200 << 10), label=0, argmax=0), ("predictions.csv:2", "field")),
    (_SCORE.format(label=10, truth=70, expectation="nan"), ("expectation", "finite")),
    (_SCORE.format(label=10, truth="inf", expectation=70.5), ("ground_truth", "finite")),
], ids=["negative-class", "index-past-int64", "negative-index", "field-200KiB", "nan", "inf"])
def test_report_csv_values_are_range_checked(tmp_path, text, fragments):
    csv_path = tmp_path / "predictions.csv"
    csv_path.write_text(text)
    one_error(cli("report", csv_path, "-o", tmp_path / "out"), str(csv_path), *fragments)
