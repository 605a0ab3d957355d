"""Acceptance: the whole legacy workflow on a tiny synthetic set, counts checked at every step.

sheet.xlsx -> clean-annotations -> download-videos (local HTTP server) -> extract-frames ->
plot-distribution -> balance-split -> convert-imageset, all through the CLI.
"""

from __future__ import annotations

import csv
import functools
import math
import subprocess
import sys
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.data.listfile import read_list
from caffe_compat.data.lmdb_dataset import count_records
from tests.workflow_util import write_video, write_xlsx

ROOT = Path(__file__).resolve().parents[1]
HEADER = ["视频链接", "人工评价颜值", "人工识别性别", "人工推测年龄（数字）", "备注"]
SCORES = {f"g{i:02d}": score for i, score in enumerate([60] * 4 + [75] * 5 + [99] * 3, start=1)}
FRAMES = {vid: 6 + 3 * i for i, vid in enumerate(SCORES)}  # 6, 9, ..., 39 frames
NOISE = {  # remark or score -> rows dropped for it
    "已删除": 1, "未露脸": 1, "多人出镜": 1, "人脸不全": 1, "疑似非本人作品": 1,
    "not scored ('-')": 1, "score not numeric": 1, "score out of range": 1,
}
EVERY, MAX = 5, 3


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def site(tmp_path):
    """The synthetic videos, one HTML page naming a video, and a broken 'video', served on 127.0.0.1."""
    served = tmp_path / "site"
    (served / "media").mkdir(parents=True)
    for vid, n in FRAMES.items():
        write_video(served / "media" / f"{vid}.avi", n)
    (served / "g03.html").write_text('<html><video src="media/g03.avi"></video></html>', encoding="utf-8")
    (served / "media" / "bad01.mp4").write_bytes(b"this is an error page, not a video" * 30)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def make_sheet(path: Path, base: str) -> Path:
    rows = [HEADER]
    for vid, score in SCORES.items():
        url = f"{base}/g03.html" if vid == "g03" else f"{base}/media/{vid}.avi"
        rows.append([url, score, "女", 20, "光线较暗" if vid == "g05" else ""])
    rows.append([f"{base}/media/bad01.mp4", 80, "男", 30, ""])
    for i, remark in enumerate(list(NOISE)[:5]):
        rows.append([f"{base}/media/n{i}.avi", 70, "女", 20, remark])
    rows += [[f"{base}/media/n5.avi", "-", "", "", ""], [f"{base}/media/n6.avi", "八十", "女", 20, ""],
             [f"{base}/media/n7.avi", 100, "女", 20, ""]]
    return write_xlsx(path, rows)


def run(*args: str) -> str:
    result = CliRunner().invoke(main, ["workflow", *args])
    assert result.exit_code == 0, result.output
    return result.output


