"""convert-imageset: byte parity with real Caffe's LMDBs, safety, and located messages."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.data.convert_imageset import ConvertOptions, convert_imageset
from caffe_compat.data.listfile import read_list
from caffe_compat.data.lmdb_dataset import iter_records
from caffe_compat.data.lmdb_writer import build_lmdb
from caffe_compat.errors import CaffeCompatError

# fixture name -> (list, options) exactly as in MANIFEST.md's commands
RUNS = {
    "train_raw32": ("images/train.txt", dict(resize_height=32, resize_width=32)),
    "val_raw32": ("images/val.txt", dict(resize_height=32, resize_width=32)),
    "val_crlf_raw32": ("images/val_crlf.txt", dict(resize_height=32, resize_width=32)),
    "train_gray24x20": ("images/train.txt", dict(gray=True, resize_height=24, resize_width=20)),
    "train_encoded": ("images/train.txt", dict(encoded=True)),
    "train_encpng28": ("images/train.txt", dict(encoded=True, encode_type="png", resize_height=28, resize_width=28)),
    "edge_raw16": ("images/edge.txt", dict(resize_height=16, resize_width=16)),
    "val_width30only": ("images/val.txt", dict(resize_width=30)),
}


def records(path) -> list[tuple[bytes, bytes]]:
    return list(iter_records(path))


@pytest.fixture
def in_fixtures(fixtures, monkeypatch):
    """cwd = fixture root, like the Caffe runs (keys and paths are relative to it)."""
    monkeypatch.chdir(fixtures)
    return fixtures


@pytest.mark.parametrize("name", sorted(RUNS))
def test_parity_with_caffe(in_fixtures, tmp_path, name) -> None:
    list_file, flags = RUNS[name]
    jobs = 1 if len(name) % 2 else 3  # both the serial and the threaded path meet Caffe's bytes
    out = tmp_path / f"{name}_lmdb"
    summary = convert_imageset("images/", list_file, out, ConvertOptions(jobs=jobs, progress=False, **flags))
    expected = json.loads((in_fixtures / "lmdb" / "summary.json").read_text())[name]
    ours, caffe = records(out), records(in_fixtures / "lmdb" / f"{name}_lmdb")
    assert [k for k, _ in ours] == [k for k, _ in caffe]
    assert ours == caffe  # identical serialized Datums: fields, raw bytes, encoded bytes
    assert summary.written == expected["entries"]
    skipped = sorted(loc for locs in summary.skipped.values() for loc in locs)
    names = {e.line_no: e.name.decode() for e in read_list(list_file).entries}
    assert sorted("images/" + names[int(loc.rsplit(":", 1)[1])] for loc in skipped) == sorted(
        expected["skipped_files_logged"])


def test_nsfw_crop_lmdb_parity(in_fixtures, tmp_path) -> None:
    out = tmp_path / "crop_lmdb"
    convert_imageset("nsfw/img/", "nsfw/img/list.txt", out,
                     ConvertOptions(resize_height=256, resize_width=256, progress=False))
    assert records(out) == records(in_fixtures / "nsfw" / "crop_lmdb")


def test_skips_are_warned_with_file_and_line(in_fixtures, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    convert_imageset("images/", "images/train.txt", tmp_path / "db", ConvertOptions(progress=False))
    text = caplog.text
    assert "images/train.txt:9: skipped 'd/not_an_image.jpg'" in text and "not an image" in text
    assert "images/train.txt:12: skipped 'd/missing_026.jpg'" in text and "does not exist" in text
    assert "images/train.txt:7: 'd/truncated_025.jpg' is a truncated JPEG" in text


def test_directory_in_list_is_skipped_with_line(in_fixtures, tmp_path, caplog) -> None:
    lst = tmp_path / "l.txt"
    lst.write_text("a 1\na/grad_000.jpg 2\n")
    summary = convert_imageset("images/", lst, tmp_path / "db", ConvertOptions(progress=False))
    assert summary.skipped == {"directory": [f"{lst}:1"]}
    assert f"{lst}:1: skipped 'a'" in caplog.text and "is a directory" in caplog.text
    assert [k for k, _ in records(tmp_path / "db")] == [b"00000001_a/grad_000.jpg"]


def test_shuffle_is_seeded_and_renumbers_keys(in_fixtures, tmp_path) -> None:
    opts = ConvertOptions(shuffle=True, seed=3, resize_height=8, resize_width=8, progress=False)
    convert_imageset("images/", "images/val.txt", tmp_path / "a", opts)
    convert_imageset("images/", "images/val.txt", tmp_path / "b", opts)
    a = records(tmp_path / "a")
    assert a == records(tmp_path / "b")
    assert [k[:9] for k, _ in a] == [b"%08d_" % i for i in range(7)]
    assert [k[9:] for k, _ in a] != [k[9:] for k, _ in records(in_fixtures / "lmdb" / "val_raw32_lmdb")]


def test_check_size_fails_like_caffe_and_leaves_nothing(in_fixtures, tmp_path) -> None:
    with pytest.raises(CaffeCompatError, match=r"images/train.txt:2: --check_size: .*3072 bytes.*1683"):
        convert_imageset("images/", "images/train.txt", tmp_path / "db",
                         ConvertOptions(check_size=True, progress=False))
    assert list(tmp_path.iterdir()) == []


def test_existing_db_refused_unless_overwrite(in_fixtures, tmp_path) -> None:
    opts = ConvertOptions(resize_height=8, resize_width=8, progress=False)
    convert_imageset("images/", "images/val.txt", tmp_path / "db", opts)
    before = records(tmp_path / "db")
    with pytest.raises(CaffeCompatError, match="already exists.*--overwrite"):
        convert_imageset("images/", "images/train.txt", tmp_path / "db", opts)
    assert records(tmp_path / "db") == before
    convert_imageset("images/", "images/train.txt", tmp_path / "db",
                     ConvertOptions(resize_height=8, resize_width=8, progress=False, overwrite=True))
    assert len(records(tmp_path / "db")) == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_interrupt_keeps_previous_db(in_fixtures, tmp_path, monkeypatch) -> None:
    opts = ConvertOptions(resize_height=8, resize_width=8, progress=False, overwrite=True, jobs=1)
    convert_imageset("images/", "images/val.txt", tmp_path / "db", opts)
    before = records(tmp_path / "db")
    from caffe_compat.data import convert_imageset as module

    calls = []
    real = module._Job.__call__

    def interrupted(self, entry):
        calls.append(entry)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, entry)

    monkeypatch.setattr(module._Job, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_imageset("images/", "images/train.txt", tmp_path / "db", opts)
    assert records(tmp_path / "db") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]  # temporary DB removed


@pytest.mark.parametrize("previous", [False, True])
def test_kill_9_mid_build_keeps_previous_state(in_fixtures, tmp_path, previous) -> None:
    opts = "ConvertOptions(progress=False, overwrite=True, resize_height=8, resize_width=8)"
    if previous:
        convert_imageset("images/", "images/val.txt", tmp_path / "db", ConvertOptions(resize_height=4, resize_width=4))
    before = records(tmp_path / "db") if previous else None
    script = textwrap.dedent(f"""
        import os, signal
        from caffe_compat.data import lmdb_writer
        from caffe_compat.data.convert_imageset import ConvertOptions, convert_imageset
        real = lmdb_writer.LMDBBuilder.commit
        def commit_then_die(self):
            real(self)
            if self.count:
                os.kill(os.getpid(), signal.SIGKILL)
        lmdb_writer.LMDBBuilder.commit = commit_then_die
        lmdb_writer.LMDBBuilder.__init__.__defaults__ = (lmdb_writer.INITIAL_MAP_SIZE, 2)
        convert_imageset("images/", "images/train.txt", {str(tmp_path / 'db')!r}, {opts})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    if previous:
        assert records(tmp_path / "db") == before
    else:
        assert not (tmp_path / "db").exists()
    assert all(p.name.endswith(".tmp") for p in tmp_path.iterdir() if p.name != "db")


