"""compute-image-mean: identical to Caffe's mean.binaryproto files and logged channel means."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.cli import main
from caffe_compat.data.image_mean import compute_image_mean
from caffe_compat.data.lmdb_writer import build_lmdb
from caffe_compat.errors import CaffeCompatError

MEANS = ["train_raw32", "val_raw32", "train_gray24x20", "train_encpng28"]


@pytest.mark.parametrize("name", MEANS)
def test_mean_equals_caffe(fixtures, name) -> None:
    result = compute_image_mean(fixtures / "lmdb" / f"{name}_lmdb", progress=False)
    reference = np.load(fixtures / "mean" / f"{name}_mean.npy")
    assert result.mean.shape == reference.shape
    assert np.abs(result.mean - reference).max() <= 1e-4
    assert result.to_blobproto() == (fixtures / "mean" / f"{name}_mean.binaryproto").read_bytes()
    logged = re.findall(r"mean_value channel \[\d\]: (\S+)", (fixtures / "mean" / f"{name}_mean.log").read_text())
    assert [f"{v:.6g}" for v in result.channel_means] == logged
    assert result.encoded == (name == "train_encpng28")


def test_encoded_mixed_channels_fails_with_key(fixtures) -> None:
    # Caffe dies here too: the grey PNG decodes natively to 1 channel (1024 vs. 1683).
    with pytest.raises(CaffeCompatError, match=r"00000001_b/grey_013.png' has 1024 values.*first has 1683"):
        compute_image_mean(fixtures / "lmdb" / "train_encoded_lmdb", progress=False)


def test_empty_and_missing_db(tmp_path) -> None:
    with build_lmdb(tmp_path / "empty"):
        pass
    with pytest.raises(CaffeCompatError, match="empty"):
        compute_image_mean(tmp_path / "empty", progress=False)
    with pytest.raises(CaffeCompatError, match="does not exist"):
        compute_image_mean(tmp_path / "nope", progress=False)


def test_cli_writes_caffe_bytes_and_logs(fixtures, tmp_path) -> None:
    out = tmp_path / "mean.binaryproto"
    result = CliRunner().invoke(main, ["compute-image-mean", "-backend", "lmdb",
                                       str(fixtures / "lmdb" / "val_raw32_lmdb"), str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (fixtures / "mean" / "val_raw32_mean.binaryproto").read_bytes()
    assert "mean_value channel [2]: 134.54" in result.output and "Processed 7 files." in result.output
    db = str(fixtures / "lmdb" / "val_raw32_lmdb")
    bad = CliRunner().invoke(main, ["compute-image-mean", "--backend=leveldb", db])
    assert bad.exit_code == 1 and "not supported" in bad.output


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 600), st.integers(0, 2**32 - 1), st.booleans(), st.booleans())
def test_fast_sum_equals_caffes_float32_running_sum(count, seed, claim_huge_db, saturated):
    """The integer fast path (and the float fallback) give Caffe's float32 running sum bit for bit."""
    from caffe_compat.data.image_mean import _PixelSum

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 2, 3, 4), dtype=np.uint8)
    if saturated:  # all 255: the case that would overflow a uint16 cell held past 257 images
        images[:] = 255
    expected = np.zeros((2, 3, 4), np.float32)
    for image in images:  # Caffe: sum_blob.data(i) += (uint8)data[i], float32, in DB order
        expected = (expected + image.astype(np.float32)).astype(np.float32)
    acc = _PixelSum((2, 3, 4), 70_000 if claim_huge_db else count)
    for image in images:
        acc.add(image)
    assert acc.exact is not claim_huge_db
    np.testing.assert_array_equal(acc.mean(count), expected / np.float32(count))
