"""Data-pipeline throughput: convert-imageset, compute-image-mean, LMDB reader + transform.

    .venv/bin/python benchmarks/bench_data.py [--count 2000] [--workdir /tmp/caffe_compat_bench_data]

Generates ``count`` synthetic 350x350 colour JPEGs (quality 90), converts them to raw 256x256
datums at ``--jobs 1`` and with every core, computes the mean image, then reads the LMDB
through the Data layer's batch path (TRAIN: random 224 crop, mirror, mean values) on one core
and with DataLoader workers. Not a test: prints one line per measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from caffe_compat.data.batches import CaffeBatches, batch_loader
from caffe_compat.data.convert_imageset import ConvertOptions, convert_imageset, usable_cores
from caffe_compat.data.image_mean import compute_image_mean
from caffe_compat.data.lmdb_dataset import LMDBDataset
from caffe_compat.data.transformer import DataTransformer
from caffe_compat.net.registry import TRAIN
from caffe_compat.proto import caffe_pb2


def make_images(root: Path, count: int) -> Path:
    """Smooth gradients + shapes + noise, like real photos compress (not pure noise)."""
    images = root / "img"
    listing = root / "list.txt"
    if listing.exists() and len(listing.read_text().splitlines()) == count:
        return listing
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:350, 0:350].astype(np.float32)
    lines = []
    for i in range(count):
        a, b, c = rng.uniform(-0.5, 0.5, 3)
        base = np.stack([(xx * a + yy * b) % 256, (xx * b - yy * c) % 256, (xx * c + yy * a + 60) % 256], -1)
        img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        cv2.circle(img, tuple(int(v) for v in rng.integers(0, 350, 2)), int(rng.integers(20, 120)),
                   tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
        cv2.imwrite(str(images / f"im_{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines.append(f"im_{i:05d}.jpg {i % 1000}")
    listing.write_text("\n".join(lines) + "\n")
    return listing


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (forked workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Timer:
    """Wall time and CPU time (this process's threads and reaped children) of a block.

    On a shared machine the wall rate also measures the neighbours; the CPU rate does not.
    """

    def __enter__(self) -> "Timer":
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu


def bench_convert(root: Path, listing: Path, jobs: int) -> tuple[Path, int, Timer]:
    db = root / f"db_jobs{jobs}"
    shutil.rmtree(db, ignore_errors=True)
    with Timer() as t:
        summary = convert_imageset(f"{root}/img/", listing, db,
                                   ConvertOptions(resize_height=256, resize_width=256, jobs=jobs, progress=False))
    return db, summary.written, t


def bench_reader(db: Path, batches_per_run: int, num_workers: int, raw: bool = False) -> tuple[int, Timer]:
    """``raw``: uncropped uint8 batches, as training on a GPU reads them (the GPU transforms)."""
    param = caffe_pb2.TransformationParameter(crop_size=224, mirror=True, mean_value=[104, 117, 123])
    batches = CaffeBatches(LMDBDataset(db), DataTransformer(param, TRAIN), 64, raw=raw)
    loader = batch_loader(batches, num_workers=num_workers, stop=batches_per_run + 2)
    it = iter(loader)
    next(it), next(it)  # warm-up (worker start, page cache)
    with Timer() as t:
        n = sum(item[0].shape[0] for item in it)
    return n, t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/caffe_compat_bench_data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cores = usable_cores()
    listing = make_images(args.workdir, args.count)
    print(f"{args.count} JPEGs 350x350 -> raw 256x256; {cores} usable cores")

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    db, n, t = bench_convert(args.workdir, listing, 1)
    rate1 = n / t.wall
    print(f"convert-imageset --jobs 1: {rate1:8.1f} img/s wall, {n / t.cpu:8.1f} img/s per CPU-second")
    _, n, t = bench_convert(args.workdir, listing, cores)
    print(f"convert-imageset --jobs {cores}: {n / t.wall:8.1f} img/s wall ({n / t.wall / rate1:.2f}x --jobs 1), "
          f"{t.cpu:.1f} CPU-s")

    compute_image_mean(db, progress=False)  # warm the page cache
    with Timer() as t:
        result = compute_image_mean(db, progress=False)
    megabytes = result.count * result.mean.size / 1e6
    print(f"compute-image-mean: {megabytes / t.wall:8.1f} MB/s wall, {megabytes / t.cpu:8.1f} MB/s per CPU-second "
          f"({result.count} datums, {megabytes:.0f} MB of pixels)")

    batches = max(4, args.count // 64 - 2)
    n, t = bench_reader(db, batches, 0)
    print(f"reader+transform (crop 224, mirror, mean_value), 1 process: {n / t.wall:8.1f} img/s wall, "
          f"{n / t.cpu:8.1f} img/s per CPU-second")
    n, t = bench_reader(db, batches, cores)
    print(f"reader+transform with {cores} DataLoader workers: {n / t.wall:8.1f} img/s wall")
    for workers in (0, cores):
        n, t = bench_reader(db, batches, workers, raw=True)
        print(f"reader, uint8 batches for a GPU transform, {workers} DataLoader workers: {n / t.wall:8.1f} img/s wall")
    print(f"load average after: {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
