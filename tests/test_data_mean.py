"""compute-image-mean: identical to Caffe's mean.binaryproto files and logged channel means."""

from __future__ import annotations

import os
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


def _messages(log: str) -> list[str]:
    """glog lines without their prefix (time, thread, file:line)."""
    return [line.split("] ", 1)[1] for line in log.splitlines() if re.match(r"[IWEF]\d{4}", line)]


@pytest.mark.parametrize("name", [*MEANS, "train_encoded"])
def test_cli_logs_caffes_lines(fixtures, tmp_path, monkeypatch, name) -> None:
    """The same log lines as Caffe's run that made the fixture (from the same directory), up to
    the failure for the DB Caffe rejects (its CHECK message is ours in other words)."""
    (tmp_path / "lmdb").symlink_to(fixtures / "lmdb")
    (tmp_path / "mean").mkdir()
    monkeypatch.chdir(tmp_path)
    caffe = (fixtures / "mean" / f"{name}_mean{'_FAIL' if name == 'train_encoded' else ''}.log").read_text()
    ours = CliRunner().invoke(main, ["compute-image-mean", f"lmdb/{name}_lmdb", f"mean/{name}_mean.binaryproto"])
    expected = [m for m in _messages(caffe) if not m.startswith("Check failed")]
    assert _messages(ours.output) == expected
    assert ours.exit_code == (1 if name == "train_encoded" else 0)


def test_processed_lines_every_10000_datums_as_caffe(tmp_path, monkeypatch, caplog) -> None:
    """Caffe logs "Processed N files." at each 10,000 datums and for the rest; a bar replaces
    the periodic lines (they would break it), the last one stays. Forked workers report out of
    order: each line still comes once."""
    import logging

    from caffe_compat.data import image_mean

    db = _raw_db(tmp_path / "db", np.zeros((20001, 1, 1, 2), np.uint8), [0] * 20001)
    monkeypatch.setattr(image_mean, "_cores", lambda: 2)
    for shown, expected in [(False, [10000, 20000, 20001]), (True, [20001])]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="caffe_compat.data.image_mean"):
            compute_image_mean(db, progress=shown)
        processed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Processed")]
        assert processed == [f"Processed {n} files." for n in expected]


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
    assert bad.exit_code == 1 and "not a LevelDB folder" in bad.output


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 600), st.integers(0, 2**32 - 1), st.sampled_from([256, 1000, 70_000, None]), st.booleans(),
       st.sampled_from([(2, 3, 4), (1, 5, 5), (3, 1, 1)]))
def test_fast_sum_equals_caffes_float32_running_sum(count, seed, exact_below, saturated, shape):
    """The integer fast path, the float32 path and the switch between them give Caffe's float32
    running sum bit for bit, for even and odd pixel counts."""
    from caffe_compat.data import image_mean

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
    if saturated:  # all 255: the case that would overflow a uint16 cell held past 257 images
        images[:] = 255
    expected = np.zeros(shape, np.float32)
    for image in images:  # Caffe: sum_blob.data(i) += (uint8)data[i], float32, in DB order
        expected = (expected + image.astype(np.float32)).astype(np.float32)
    with pytest.MonkeyPatch.context() as monkeypatch:
        if exact_below is not None:  # pretend float32 rounds from here: switch to float32 adds early
            monkeypatch.setattr(image_mean, "_EXACT", exact_below)
        acc = image_mean._PixelSum(int(np.prod(shape)))
        for image in images:
            acc.add(image.reshape(-1))
    np.testing.assert_array_equal(acc.sums().reshape(shape), expected)


def _caffes_running_sum(images: np.ndarray) -> np.ndarray:
    """sum_blob.data(i) += (uint8)data[i] in float32, datum after datum (compute_image_mean.cpp)."""
    total = np.zeros(images.shape[1:], np.float32)
    for image in images:
        np.add(total, image, out=total)
    return total


def test_sum_past_2_24_rounds_like_caffe() -> None:
    """Past 2**24 float32 partial sums round: the exact integer sums hand over to float32 adds."""
    from caffe_compat.data.image_mean import _PixelSum

    images = np.random.default_rng(1).integers(230, 256, (70_000, 7), dtype=np.uint8)
    expected = _caffes_running_sum(images)
    assert not np.array_equal(expected, images.sum(0, dtype=np.float64))  # rounding did happen
    acc = _PixelSum(7)
    for image in images:
        acc.add(image)
    np.testing.assert_array_equal(acc.sums(), expected)


