"""A corpus of careless and hostile input (issue 13), every bad file generated here.

Each command must succeed or end with ONE ``caffe-compat: error:`` line and a non-zero exit:
never a traceback, a signal death, a file outside the user's folder, a deleted folder or rows
lost without a word. Commands that could die of a signal (LMDB maps, forked workers) run in a
subprocess; the others through click's CliRunner.
"""

from __future__ import annotations

import errno
import http.server
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.data import lmdb_writer
from caffe_compat.data.lmdb_writer import build_lmdb
from caffe_compat.io.caffemodel import write_caffemodel
from caffe_compat.io.prototxt import parse_net_text
from caffe_compat.io.solverstate import write_solverstate
from caffe_compat.net.builder import CaffeNet
from caffe_compat.proto import caffe_pb2
from solver_util import lenet_workdir
from workflow_util import write_video, write_xlsx

ERROR = "caffe-compat: error: "


# ---------------------------------------------------------------------------- helpers


def cli(*args: object, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def one_error(result, *fragments: str) -> str:
    """The command failed with exactly one error line holding ``fragments``, and no traceback."""
    out = result.output
    assert result.exit_code == 1, out
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}: {out}"
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, out
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def run(*args: object, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``caffe-compat ARGS`` in a fresh process (a signal death there cannot take pytest down)."""
    return subprocess.run([sys.executable, "-c", "from caffe_compat.cli import main; main()", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def script(code: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def proc_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 1) -> str:
    """A process that exited ``code`` (not by a signal) with one error line and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def datum(shape=(3, 4, 4), label=0, fill=7) -> bytes:
    c, h, w = shape
    return caffe_pb2.Datum(channels=c, height=h, width=w, data=bytes([fill]) * (c * h * w), label=label,
                           encoded=False).SerializeToString()


def write_db(path: Path, values: list[bytes]) -> Path:
    with build_lmdb(path) as db:
        for i, value in enumerate(values):
            db.put(b"%08d_img" % i, value)
    return path


def truncate_db(path: Path) -> Path:
    data = path / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    return path


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or folders left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old")))


@pytest.fixture()
def images(fixtures: Path, tmp_path: Path) -> Path:
    """A writable copy of the fixture images (with list files)."""
    return Path(shutil.copytree(fixtures / "images", tmp_path / "photos"))


# ---------------------------------------------------------------------------- 1. path traversal


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
    """/v1.mp4: a small video body; /empty.mp4: 200 with no body; /drip.mp4 and /slowhead.mp4:
    a byte every 0.2 s (of the body, or of the headers)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        try:
            if self.path.startswith("/slowhead"):
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(200):
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.2)
                return
            body = {"/v1.mp4": b"\x00\x00\x00\x18ftypmp42" * 100, "/empty.mp4": b""}.get(self.path, b"x" * 1000)
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path.startswith("/drip"):
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            else:
                self.wfile.write(body)
        except OSError:  # the client gave up
            pass


@pytest.fixture()
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("video_id", ["./../escape_rel", "/../../../escape_abs", "..", "a/b", "x\\..\\y", ""])
def test_1_video_ids_from_the_sheet_never_leave_the_output_folder(server, tmp_path, video_id):
    sheet = tmp_path / "clean.csv"
    sheet.write_text(f"url,video_id,score\n{server}/v1.mp4,{video_id},70\n")
    out = tmp_path / "a" / "out"
    line = one_error(cli("workflow", "download-videos", sheet, "-o", out, "--no-progress"), "clean.csv:2",
                     "cannot name a file")
    assert "video_id" in line
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["clean.csv"]
    assert not Path("/escape_abs.mp4").exists()


def test_1_safe_ids_still_download(server, tmp_path):
    sheet = tmp_path / "clean.csv"
    sheet.write_text(f"url,video_id,score\n{server}/v1.mp4,my_video-1,70\n")
    result = cli("workflow", "download-videos", sheet, "-o", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "my_video-1.mp4").stat().st_size == 1200


# ---------------------------------------------------------------------------- 2. --overwrite


def test_2_overwrite_refuses_a_folder_that_is_not_an_lmdb(images):
    before = sorted(p.relative_to(images) for p in images.rglob("*"))
    line = one_error(cli("convert-imageset", f"{images}/", images / "train.txt", images, "--overwrite"),
                     "is not an LMDB", "--overwrite replaces only an LMDB")
    assert str(images) in line
    assert sorted(p.relative_to(images) for p in images.rglob("*")) == before


def test_2_overwrite_refuses_a_file_and_an_lmdb_with_extra_files(images, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    one_error(cli("convert-imageset", f"{images}/", images / "val.txt", tmp_path / "notes.txt", "--overwrite"),
              "not an LMDB")
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    db = write_db(tmp_path / "db", [datum()])
    (db / "README").write_text("mine")
    one_error(cli("convert-imageset", f"{images}/", images / "val.txt", db, "--overwrite"), "'README'")
    assert (db / "README").exists()


def test_2_overwrite_still_replaces_an_lmdb_or_an_empty_folder(images, tmp_path):
    db = write_db(tmp_path / "db", [datum()])
    cut = truncate_db(write_db(tmp_path / "cut", [datum()] * 50))  # a damaged LMDB is still an LMDB
    (tmp_path / "empty").mkdir()
    for target in (db, cut, tmp_path / "empty"):
        result = cli("convert-imageset", f"{images}/", images / "val.txt", target, "--overwrite", "--no-progress")
        assert result.exit_code == 0, result.output
        assert sorted(os.listdir(target)) == ["data.mdb", "lock.mdb"]
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- 3. silent row loss


def _sheet(rows: int = 100) -> list[str]:
    return ["url,score,gender,age,remark"] + [f"http://x/{i}.mp4,{70 + i % 20},f,20,ok" for i in range(rows)]


def test_3_a_stray_quote_is_an_error_naming_its_line(tmp_path):
    lines = _sheet()
    lines[4] = 'http://x/3.mp4,73,f,20,"stray quote in a remark'
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    one_error(cli("workflow", "clean-annotations", tmp_path / "s.csv", "-o", tmp_path / "c.csv"),
              "s.csv:5:", "stray '\"'")
    assert not (tmp_path / "c.csv").exists()


def test_3_a_stray_quote_closed_by_a_later_one_is_an_error_too(tmp_path):
    lines = _sheet()
    lines[4] = 'http://x/3.mp4,73,f,20,"stray'
    lines[60] = 'http://x/59.mp4,73,f,20,"'
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    one_error(cli("workflow", "clean-annotations", tmp_path / "s.csv", "-o", tmp_path / "c.csv"),
              "s.csv:5:", "look like rows")


def test_3_a_row_split_by_an_unquoted_comma_is_dropped_with_a_note(tmp_path):
    lines = _sheet(10)
    lines[3] = "http://x/2.mp4,72,f,20,fine,已删除"  # the remark that should drop it, cut off by a comma
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    result = cli("workflow", "clean-annotations", tmp_path / "s.csv", "-o", tmp_path / "c.csv")
    assert result.exit_code == 0, result.output
    assert "note: " in result.output and "s.csv:4: 6 cells but the header has 5" in result.output
    assert "malformed row" in result.output and "wrote 9 rows" in result.output
    one_error(cli("workflow", "clean-annotations", tmp_path / "s.csv", "-o", tmp_path / "d.csv", "--strict"),
              "s.csv:4")


def test_3_multi_line_remarks_are_still_fine(tmp_path):
    lines = _sheet(5)
    lines[2] = 'http://x/1.mp4,71,f,20,"two lines,\nof remark"'
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    result = cli("workflow", "clean-annotations", tmp_path / "s.csv", "-o", tmp_path / "c.csv")
    assert result.exit_code == 0 and "wrote 5 rows" in result.output, result.output


def test_3_manifests_with_a_short_row_are_an_error(tmp_path):
    manifest = tmp_path / "frames_manifest.csv"
    manifest.write_text("video_id,frame,frame_index,score,sharpness\nv,v_0.jpg,0,70,1\nv,v_50.jpg,50\n")
    one_error(cli("workflow", "balance-split", manifest, "-o", tmp_path / "lists"), "frames_manifest.csv:3",
              "3 cells, the header has 5")


# ---------------------------------------------------------------------------- 4. truncated LMDBs, full disks


@pytest.fixture()
def test_net(fixtures: Path, tmp_path: Path) -> Path:
    """``caffe test`` inputs (net, weights, mean) in a folder whose test_lmdb the test writes."""
    for name in ("test.prototxt", "weights.caffemodel", "mean.binaryproto"):
        shutil.copy(fixtures / "test" / name, tmp_path / name)
    return tmp_path


def test_4_truncated_lmdb_is_reported_as_truncated(fixtures, test_net):
    db = truncate_db(Path(shutil.copytree(fixtures / "test" / "test_lmdb", test_net / "test_lmdb")))
    for args in (("compute-image-mean", db, test_net / "m.binaryproto"), ("inspect", db),
                 ("test", "-model", "test.prototxt", "-weights", "weights.caffemodel", "-iterations", 1)):
        proc_error(run(*args, cwd=test_net), "data.mdb: truncated", "cut short")
    assert not (test_net / "m.binaryproto").exists()


def test_4_lmdb_too_short_for_its_meta_pages_or_not_an_lmdb(tmp_path):
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "data.mdb").write_bytes(b"")
    proc_error(run("compute-image-mean", tmp_path / "short"), "data.mdb: empty")
    db = write_db(tmp_path / "db", [datum()])
    os.truncate(db / "data.mdb", 4100)  # the first meta page only
    proc_error(run("inspect", db), "second meta page is missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(random.Random(9000).randbytes(9000))  # seeded: same junk every run
    proc_error(run("compute-image-mean", tmp_path / "junk"), "not an LMDB data file")


def test_4_sigbus_in_a_mapped_file_is_one_line_naming_it(tmp_path):
    """The last resort, for a map that faults despite the checks (e.g. truncated while in use)."""
    (tmp_path / "f").write_bytes(b"x" * 100)
    proc = script(f"""
        import mmap, os
        from caffe_compat.cli.guard import one_line_errors
        from caffe_compat.io.mapped import map_started
        map_started({str(tmp_path / 'f')!r}, "reading")
        with open({str(tmp_path / 'f')!r}, "r+b") as handle, one_line_errors():
            view = mmap.mmap(handle.fileno(), 100)
            os.truncate({str(tmp_path / 'f')!r}, 0)  # another process cut it short
            print(view[50])
    """)
    proc_error(proc, f"{tmp_path / 'f'} (reading)", "bus error", "truncated")


@pytest.mark.parametrize("reserve", ["posix_fallocate", "lmdb"])
def test_4_full_disk_while_building_an_lmdb(images, tmp_path, monkeypatch, reserve):
    db = write_db(tmp_path / "db", [datum()])
    before = (db / "data.mdb").read_bytes()
    if reserve == "posix_fallocate":
        def full(fd, offset, length):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(lmdb_writer.os, "posix_fallocate", full)
    else:  # LMDB itself fails to write its meta pages
        real = lmdb_writer.lmdb.open
        monkeypatch.setattr(lmdb_writer.lmdb, "open", lambda *a, **k: (_ for _ in ()).throw(
            lmdb_writer.lmdb.DiskError("mdb_env_open: No space left on device")) if k.get("writemap") else real(*a, **k))
    one_error(cli("convert-imageset", f"{images}/", images / "val.txt", db, "--overwrite", "--no-progress"),
              str(db), "No space left on device")
    assert (db / "data.mdb").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_4_stale_temporary_folders_are_removed_by_the_next_run(images, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".db.{lmdb_writer._HOST}-{dead.pid}.abc123.tmp"
    stale.mkdir()
    (stale / "data.mdb").write_bytes(b"\0" * 4096)
    alive = tmp_path / f".db.{lmdb_writer._HOST}-{os.getpid()}.def456.tmp"  # a build still running
    alive.mkdir()
    other = tmp_path / ".db.x.otherhost-1.ghi789.tmp"  # not ours to judge: another target's
    other.mkdir()
    result = cli("convert-imageset", f"{images}/", images / "val.txt", tmp_path / "db", "--no-progress")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and alive.exists() and other.exists()


def test_4_a_db_moved_aside_by_an_interrupted_overwrite_is_restored(tmp_path, images):
    dead = subprocess.Popen(["true"])
    dead.wait()
    aside = tmp_path / f".db.{lmdb_writer._HOST}-{dead.pid}.abc123.old"
    aside.mkdir()
    write_db(aside / "db", [datum(label=5)])
    one_error(cli("convert-imageset", f"{images}/", images / "val.txt", tmp_path / "db", "--no-progress"),
              "already exists")
    assert not aside.exists() and (tmp_path / "db" / "data.mdb").is_file()
    proc = run("inspect", tmp_path / "db")
    assert proc.returncode == 0 and "1 entries" in proc.stdout, proc.stderr


def test_4_sigterm_mid_build_removes_the_temporary_db_and_keeps_the_old_one(images, tmp_path):
    db = write_db(tmp_path / "db", [datum()])
    before = (db / "data.mdb").read_bytes()
    proc = script(f"""
        import os, signal
        from caffe_compat.cli import main
        from caffe_compat.data import lmdb_writer
        real = lmdb_writer.LMDBBuilder.commit
        def commit_then_terminate(self):
            real(self)
            if self.count:
                os.kill(os.getpid(), signal.SIGTERM)
        lmdb_writer.LMDBBuilder.commit = commit_then_terminate
        lmdb_writer.LMDBBuilder.__init__.__defaults__ = (lmdb_writer.INITIAL_MAP_SIZE, 2)
        main(["convert-imageset", {f"{images}/"!r}, {str(images / 'train.txt')!r}, {str(db)!r}, "--overwrite",
              "--no-progress"])
    """)
    proc_error(proc, "terminated by SIGTERM", code=128 + signal.SIGTERM)
    assert (db / "data.mdb").read_bytes() == before
    assert leftovers(tmp_path) == []


@pytest.fixture()
def tiny_disk(tmp_path: Path):
    """A 1 MiB tmpfs (needs root, as tests run here; skipped elsewhere): a real full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int = 0) -> None:
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))