def test_map_size_grows(tmp_path) -> None:
    with build_lmdb(tmp_path / "db", map_size=1 << 16) as db:
        for i in range(40):
            db.put(b"%08d" % i, bytes(50_000))
    got = records(tmp_path / "db")
    assert len(got) == 40 and all(len(v) == 50_000 for _, v in got)


def test_unwritable_destination(in_fixtures, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CaffeCompatError, match="parent directory .* does not exist"):
        convert_imageset("images/", "images/val.txt", blocker / "db", ConvertOptions(progress=False))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_destination(in_fixtures, tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    with pytest.raises(CaffeCompatError, match="permission denied"):
        convert_imageset("images/", "images/val.txt", ro / "db", ConvertOptions(progress=False))


def test_nothing_written_is_an_error(in_fixtures, tmp_path) -> None:
    lst = tmp_path / "l.txt"
    lst.write_text("d/missing_026.jpg 1\nd/not_an_image.jpg 2\n")
    with pytest.raises(CaffeCompatError, match=r"none of the 2 images.*missing: 1, undecodable: 1.*nothing written"):
        convert_imageset("images/", lst, tmp_path / "db", ConvertOptions(progress=False))
    assert not (tmp_path / "db").exists()


def test_leveldb_backend_holds_caffes_records(in_fixtures, tmp_path) -> None:
    from caffe_compat.data.leveldb import iter_leveldb

    options = ConvertOptions(backend="leveldb", resize_height=32, resize_width=32, progress=False)
    convert_imageset("images/", "images/train.txt", tmp_path / "db", options)
    assert list(iter_leveldb(tmp_path / "db")) == records(in_fixtures / "lmdb" / "train_raw32_lmdb")


def test_unknown_backend_refused(in_fixtures, tmp_path) -> None:
    with pytest.raises(CaffeCompatError, match="--backend rocksdb: unknown database backend"):
        convert_imageset("images/", "images/val.txt", tmp_path / "db", ConvertOptions(backend="rocksdb"))
    assert not (tmp_path / "db").exists()


def test_explicit_encode_type_keeps_matching_files(in_fixtures, tmp_path) -> None:
    from caffe_compat.data.datum import parse_datum

    convert_imageset("images/", "images/train.txt", tmp_path / "db", ConvertOptions(encode_type="png", progress=False))
    for key, value in records(tmp_path / "db"):
        datum = parse_datum(value)
        assert datum.encoded and not datum.HasField("channels")
        original = (in_fixtures / "images" / key[9:].decode()).read_bytes()
        assert (datum.data == original) == key.endswith(b".png")
        assert datum.data.startswith(b"\x89PNG")


def test_cli_caffe_flags_and_summary(in_fixtures, tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "db"
    result = runner.invoke(main, ["convert-imageset", "-resize_height=32", "--resize_width", "32", "-jobs", "2",
                                  "-shuffle=false", "images/", "images/train.txt", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 18 of 20 images" in result.output and "skipped 2 (missing: 1, undecodable: 1)" in result.output
    assert records(out) == records(in_fixtures / "lmdb" / "train_raw32_lmdb")
    again = runner.invoke(main, ["convert-imageset", "images/", "images/val.txt", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output and "Traceback" not in again.output
    gray = runner.invoke(main, ["convert-imageset", "-gray", "--resize_height=24", "-resize_width=20", "--overwrite",
                                "images/", "images/train.txt", str(out)])
    assert gray.exit_code == 0, gray.output
    assert records(out) == records(in_fixtures / "lmdb" / "train_gray24x20_lmdb")


@pytest.mark.parametrize("name", [*sorted(RUNS), "train_checksize"])
def test_cli_info_lines_are_caffes(fixtures, tmp_path, monkeypatch, name) -> None:
    """Caffe's INFO lines, in its order, from the same directory layout (our warnings about
    skipped lines are ours: they name the list line)."""
    list_file, flags = RUNS.get(name, ("images/train.txt", dict(check_size=True)))
    (tmp_path / "images").symlink_to(fixtures / "images")
    (tmp_path / "lmdb").mkdir()
    monkeypatch.chdir(tmp_path)
    args = [f"--{k}" if v is True else f"--{k}={v}" for k, v in flags.items()]
    ours = CliRunner().invoke(main, ["convert-imageset", *args, "images/", list_file, f"lmdb/{name}_lmdb"])

    def info(log: str) -> list[str]:
        return [line.split("] ", 1)[1] for line in log.splitlines() if line[:1] == "I" and "] " in line]

    assert info(ours.output) == info((fixtures / "lmdb" / f"{name}.log").read_text())
    assert ours.exit_code == (1 if name == "train_checksize" else 0)


def test_processed_lines_every_1000_written_as_caffe(tmp_path, caplog) -> None:
    """Caffe logs "Processed N files." per 1000 datums written (skipped lines do not count) and
    for the rest; with a bar on, only the last."""
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "list.txt").write_text("a.png 0\n" * 2001 + "missing.png 1\n" * 3)
    for shown, expected in [(False, [1000, 2000, 2001]), (True, [2001])]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="caffe_compat"):
            convert_imageset(f"{tmp_path}/", tmp_path / "list.txt", tmp_path / f"db{shown}",
                             ConvertOptions(progress=shown, jobs=2))
        processed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Processed")]
        assert processed == [f"Processed {n} files." for n in expected]


def test_cli_bad_inputs_exit_nonzero_with_location(in_fixtures, tmp_path) -> None:
    runner = CliRunner()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = runner.invoke(main, ["convert-imageset", "images/", str(empty), str(tmp_path / "db")])
    assert result.exit_code == 1 and "empty.txt: list file is empty" in result.output
    result = runner.invoke(main, ["convert-imageset", "-check_size", "images/", "images/train.txt",
                                  str(tmp_path / "db")])
    assert result.exit_code == 1 and "images/train.txt:2:" in result.output
    assert not (tmp_path / "db").exists()
    shutil.rmtree(tmp_path / "db", ignore_errors=True)


def test_unknown_encode_type_is_located(in_fixtures, tmp_path) -> None:
    with pytest.raises(CaffeCompatError, match=r"images/val.txt:1: 'a/grad_002.jpg': OpenCV cannot encode .* 'xyz'"):
        convert_imageset("images/", "images/val.txt", tmp_path / "db",
                         ConvertOptions(encode_type="xyz", progress=False))
    assert list(tmp_path.iterdir()) == []