def _raw_db(path, images, labels, odd: dict[int, bytes] | None = None):
    """A raw-datum LMDB; ``odd`` replaces the value at some positions."""
    from caffe_compat.data.datum import raw_datum

    with build_lmdb(path) as db:
        for i, (image, label) in enumerate(zip(images, labels)):
            db.put(f"{i:08d}".encode(), (odd or {}).get(i) or raw_datum(image, int(label)))
    return path


def _mean_bytes(db, parallel: bool, monkeypatch) -> bytes:
    """The mean's file bytes: through forked workers, or Caffe's one-datum-at-a-time loop."""
    from caffe_compat.data import image_mean

    if parallel:
        monkeypatch.setattr(image_mean, "_cores", lambda: 2)
        return compute_image_mean(db, progress=False).to_blobproto()
    from caffe_compat.data.lmdb_dataset import count_records
    from caffe_compat.progress import CaffeCountLog

    lines = CaffeCountLog(10000, lambda n: None)
    return image_mean._sequential_mean(db, count_records(db), None, False, lines).to_blobproto()


@settings(max_examples=8, deadline=None)
@given(st.integers(128, 400), st.integers(0, 2**32 - 1), st.sampled_from([(3, 5, 4), (1, 5, 5)]))
def test_parallel_mean_is_bit_identical_to_sequential(tmp_path_factory, count, seed, shape) -> None:
    """Exact integer partial sums over forked key ranges give the sequential (Caffe's) bytes,
    for even and odd pixel counts."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        labels = rng.integers(-(2**31), 2**31, count)  # every label varint width, negatives too
        db = _raw_db(tmp_path_factory.mktemp("db") / "db", images, labels)
        expected = images.astype(np.float64).sum(0).astype(np.float32) / np.float32(count)
        from caffe_compat.data import image_mean

        calls = []
        real = image_mean._run_round
        monkeypatch.setattr(image_mean, "_run_round", lambda *a: calls.append(a[2]) or real(*a))
        got = _mean_bytes(db, True, monkeypatch)
        assert [len(plan.parts) for plan in calls] == [2]  # one round, forked: 2 workers
        assert got == _mean_bytes(db, False, monkeypatch)
        np.testing.assert_array_equal(compute_image_mean(db, progress=False).mean, expected)
    finally:
        monkeypatch.undo()


def test_parallel_falls_back_for_odd_datums(tmp_path, monkeypatch) -> None:
    """A float_data or encoded=true datum in a forked part: the sequential path handles the DB."""
    from caffe_compat.proto import caffe_pb2

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 1, 2, 3), dtype=np.uint8)
    floats = caffe_pb2.Datum(channels=1, height=2, width=3, float_data=[1.5] * 6).SerializeToString()
    db = _raw_db(tmp_path / "db", images, [3] * 200, {150: floats})
    parallel, sequential = _mean_bytes(db, True, monkeypatch), _mean_bytes(db, False, monkeypatch)
    assert parallel == sequential
    images = images.astype(np.float32)
    images[150] = 1.5
    assert np.float32(compute_image_mean(db, progress=False).mean[0, 0, 0]) == np.float32(
        images[:, 0, 0, 0].sum(dtype=np.float32) / np.float32(200))


def test_parallel_rounds_past_2_24_give_caffes_sum(tmp_path, monkeypatch) -> None:
    """Key-range rounds while the sums stay exact integers, then the rest in key order, a pixel
    slice per worker, the integer sums going on until 2**24 is near, then float32 adds."""
    from caffe_compat.data import image_mean

    exact = (2**24 - 1) // 255
    count = exact + 2000
    images = np.random.default_rng(2).integers(250, 256, (count, 2, 8, 8), dtype=np.uint8)
    db = _raw_db(tmp_path / "db", images, [1] * count)
    monkeypatch.setattr(image_mean, "_MIN_PIXELS_PER_WORKER", 64)
    monkeypatch.setattr(image_mean, "_cores", lambda: 2)
    rounds = []
    real = image_mean._run_round
    monkeypatch.setattr(image_mean, "_run_round", lambda *a: rounds.append(a[2]) or real(*a))
    result = compute_image_mean(db, progress=False)
    half = exact // 2
    assert [(r.ordered, [(p.start, p.count, p.lo, p.hi) for p in r.parts]) for r in rounds] == [
        (False, [(b"00000000", half, 0, 128), (f"{half:08d}".encode(), exact - half, 0, 128)]),
        (True, [(f"{exact:08d}".encode(), 2000, 0, 64), (f"{exact:08d}".encode(), 2000, 64, 128)])]
    expected = _caffes_running_sum(images)
    assert not np.array_equal(expected, images.sum(0, dtype=np.float64))  # rounding did happen
    np.testing.assert_array_equal(result.mean, expected / np.float32(count))


def test_key_range_rounds_go_on_while_the_sums_allow(tmp_path, monkeypatch) -> None:
    """Dark images leave room past 65,793 datums: a second key-range round, no ordered one."""
    from caffe_compat.data import image_mean

    monkeypatch.setattr(image_mean, "_EXACT", 200 * 100 + 1)  # as if 2**24 were reached sooner
    monkeypatch.setattr(image_mean, "_MIN_DATUMS_PER_ROUND", 8)
    monkeypatch.setattr(image_mean, "_MIN_DATUMS_PER_WORKER", 4)
    monkeypatch.setattr(image_mean, "_cores", lambda: 2)
    images = np.full((120, 1, 2, 2), 100, np.uint8)
    db = _raw_db(tmp_path / "db", images, [0] * 120)
    rounds = []
    real = image_mean._run_round
    monkeypatch.setattr(image_mean, "_run_round", lambda *a: rounds.append(a[2]) or real(*a))
    result = compute_image_mean(db, progress=False)
    # room 78 from zero (20000 // 255), then (20000 - 7800) // 255 = 47 ≥ the 42 left
    assert [(r.ordered, r.count, len(r.parts)) for r in rounds] == [(False, 78, 2), (False, 42, 2)]
    np.testing.assert_array_equal(result.mean, np.full((1, 2, 2), 100, np.float32))


@pytest.mark.parametrize("bad", [50, 170])  # in this process's part / in the forked child's
def test_parallel_mismatch_keeps_caffes_error(tmp_path, monkeypatch, bad) -> None:
    from caffe_compat.data.datum import raw_datum

    images = np.zeros((200, 3, 4, 4), np.uint8)
    db = _raw_db(tmp_path / "db", images, [0] * 200, {bad: raw_datum(np.zeros((3, 4, 5), np.uint8), 0)})
    monkeypatch.setattr("caffe_compat.data.image_mean._cores", lambda: 2)
    with pytest.raises(CaffeCompatError, match=rf"datum '{bad:08d}' has 60 values.*first has 48"):
        compute_image_mean(db, progress=False)


@settings(max_examples=60, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.binary(max_size=6), st.sampled_from([(1, 1, 1), (3, 2, 5), (3, 256, 256)]))
def test_raw_layout_agrees_with_the_wire_walk(label, junk, shape) -> None:
    """RawLayout.pixels is raw_datum_view's answer, or None (full path) whenever it might differ."""
    from caffe_compat.data.datum import RawLayout, raw_datum, raw_datum_view

    first = RawLayout.of(memoryview(raw_datum(np.zeros(shape, np.uint8), 0)))
    image = np.arange(np.prod(shape), dtype=np.uint64).astype(np.uint8).reshape(shape)
    for value in (raw_datum(image, label), raw_datum(image, label) + junk, raw_datum(image, label)[:-1]):
        fast = first.pixels(memoryview(value))
        full = raw_datum_view(memoryview(value))
        if fast is not None:
            assert full is not None and np.array_equal(fast, full[0]) and fast.shape == full[0].shape
    fast = first.pixels(memoryview(raw_datum(image, label)))
    assert fast is not None and np.array_equal(fast, image)
    assert first.pixels(memoryview(raw_datum(image, label) + b"\x38\x01")) is None  # encoded: true
    assert first.pixels(memoryview(raw_datum(image, label) + b"\x08\x07")) is None  # channels again
    wrong = raw_datum(np.zeros((shape[0], shape[2], shape[1]), np.uint8), label)
    assert shape[1] == shape[2] or first.pixels(memoryview(wrong)) is None