def test_4_5_real_full_disk_never_kills_by_signal(images, tiny_disk, fixtures):
    proc = run("convert-imageset", f"{images}/", images / "train.txt", tiny_disk / "db", "--resize_width", 256,
               "--resize_height", 256, "--no-progress")
    proc_error(proc, "No space left on device", "nothing written")
    assert sorted(os.listdir(tiny_disk)) == []
    _fill(tiny_disk)
    proc_error(run("compute-image-mean", fixtures / "lmdb" / "train_raw32_lmdb", tiny_disk / "mean.binaryproto"),
               "mean.binaryproto: cannot write the output")
    sheet = tiny_disk.parent / "s.csv"
    sheet.write_text("\n".join(_sheet(3000)) + "\n")
    proc_error(run("workflow", "clean-annotations", sheet, "-o", tiny_disk / "c.csv"), "c.csv: cannot write")
    assert sorted(os.listdir(tiny_disk)) == ["filler"]


# ---------------------------------------------------------------------------- 5. full disk everywhere


def full_disk(monkeypatch) -> None:
    """Every atomic write fails from now on as on a full disk (at its fsync: after the data was written)."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", fsync)


def test_5_full_disk_is_one_line_naming_the_output(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net_text = ('name: "n" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 '
                'dim: 4 dim: 4 } } } layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                'inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }')
    Path("deploy.prototxt").write_text(net_text)
    write_caffemodel("w.caffemodel", CaffeNet(parse_net_text(net_text)).to_net_parameter())
    write_video(tmp_path / "v1.avi", 5)
    Path("frames.csv").write_text("video_id,frame,frame_index,score,sharpness\nv,v_0.jpg,0,70,1\n")
    Path("s.csv").write_text("\n".join(_sheet(5)) + "\n")
    (tmp_path / "out").mkdir()
    for name in ("test.prototxt", "weights.caffemodel", "mean.binaryproto", "test_lmdb"):
        (shutil.copytree if name.endswith("lmdb") else shutil.copy)(fixtures / "test" / name, tmp_path / name)
    commands = [
        (("compute-image-mean", fixtures / "lmdb" / "train_raw32_lmdb", "mean.binaryproto"), "mean.binaryproto"),
        (("export-onnx", "-model", "deploy.prototxt", "-weights", "w.caffemodel", "-o", "m.onnx"), "m.onnx"),
        (("upgrade-net-proto-text", fixtures / "upgrade" / "train_val_upgraded.prototxt", "up.prototxt"),
         "up.prototxt"),
        (("workflow", "clean-annotations", "s.csv", "-o", "c.csv"), "c.csv"),
        (("workflow", "extract-frames", tmp_path / "v1.avi", "-o", "frames", "--every", 1, "--no-progress"), "v1_0.jpg"),
        (("workflow", "balance-split", "frames.csv", "-o", "out"), "out/train.txt"),
        (("plot-log", fixtures / "solver" / "sgd_step" / "train.log", "-o", "curves.png"), "curves.png"),
        (("test", "-model", "test.prototxt", "-weights", "weights.caffemodel", "-iterations", 1, "--report", "rep"),
         "rep/"),
    ]
    full_disk(monkeypatch)
    for args, output in commands:
        line = one_error(cli(*args), output, "No space left on device")
        assert "cannot write" in line
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")) == []


# ---------------------------------------------------------------------------- 6. records that are not datums


@pytest.mark.parametrize("bad, message", [
    (b"\xff" * 8, "not a Caffe Datum"),
    (caffe_pb2.Datum(channels=0, height=0, width=0, label=1).SerializeToString(), "empty datum"),
    (datum((3, 5, 5)), "has 75 values"),
])
def test_6_bad_records_name_their_key(tmp_path, bad, message):
    db = write_db(tmp_path / "db", [datum(), datum(), bad, datum()])
    line = one_error(cli("compute-image-mean", db, tmp_path / "mean.binaryproto"), "00000002_img", message)
    assert str(db) in line
    assert not (tmp_path / "mean.binaryproto").exists()


def test_6_a_first_record_that_is_empty_writes_no_mean(tmp_path):
    db = write_db(tmp_path / "db", [caffe_pb2.Datum(label=1).SerializeToString(), datum()])
    one_error(cli("compute-image-mean", db, tmp_path / "mean.binaryproto"), "00000000_img", "empty datum")
    assert not (tmp_path / "mean.binaryproto").exists()


def test_6_bad_records_in_test_and_inspect(test_net, monkeypatch):
    monkeypatch.chdir(test_net)
    write_db(test_net / "test_lmdb", [b"\xff" * 8, datum((3, 20, 20))])
    one_error(cli("inspect", "test_lmdb"), "00000000_img", "is not a Caffe Datum")
    one_error(cli("test", "-model", "test.prototxt", "-weights", "weights.caffemodel", "-iterations", 1),
              "test_lmdb", "00000000_img", "not a Caffe Datum")


@pytest.mark.parametrize("bad, message", [
    (b"\xff" * 8, "'00000011_img': not a Caffe Datum"),
    (datum((1, 30, 30)), "'00000008_img' is (1, 28, 28), '00000011_img' is (1, 30, 30)"),
])
def test_6_bad_record_read_by_a_dataloader_worker_in_train(fixtures, tmp_path, monkeypatch, bad, message):
    work = lenet_workdir(fixtures, tmp_path)
    source = (work / "data" / "train_lmdb").resolve()
    (work / "data" / "train_lmdb").unlink()
    from caffe_compat.data.lmdb_dataset import iter_records

    values = [bytes(v) for _, v in iter_records(source)][:16]
    values[11] = bad
    write_db(work / "data" / "train_lmdb", values)
    (work / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 3 '
                                          'snapshot_after_train: false solver_mode: CPU')
    monkeypatch.chdir(work)
    line = one_error(cli("train", "-solver", "solver.prototxt", "-workers", 2, "--no-progress"),
                     "data/train_lmdb", message, "(in a data loader worker)")
    assert "Original Traceback" not in line


# ---------------------------------------------------------------------------- 7. export-onnx


PARTIAL_NET = """name: "three"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 4 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 4 } }
layer { name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3" inner_product_param { num_output: 2 } }
"""


def test_7_weights_covering_a_third_of_the_layers_are_an_error(tmp_path):
    (tmp_path / "deploy.prototxt").write_text(PARTIAL_NET)
    one_layer = PARTIAL_NET[: PARTIAL_NET.index('layer { name: "ip2"')]
    write_caffemodel(tmp_path / "w.caffemodel", CaffeNet(parse_net_text(one_layer)).to_net_parameter())
    args = ["export-onnx", "-model", tmp_path / "deploy.prototxt", "-weights", tmp_path / "w.caffemodel",
            "-o", tmp_path / "m.onnx"]
    one_error(cli(*args), "w.caffemodel", "no weights for 2 of the 3", "ip2, ip3", "--allow-fillers")
    assert not (tmp_path / "m.onnx").exists()
    allowed = cli(*args, "--allow-fillers")
    assert allowed.exit_code == 0 and "keep their filler values: ip2, ip3" in allowed.output, allowed.output


@pytest.mark.parametrize("dims", ["dim: 1 dim: -4", "dim: 0 dim: 4"])
def test_7_input_dimensions_below_one_are_an_error(tmp_path, dims):
    text = PARTIAL_NET.replace("dim: 1 dim: 4", dims)
    (tmp_path / "deploy.prototxt").write_text(text)
    write_caffemodel(tmp_path / "w.caffemodel", CaffeNet(parse_net_text(PARTIAL_NET)).to_net_parameter())
    one_error(cli("export-onnx", "-model", tmp_path / "deploy.prototxt", "-weights", tmp_path / "w.caffemodel",
                  "-o", tmp_path / "m.onnx"), "deploy.prototxt", "input 'data'", "at least 1")
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------- 8. resource exhaustion


def _xlsx_with_sheet(path: Path, transform) -> Path:
    base = write_xlsx(path.with_suffix(".base.xlsx"), [["url", "score"], ["http://x/a.mp4", 70]])
    with zipfile.ZipFile(base) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            zout.writestr(name, transform(data) if name == "xl/worksheets/sheet1.xml" else data)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda x: x.replace(b'r="B2"', b'r="JZZZZZ2"'), "'JZZZZZ2' is not a column and a row"),
    (lambda x: x.replace(b'r="B2"', b'r="XFE2"'), "past Excel's last column XFD"),
    (lambda x: x.replace(b'<row r="2"', b'<row r="99999999999"'), "not a number from 1 to 1048576"),
    (lambda x: x.replace(b"<v>70</v>", b"<v>seventy</v>"), "cell B2: 'seventy' is marked as a number"),
    (lambda x: x.replace(b'<c r="A2" t="s"><v>2</v>', b'<c r="A2" t="s"><v>99</v>'), "shared string '99'"),
])
def test_8_bad_xlsx_cells_fail_fast_in_little_memory(tmp_path, edit, message):
    sheet = _xlsx_with_sheet(tmp_path / "s.xlsx", edit)
    tracemalloc.start()
    try:
        result = cli("workflow", "clean-annotations", sheet, "-o", tmp_path / "c.csv")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_error(result, "s.xlsx", message)
    assert peak < 64 << 20


def _patch_sizes(path: Path, member: str, size: int) -> None:
    """Make the zip headers of ``member`` claim ``size`` unpacked bytes (what a zip bomb does)."""
    raw = bytearray(path.read_bytes())
    name = member.encode()
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.find(signature + b"")
        while at >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if raw[name_at : name_at + len(name)] == name:
                raw[at + offset : at + offset + 4] = size.to_bytes(4, "little")
            at = raw.find(signature, at + 4)
    path.write_bytes(bytes(raw))


def test_8_zip_bombs_are_refused_before_unpacking(tmp_path):
    claims_big = _xlsx_with_sheet(tmp_path / "big.xlsx", lambda x: x)
    _patch_sizes(claims_big, "xl/worksheets/sheet1.xml", 0xF0000000)
    one_error(cli("workflow", "clean-annotations", claims_big, "-o", tmp_path / "c.csv"),
              "unpacks to 3,840 MiB", "at most 128 MiB")
    lies_small = _xlsx_with_sheet(tmp_path / "small.xlsx", lambda x: x.replace(b"</sheetData>", b"<!--" + b"A" * (4 << 20) + b"--></sheetData>"))
    _patch_sizes(lies_small, "xl/worksheets/sheet1.xml", 400)
    one_error(cli("workflow", "clean-annotations", lies_small, "-o", tmp_path / "c.csv"), "not a readable .xlsx")


def test_8_balance_caps_past_any_list_are_refused_before_allocating(tmp_path):
    manifest = tmp_path / "frames.csv"
    manifest.write_text("video_id,frame,frame_index,score,sharpness\nv,v_0.jpg,0,70,1\nw,w_0.jpg,0,71,1\n")
    tracemalloc.start()
    try:
        result = cli("workflow", "balance-split", manifest, "-o", tmp_path / "lists", "--train-per-class", 100000000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_error(result, "--train-per-class 100000000", "200,000,000 list lines")
    assert peak < 64 << 20


def test_8_a_server_dribbling_bytes_is_cut_off_at_the_deadline(server, tmp_path):
    sheet = tmp_path / "clean.csv"
    sheet.write_text(f"url,video_id,score\n{server}/drip.mp4,drip,70\n{server}/slowhead.mp4,slow,71\n")
    proc = run("workflow", "download-videos", sheet, "-o", tmp_path / "out", "--timeout", 2, "--max-time", 1,
               "--retries", 0, "--no-progress", timeout=60)
    assert proc.returncode == 0, proc.stderr
    manifest = (tmp_path / "out" / "download_manifest.csv").read_text()
    assert manifest.count("failed") == 2 and manifest.count("gave up after 1 s (--max-time)") == 2, manifest
    assert sorted(p for p in os.listdir(tmp_path / "out") if not p.endswith(".part")) == ["download_manifest.csv"]


def test_8_empty_downloads_are_never_done(server, tmp_path):
    sheet = tmp_path / "clean.csv"
    sheet.write_text(f"url,video_id,score\n{server}/empty.mp4,e,70\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "e.mp4").write_bytes(b"")  # an empty file from an earlier run is not finished
    result = cli("workflow", "download-videos", sheet, "-o", tmp_path / "out", "--retries", 1, "--backoff", 0,
                 "--no-progress")
    assert result.exit_code == 0, result.output
    manifest = (tmp_path / "out" / "download_manifest.csv").read_text()
    assert ",failed," in manifest and "empty body" in manifest and ",downloaded," not in manifest, manifest


# ---------------------------------------------------------------------------- 9. arguments


SOLVER = 'net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: {max_iter} solver_mode: CPU ' \
         'snapshot_prefix: "snap/lenet"'


@pytest.mark.parametrize("args", [
    ("train", "-solver", "s.prototxt", "-workers", -1),
    ("train", "-solver", "s.prototxt", "-iterations", -5),
    ("convert-imageset", "r/", "l.txt", "db", "--resize_width", -1),
    ("predict", "--onnx", "m.onnx", "-batch_size", 0, "x.jpg"),
    ("predict", "--onnx", "m.onnx", "-top_k", -3, "x.jpg"),
    ("predict", "--onnx", "m.onnx", "-crop_size", 0, "x.jpg"),
    ("compare", "a.npz", "b.npz", "--atol", -1),
    ("workflow", "download-videos", "c.csv", "-o", "o", "--timeout", 0),
    ("workflow", "download-videos", "c.csv", "-o", "o", "--retries", -1),
    ("workflow", "extract-frames", "v", "-o", "o", "--every", 0),
    ("workflow", "balance-split", "m.csv", "-o", "o", "--train-per-class", -1),
])
def test_9_numeric_flags_out_of_range_are_usage_errors(args):
    result = cli(*args)
    assert result.exit_code == 2 and "Invalid value" in result.output, result.output


def test_9_solver_and_solverstate_values(fixtures, tmp_path, monkeypatch):
    work = lenet_workdir(fixtures, tmp_path)
    (work / "snap").mkdir()
    monkeypatch.chdir(work)
    Path("s.prototxt").write_text(SOLVER.format(max_iter=-5))
    one_error(cli("train", "-solver", "s.prototxt"), "s.prototxt", "max_iter must be >= 0 (got -5)")
    Path("s.prototxt").write_text(SOLVER.format(max_iter=2))
    state = caffe_pb2.SolverState(iter=-100, learned_net="init.caffemodel")
    write_solverstate("bad.solverstate", state)
    one_error(cli("train", "-solver", "s.prototxt", "-snapshot", "bad.solverstate"), "bad.solverstate",
              "iter -100")
    for suffix in (".solverstate", ".caffemodel"):
        shutil.copy(fixtures / "solver" / "sgd_step" / f"lenet_iter_6{suffix}", f"ok{suffix}")
    state = caffe_pb2.SolverState.FromString(Path("ok.solverstate").read_bytes())
    state.learned_net = "ok.caffemodel"
    write_solverstate("ok.solverstate", state)
    torch.save({"iter": 6, "format": 1}, "ok.solverstate.resume.pt")
    one_error(cli("train", "-solver", "s.prototxt", "-snapshot", "ok.solverstate"), "ok.solverstate.resume.pt",
              "damaged resume sidecar", "rng, smoothing, test_data, train_data")
    torch.save({"iter": 6, "format": 1, "train_data": [{}], "test_data": [], "rng": {}, "smoothing": {}},
               "ok.solverstate.resume.pt")
    one_error(cli("train", "-solver", "s.prototxt", "-snapshot", "ok.solverstate"), "ok.solverstate.resume.pt",
              "damaged resume sidecar (KeyError")


def test_9_predict_resize_past_any_image(tmp_path):
    one_error(cli("predict", "--onnx", tmp_path / "m.onnx", "--resize", "100000x100000", tmp_path / "x.jpg"),
              "--resize 100000x100000", "too big")


def test_9_convert_resize_past_caffes_blob_limit(images, tmp_path):
    one_error(cli("convert-imageset", f"{images}/", images / "val.txt", tmp_path / "db", "--resize_width", 100000,
                  "--resize_height", 100000), "INT_MAX")
    assert not (tmp_path / "db").exists()


def test_9_report_folder_under_a_file(test_net, fixtures, monkeypatch):
    monkeypatch.chdir(test_net)
    shutil.copytree(fixtures / "test" / "test_lmdb", test_net / "test_lmdb")
    Path("afile").write_text("x")
    one_error(cli("test", "-model", "test.prototxt", "-weights", "weights.caffemodel", "-iterations", 1,
                  "--report", "afile/report"), "afile")
    assert Path("afile").read_text() == "x"


def _npy_header(shape, dtype="<f8") -> bytes:
    import io

    buffer = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def test_9_npy_headers_declaring_petabytes_and_object_arrays(fixtures, tmp_path):
    huge = tmp_path / "huge.npy"
    huge.write_bytes(_npy_header((10**9, 10**6)) + b"\0" * 64)
    model = fixtures / "upgrade" / "deploy_upgraded.prototxt"
    one_error(cli("forward", "-model", model, "-input", f"data={huge}", "-o", tmp_path / "o.npz"),
              "huge.npy", "8,000,000,000,000,000 bytes", "only 64 bytes follow")
    objects = tmp_path / "objects.npz"
    np.savez(objects, prob=np.array([1, "a", None], dtype=object))
    one_error(cli("compare", objects, objects), "objects.npz: array 'prob'", "Python objects")
    claims = tmp_path / "claims.npz"
    with zipfile.ZipFile(claims, "w") as archive:
        archive.writestr("prob.npy", _npy_header((10**12,)) + b"\0" * 80)
    one_error(cli("compare", claims, claims), "array 'prob'", "only 80 bytes follow")


# ---------------------------------------------------------------------------- 10. forked workers


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux's")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_10_compute_image_mean_workers_die_with_their_parent(tmp_path, how):
    write_db(tmp_path / "db", [datum((3, 8, 8), fill=i % 200) for i in range(400)])
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from caffe_compat.cli import main
        from caffe_compat.data import datum, image_mean
        real = datum.RawLayout.flat_pixels
        def slow(self, value):  # every worker takes ~20 s
            time.sleep(0.1)
            return real(self, value)
        datum.RawLayout.flat_pixels = slow
        image_mean._cores = lambda: 2
        main(["compute-image-mean", {str(tmp_path / 'db')!r}, {str(tmp_path / 'mean.binaryproto')!r}])
    """)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    children: list[int] = []
    while not children and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        children = _children(proc.pid)
    assert children, "compute-image-mean forked no worker"
    time.sleep(0.3)
    proc.send_signal(how)
    proc.wait(timeout=30)
    end = time.monotonic() + 5
    while any(_running(c) for c in children) and time.monotonic() < end:
        time.sleep(0.05)
    assert not any(_running(c) for c in children), "a worker outlived compute-image-mean"
    if how == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM
        assert proc.stderr.read().count(ERROR) == 1
    assert not (tmp_path / "mean.binaryproto").exists()


