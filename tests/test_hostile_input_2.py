"""Hostile and careless input, round 2 (issue 21): LevelDB, sizes declared by HDF5 files and CSVs,
files that are not regular files, spreadsheet and Markdown injection, link-tools, slow servers, and
the errors that used to say "a bug in caffe-compat". Every bad file is generated here.

The bomb cases run in a subprocess that reports its peak resident memory (``ru_maxrss``), which
must stay under :data:`PEAK_MB`.
"""

from __future__ import annotations

import os
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