def _encoded_db(path, images: np.ndarray, odd: dict[int, np.ndarray] | None = None):
    """An LMDB of PNG-encoded datums (HxWxC images); ``odd`` replaces some images."""
    import cv2

    from caffe_compat.data.datum import encoded_datum

    with build_lmdb(path) as db:
        for i, image in enumerate(images):
            ok, png = cv2.imencode(".png", (odd or {}).get(i, image))
            db.put(f"{i:08d}".encode(), encoded_datum(png.tobytes(), 0))
    return path


def test_encoded_datums_are_decoded_by_the_forked_workers(tmp_path, monkeypatch, caplog) -> None:
    """Encoded DBs take the parallel path too (decoding is the slow part): Caffe's sums, one
    "Decoding Datum" line, and the sequential path's bytes."""
    import logging

    from caffe_compat.data import image_mean

    images = np.random.default_rng(3).integers(0, 256, (300, 6, 5, 3), dtype=np.uint8)
    db = _encoded_db(tmp_path / "db", images)
    rounds = []
    real = image_mean._run_round
    monkeypatch.setattr(image_mean, "_run_round", lambda *a: rounds.append(a[2]) or real(*a))
    with caplog.at_level(logging.INFO, logger="caffe_compat.data.image_mean"):
        got = _mean_bytes(db, True, monkeypatch)
    assert [len(plan.parts) for plan in rounds] == [2]
    assert [r.getMessage() for r in caplog.records].count("Decoding Datum") == 1
    assert got == _mean_bytes(db, False, monkeypatch)
    result = compute_image_mean(db, progress=False)
    assert result.encoded and result.mean.shape == (3, 6, 5)
    expected = images.transpose(0, 3, 1, 2).sum(0, dtype=np.float64).astype(np.float32) / np.float32(300)
    np.testing.assert_array_equal(result.mean, expected)


