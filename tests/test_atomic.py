"""atomic_write: all-or-nothing replacement with ordinary file permissions."""

from __future__ import annotations

import os
import stat

import pytest

from caffe_compat.atomic import atomic_write, atomic_write_bytes


def test_replaces_whole_file_with_umask_mode(tmp_path):
    target = tmp_path / "mean.binaryproto"
    old = os.umask(0o022)
    try:
        atomic_write_bytes(target, b"new")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_failure_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "w.caffemodel"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["w.caffemodel"]
