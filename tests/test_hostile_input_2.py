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