def test_encoded_size_mismatch_in_a_worker_keeps_caffes_error(tmp_path, monkeypatch, caplog) -> None:
    import logging

    images = np.zeros((200, 4, 4, 3), np.uint8)
    db = _encoded_db(tmp_path / "db", images, {170: np.zeros((4, 5, 3), np.uint8)})
    monkeypatch.setattr("caffe_compat.data.image_mean._cores", lambda: 2)
    with caplog.at_level(logging.INFO, logger="caffe_compat.data.image_mean"):
        with pytest.raises(CaffeCompatError, match=r"datum '00000170' has 60 values.*first has 48"):
            compute_image_mean(db, progress=False)
    assert [r.getMessage() for r in caplog.records].count("Decoding Datum") == 1


def test_ordered_rounds_split_pixels_only_when_reading_is_cheap(tmp_path, monkeypatch) -> None:
    """Past 2**24 every worker reads every datum: fine for raw views, a repeat of the whole
    decoding for encoded datums, so those get one worker."""
    from caffe_compat.data import image_mean

    db = _raw_db(tmp_path / "db", np.zeros((10, 2, 8, 8), np.uint8), [0] * 10)
    monkeypatch.setattr(image_mean, "_MIN_PIXELS_PER_WORKER", 64)
    raw = image_mean._next_round(db, b"00000004", 6, 10, 128, 2, 0)
    decoded = image_mean._next_round(db, b"00000004", 6, 10, 128, 2, 0, decodes=True)
    assert [(p.start, p.count, p.lo, p.hi) for p in raw.parts] == [(b"00000004", 6, 0, 64), (b"00000004", 6, 64, 128)]
    assert [(p.start, p.count, p.lo, p.hi) for p in decoded.parts] == [(b"00000004", 6, 0, 128)]
    assert raw.ordered and decoded.ordered and raw.after is None


def test_one_lmdb_handle_per_run(tmp_path, monkeypatch) -> None:
    """compute_image_mean opens the DB once in this process: a handle dropped mid-run would be
    closed by a finalizer, where Python ignores a Ctrl-C (it then ran to the end, exit 0)."""
    import lmdb

    from caffe_compat.data import lmdb_dataset

    db = _raw_db(tmp_path / "db", np.zeros((300, 1, 4, 4), np.uint8), [0] * 300)
    opened = []
    real = lmdb.open
    monkeypatch.setattr(lmdb_dataset.lmdb, "open", lambda *a, **k: opened.append(os.getpid()) or real(*a, **k))
    monkeypatch.setattr("caffe_compat.data.image_mean._cores", lambda: 2)
    compute_image_mean(db, progress=False)
    assert opened.count(os.getpid()) == 1


def _bright_db(path):
    """The LMDB behind tests/local_caffe/mean_past_2_24.binaryproto (see its README)."""
    from caffe_compat.data.datum import raw_datum

    images = np.random.default_rng(2024).integers(240, 256, (70_000, 1, 2, 2), dtype=np.uint8)
    with build_lmdb(path) as db:
        for i, image in enumerate(images):
            db.put(f"{i:08d}".encode(), raw_datum(image, 0))
    return path, images


