"""Throughput of the workflow steps at legacy scale, on this machine.

    .venv/bin/python benchmarks/bench_workflow.py [--videos 200] [--frames 250]

download: N videos of 256 KiB from a local HTTP server (127.0.0.1), --jobs 1 vs 8;
extract-frames: N/8 MJPG videos of 320x240 with F frames each, every 50, at most 10;
balance-split: a manifest of 25,879 videos x 10 frames (the legacy set's size).
"""

from __future__ import annotations

import argparse
import csv
import functools
import random
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caffe_compat.workflow.balance import BalanceOptions, balance_split  # noqa: E402
from caffe_compat.workflow.download import DownloadOptions, download_videos  # noqa: E402
from caffe_compat.workflow.frames import FrameOptions, extract_frames  # noqa: E402


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def bench_download(root: Path, count: int) -> None:
    served = root / "served"
    served.mkdir()
    payload = np.random.default_rng(0).integers(0, 256, 256 * 1024, dtype=np.uint8).tobytes()
    for i in range(count):
        (served / f"v{i:05d}.mp4").write_bytes(payload)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    clean = root / "clean.csv"
    clean.write_text("url\n" + "".join(f"{base}/v{i:05d}.mp4\n" for i in range(count)))
    for jobs in (1, 8):
        start = time.perf_counter()
        result = download_videos(clean, root / f"videos{jobs}", DownloadOptions(jobs=jobs, progress=False))
        took = time.perf_counter() - start
        assert result.counts["downloaded"] == count
        print(f"download: {count} x 256 KiB, --jobs {jobs}: {took:.2f} s ({count / took:.0f} videos/s)")
    httpd.shutdown()


def bench_frames(root: Path, count: int, frames: int) -> None:
    videos = root / "frames_videos"
    videos.mkdir()
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for i in range(count):
        writer = cv2.VideoWriter(str(videos / f"v{i:05d}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
        for f in range(frames):
            writer.write(np.roll(base, f, axis=1))
        writer.release()
    for jobs in (1, 2):
        start = time.perf_counter()
        result = extract_frames(videos, root / f"frames{jobs}", FrameOptions(every=50, max_frames=10, jobs=jobs, progress=False))
        took = time.perf_counter() - start
        print(f"extract-frames: {count} videos x {frames} frames 320x240 MJPG, every 50 max 10, --jobs {jobs}: "
              f"{took:.2f} s ({count / took:.1f} videos/s, {len(result.frames)} frames kept)")


def bench_balance(root: Path) -> None:
    rng = random.Random(2)
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "frame", "score"])
        for v in range(25879):
            score = min(99, max(60, int(rng.gauss(72, 6))))
            writer.writerows((f"v{v}", f"v{v}_{i * 50}.jpg", score) for i in range(10))
    start = time.perf_counter()
    result = balance_split(manifest, root / "lists", BalanceOptions(seed=0))
    took = time.perf_counter() - start
    print(f"balance-split: 258,790 frames of 25,879 videos -> {len(result.train)} train / {len(result.val)} val lines: {took:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--frames", type=int, default=250)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_download(root, args.videos)
        bench_frames(root, args.videos // 8, args.frames)
        bench_balance(root)


if __name__ == "__main__":
    main()
