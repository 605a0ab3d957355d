"""Side by side with a real Caffe build: wall times, alternating runs, medians.

    .venv/bin/python benchmarks/bench_vs_caffe.py --caffe-tools CAFFE/build/tools mean DB [DB ...]
    .venv/bin/python benchmarks/bench_vs_caffe.py --caffe-tools CAFFE/build/tools convert ROOT/ LIST

``mean`` times ``compute_image_mean DB out`` against ``caffe-compat compute-image-mean DB out``
and checks the two files are byte-identical; ``convert`` times ``convert_imageset
--resize_height=256 --resize_width=256`` against ours at ``--jobs 1`` and with every core and
checks the LMDBs hold identical key/value pairs. Caffe is not part of this project: build it
yourself (docs/benchmarks.md says how it was built for the recorded figures). Bigger DBs for
``mean``: repeat a list file (``for i in $(seq 20); do cat list.txt; done > list20.txt``) and
convert it. Not a test: prints one line per tool.

Two times per run: the whole process as a user waits for it (start-up included: Python and
numpy take about 0.1 s before any work, Caffe's dynamic linking less), and the work itself,
from the first glog line to the last one of the run (both tools log Caffe's lines: ``Opened
lmdb`` ... ``mean_value channel``; ``A total of`` ... ``Processed N files.``), from which MB/s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmdb

OURS = [str(Path(sys.executable).with_name("caffe-compat"))]  # the console script users run


_GLOG_TIME = re.compile(rb"^[IWEF]\d{4,8} (\d\d):(\d\d):(\d\d\.\d{6}) ", re.M)


def logged_span(stderr: bytes) -> float:
    """Seconds from the first glog line to the last (the clock's own time of day)."""
    stamps = [int(h) * 3600 + int(m) * 60 + float(s) for h, m, s in _GLOG_TIME.findall(stderr)]
    if len(stamps) < 2:
        raise SystemExit(f"fewer than two glog lines to time:\n{stderr.decode(errors='replace')}")
    return (stamps[-1] - stamps[0]) % 86400  # a run across midnight too


def wall(command: list[str]) -> tuple[float, float]:
    """Seconds one run of ``command`` takes, start-up included (as a user waits for it), and
    seconds of its work (:func:`logged_span`)."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env={**os.environ, "GLOG_logtostderr": "1"})
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr.decode(errors='replace')}")
    return took, logged_span(done.stderr)


def report(label: str, runs: list[tuple[float, float]], reference: tuple[float, float] | None,
           megabytes: float) -> tuple[float, float]:
    """One line per tool: medians of both times (and their ratio to Caffe's), the work's MB/s."""
    medians = statistics.median(w for w, _ in runs), statistics.median(s for _, s in runs)
    ratios = f", {reference[0] / medians[0]:.2f}x / {reference[1] / medians[1]:.2f}x Caffe" if reference else ""
    print(f"{label:34s} median {medians[0]:5.2f} s, work {medians[1]:5.2f} s = {megabytes / medians[1]:6.0f} MB/s"
          f"{ratios}  (runs: {', '.join(f'{w:.2f}/{s:.2f}' for w, s in runs)})")
    return medians


def bench_mean(tools: Path, dbs: list[Path], runs: int, work: Path) -> None:
    for db in dbs:
        theirs, ours = work / "caffe.binaryproto", work / "ours.binaryproto"
        caffe_times, our_times = [], []
        for _ in range(runs):  # alternate, so that drifts of the machine hit both alike
            caffe_times.append(wall([str(tools / "compute_image_mean"), str(db), str(theirs)]))
            our_times.append(wall([*OURS, "compute-image-mean", str(db), str(ours)]))
        same = theirs.read_bytes() == ours.read_bytes()
        megabytes = (db / "data.mdb").stat().st_size / 1e6
        print(f"== {db} ({megabytes / 1e3:.2f} GB), output {'byte-identical' if same else 'DIFFERENT'}")
        reference = report("Caffe compute_image_mean", caffe_times, None, megabytes)
        report("caffe-compat compute-image-mean", our_times, reference, megabytes)


def pairs_digest(db: Path) -> str:
    digest = hashlib.sha256()
    with lmdb.open(str(db), readonly=True, lock=False) as env, env.begin() as txn:
        for key, value in txn.cursor():
            digest.update(len(key).to_bytes(4, "little") + key + len(value).to_bytes(8, "little") + value)
    return digest.hexdigest()


def bench_convert(tools: Path, root: str, listing: Path, runs: int, work: Path) -> None:
    flags = ["--resize_height=256", "--resize_width=256"]
    variants = {"Caffe convert_imageset": [str(tools / "convert_imageset"), *flags],
                "caffe-compat --jobs 1": [*OURS, "convert-imageset", *flags, "--jobs", "1", "--overwrite"],
                f"caffe-compat --jobs {os.cpu_count()}": [*OURS, "convert-imageset", *flags, "--overwrite"]}
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in variants}
    digests = set()
    for _ in range(runs):
        for label, command in variants.items():
            db = work / "db"
            shutil.rmtree(db, ignore_errors=True)
            times[label].append(wall([*command, root, str(listing), str(db)]))
            digests.add(pairs_digest(db))
    print(f"== {listing}: the LMDBs hold {'identical' if len(digests) == 1 else 'DIFFERENT'} key/value pairs")
    megabytes = (work / "db" / "data.mdb").stat().st_size / 1e6  # written
    reference = None
    for label, measured in times.items():
        medians = report(label, measured, reference, megabytes)
        reference = reference or medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caffe-tools", type=Path, required=True, help="Caffe's build/tools directory")
    ap.add_argument("--runs", type=int, default=7)
    sub = ap.add_subparsers(dest="what", required=True)
    mean = sub.add_parser("mean")
    mean.add_argument("dbs", type=Path, nargs="+")
    convert = sub.add_parser("convert")
    convert.add_argument("root")
    convert.add_argument("listing", type=Path)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as work:
        if args.what == "mean":
            bench_mean(args.caffe_tools, args.dbs, args.runs, Path(work))
        else:
            bench_convert(args.caffe_tools, args.root, args.listing, args.runs, Path(work))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