@pytest.mark.parametrize("workers", [1, 2])
def test_mean_past_2_24_equals_real_caffes(tmp_path, monkeypatch, workers) -> None:
    """Real Caffe's file where its float32 sums round (made with a local Caffe build)."""
    from pathlib import Path

    from caffe_compat.data import image_mean

    reference = (Path(__file__).parent / "local_caffe" / "mean_past_2_24.binaryproto").read_bytes()
    db, images = _bright_db(tmp_path / "db")
    monkeypatch.setattr(image_mean, "_cores", lambda: workers)
    monkeypatch.setattr(image_mean, "_MIN_PIXELS_PER_WORKER", 2)  # the ordered round split in two too
    rounds = []
    real = image_mean._run_round
    monkeypatch.setattr(image_mean, "_run_round", lambda *a: rounds.append(a[2]) or real(*a))
    result = compute_image_mean(db, progress=False)
    assert [(r.ordered, [(p.lo, p.hi) for p in r.parts]) for r in rounds][-1] == (
        (True, [(0, 4)]) if workers == 1 else (True, [(0, 2), (2, 4)]))
    assert result.to_blobproto() == reference
    exact = (images.sum(0, dtype=np.float64) / 70_000).astype(np.float32)
    assert not np.array_equal(result.mean, exact)  # the rounding this pins down did happen


def test_a_round_that_ends_the_db_reads_its_last_part_from_the_end(tmp_path, monkeypatch) -> None:
    """No key scan to find where the last part begins (it would fault in every datum's first
    page): that part goes backwards from the last key; 3 workers scan up to the second only."""
    from caffe_compat.data import image_mean

    images = np.random.default_rng(5).integers(0, 256, (300, 1, 3, 3), dtype=np.uint8)
    db = _raw_db(tmp_path / "db", images, [0] * 300)
    scanned = []
    real_keys = image_mean._keys_from
    monkeypatch.setattr(image_mean, "_keys_from", lambda *a: scanned.append(a[2]) or real_keys(*a))
    plan = image_mean._next_round(db, None, 300, 300, 9, 3, 10**6)
    assert scanned == [[0, 100]]
    assert [(p.start, p.count, p.chunk) for p in plan.parts] == [
        (b"00000000", 100, 0), (b"00000100", 200, 16), (None, 200, 16)]  # the last two share 200
    assert plan.after is None and not plan.ordered
    monkeypatch.setattr(image_mean, "_cores", lambda: 3)
    expected = images.astype(np.float64).sum(0).astype(np.float32) / np.float32(300)
    np.testing.assert_array_equal(compute_image_mean(db, progress=False).mean, expected)


def test_workers_refuse_a_db_whose_record_count_changed(tmp_path) -> None:
    """Parts read from both ends tile the DB only if it still has the planned record count."""
    from caffe_compat.data import image_mean

    db = _raw_db(tmp_path / "db", np.ones((10, 1, 2, 2), np.uint8), [0] * 10)
    layout, _ = image_mean._first_layout(db)
    out = np.zeros(4, np.float32)
    last = image_mean._Part(None, 5, 0, 4)
    assert image_mean._sum_part(db, layout, 10, last, None, out, lambda n: None)
    np.testing.assert_array_equal(out, np.full(4, 5, np.float32))
    assert not image_mean._sum_part(db, layout, 11, last, None, out, lambda n: None)


@pytest.mark.parametrize("forward_first", [True, False])
def test_shared_parts_meet_wherever_the_faster_gets(tmp_path, forward_first) -> None:
    """The two parts that share the end of a round claim chunks until none is left: whichever
    runs first (here: alone) takes nearly all, the other the rest; together every datum once."""
    from caffe_compat.data import image_mean

    images = np.random.default_rng(6).integers(0, 256, (70, 1, 2, 3), dtype=np.uint8)
    db = _raw_db(tmp_path / "db", images, [0] * 70)
    layout, _ = image_mean._first_layout(db)
    forward, backward = image_mean._Part(b"00000000", 70, 0, 6, 16), image_mean._Part(None, 70, 0, 6, 16)
    claims = image_mean._claims([forward, backward])
    outs, counts = {}, {}
    try:
        for part in ([forward, backward] if forward_first else [backward, forward]):
            outs[part.start] = np.zeros(6, np.float32)
            assert image_mean._sum_part(db, layout, 70, part, None, outs[part.start],
                                        lambda n, key=part.start: counts.__setitem__(key, n), claims)
    finally:
        os.close(claims)
    # 70 = 6 taken up front by the forward part + 4 claims of 16
    assert (counts[b"00000000"], counts[None]) == ((70, 0) if forward_first else (6, 64))
    np.testing.assert_array_equal(outs[b"00000000"] + outs[None], images.reshape(70, 6).sum(0))