def table_counts(output: str) -> dict[str, int]:
    """``reason  n`` lines of a printed count table."""
    counts = {}
    for line in output.splitlines():
        head, _, tail = line.rpartition(" ")
        if head.strip() and tail.isdigit():
            counts[head.strip()] = int(tail)
    return counts


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_whole_workflow_counts_at_every_step(site, tmp_path):
    work = tmp_path / "work"
    sheet = make_sheet(tmp_path / "sheet.xlsx", site)

    # 1. clean: one row dropped per reason, the rest kept
    out = run("clean-annotations", str(sheet), "-o", str(work / "clean.csv"))
    assert {k: v for k, v in table_counts(out).items() if k in NOISE} == NOISE
    assert "八十" in out and ":22: score 100 is outside 60..99" in out  # bad scores named by row
    clean = read_rows(work / "clean.csv")
    assert [r["video_id"] for r in clean] == list(SCORES) + ["bad01"]

    # 2. download: every clean row fetched (one through an HTML page)
    out = run("download-videos", str(work / "clean.csv"), "-o", str(work / "videos"), "--jobs", "3", "--backoff", "0")
    manifest = read_rows(work / "videos" / "download_manifest.csv")
    assert Counter(r["status"] for r in manifest) == {"downloaded": 13}
    assert (work / "videos" / "g03.avi").read_bytes() == (tmp_path / "site" / "media" / "g03.avi").read_bytes()

    # 3. frames: every 5th frame, at most 3 per video; the broken download is named
    out = run("extract-frames", str(work / "videos"), "-o", str(work / "frames"), "--every", str(EVERY),
              "--max", str(MAX), "--annotations", str(work / "clean.csv"))
    assert "bad01.mp4: not a video" in out
    frames = read_rows(work / "frames" / "frames_manifest.csv")
    per_video = Counter(r["video_id"] for r in frames)
    assert per_video == {vid: min(MAX, math.ceil(n / EVERY)) for vid, n in FRAMES.items()}
    assert all(r["score"] == str(SCORES[r["video_id"]]) for r in frames)
    assert all(r["frame"] == f"{r['video_id']}_{r['frame_index']}.jpg" for r in frames)

    # 4. distribution of frame scores
    out = run("plot-distribution", str(work / "frames" / "frames_manifest.csv"), "-o", str(work / "hist.png"))
    by_score = Counter()
    for vid, n in per_video.items():
        by_score[SCORES[vid]] += n
    counts = table_counts(out)
    assert {s: counts[str(s)] for s in (60, 75, 99)} == by_score and counts["61"] == 0
    assert (work / "hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # 5. balance: split by video, exactly 6 train / 2 val per class
    run("balance-split", str(work / "frames" / "frames_manifest.csv"), "-o", str(work / "lists"),
        "--ratio", "5:1", "--train-per-class", "6", "--val-per-class", "2", "--seed", "3")
    train, val = read_list(work / "lists" / "train.txt"), read_list(work / "lists" / "val.txt")
    assert not train.warnings and not val.warnings
    assert Counter(e.label for e in train.entries) == {0: 6, 15: 6, 39: 6}
    assert Counter(e.label for e in val.entries) == {0: 2, 15: 2, 39: 2}
    video_of = lambda e: e.name.decode().rsplit("_", 1)[0]  # noqa: E731
    assert not {video_of(e) for e in train.entries} & {video_of(e) for e in val.entries}
    assert all(e.label == SCORES[video_of(e)] - 60 for e in train.entries + val.entries)

    # ... and convert-imageset reads the lists with the frames folder as root
    convert = CliRunner().invoke(main, ["convert-imageset", "--resize_height=16", "--resize_width=16",
                                        f"{work / 'frames'}/", str(work / "lists" / "train.txt"), str(work / "train_lmdb")])
    assert convert.exit_code == 0, convert.output
    assert count_records(work / "train_lmdb") == 18

    # the scripts/ entry points run the same commands
    script = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_distribution.py"), str(work / "lists" / "val.txt"),
                             "-o", str(work / "val_hist.png")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert script.returncode == 0, script.stderr
    assert table_counts(script.stdout)["total"] == 6


def test_bad_input_messages_through_the_cli(tmp_path):
    runner = CliRunner()
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("视频链接,备注\nhttp://h/a.mp4,\n", encoding="utf-8")
    empty = tmp_path / "frames"
    empty.mkdir()
    notvideo = tmp_path / "clip.mp4"
    notvideo.write_text("hello")
    cases = [
        (["clean-annotations", str(sheet), "-o", str(tmp_path / "c.csv")], "missing column(s): score"),
        (["extract-frames", str(notvideo), "-o", str(tmp_path / "f")], "clip.mp4: not a video"),
        (["extract-frames", str(empty), "-o", str(tmp_path / "f")], "no video files in this folder"),
        (["balance-split", str(empty / "frames_manifest.csv"), "-o", str(tmp_path / "l")], "frames_manifest.csv: no such file"),
    ]
    for args, message in cases:
        result = runner.invoke(main, ["workflow", *args])
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