# ---------------------------------------------------------------------------- the rule itself


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, tmp_path):
    from caffe_compat.net import summary

    monkeypatch.setattr(summary, "inspect_lines", lambda *a: 1 / 0)
    line = one_error(cli("inspect", tmp_path), "unexpected ZeroDivisionError", "CAFFE_COMPAT_DEBUG=1")
    assert "a bug in caffe-compat" in line
    monkeypatch.setenv("CAFFE_COMPAT_DEBUG", "1")
    assert isinstance(cli("inspect", tmp_path).exception, ZeroDivisionError)


def test_os_and_memory_errors_are_one_line(monkeypatch, tmp_path):
    from caffe_compat.net import summary

    def missing(*a):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(tmp_path / "gone"))
    monkeypatch.setattr(summary, "inspect_lines", missing)
    one_error(cli("inspect", tmp_path), f"{tmp_path / 'gone'}: No such file or directory")

    def memory(*a):
        raise MemoryError()
    monkeypatch.setattr(summary, "inspect_lines", memory)
    one_error(cli("inspect", tmp_path), "out of memory")


def test_signal_handlers_are_restored_after_a_command(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    cli("inspect", tmp_path / "nothing")
    assert signal.getsignal(signal.SIGTERM) is before


def test_socket_deadline_closes_only_its_own_attempt():
    from caffe_compat.workflow.download import _Watch

    left, right = socket.socketpair()
    with _Watch(0.2) as watch:
        watch.add(left)
        assert left.recv(1) == b""  # shut down at the deadline instead of blocking forever
        assert watch.expired
    left.close()
    right.close()
