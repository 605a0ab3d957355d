"""Progress bars: tqdm when someone can see them, a silent counter (and no tqdm import) otherwise."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from caffe_compat.progress import progress_bar


def test_hidden_bar_does_not_import_tqdm() -> None:
    code = ("import sys\nfrom caffe_compat.progress import progress_bar\n"
            "with progress_bar(range(3), shown=False, total=3) as bar:\n"
            "    items = list(bar)\n    bar.update(2)\n    bar.set_postfix(loss=1)\n"
            "assert items == [0, 1, 2] and bar.n == 2, (items, bar.n)\n"
            "assert 'tqdm' not in sys.modules\n"
            "progress_bar(total=1).close()  # stderr is a pipe here: hidden too\n"
            "assert 'tqdm' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_shown_bar_is_tqdm_on_stderr(capsys) -> None:
    with progress_bar(total=5, shown=True, desc="work") as bar:
        bar.update(5)
    assert type(bar).__name__ == "tqdm" and bar.n == 5
    assert "work" in capsys.readouterr().err


def test_mean_progress_counts_every_datum_over_both_rounds(tmp_path, monkeypatch, capsys) -> None:
    """The bar of the forked rounds ends at the datum count, past 65,793 datums too."""
    from caffe_compat.data import image_mean
    from caffe_compat.data.datum import raw_datum
    from caffe_compat.data.lmdb_writer import build_lmdb

    monkeypatch.setattr(image_mean, "_EXACT", 150 * 255 + 1)  # a key-range round of 150, then ordered
    monkeypatch.setattr(image_mean, "_MIN_DATUMS_PER_ROUND", 100)
    monkeypatch.setattr(image_mean, "_MIN_PIXELS_PER_WORKER", 64)
    monkeypatch.setattr(image_mean, "_cores", lambda: 2)
    images = np.random.default_rng(0).integers(0, 256, (200, 2, 8, 8), dtype=np.uint8)
    with build_lmdb(tmp_path / "db") as db:
        for i, image in enumerate(images):
            db.put(f"{i:08d}".encode(), raw_datum(image, 0))
    result = image_mean.compute_image_mean(tmp_path / "db", progress=True)
    np.testing.assert_array_equal(result.mean, images.sum(0, dtype=np.float32) / np.float32(200))
    assert "200/200" in capsys.readouterr().err
