"""``caffe-compat workflow <step>``: the legacy data pipeline, one subcommand per step.

sheet -> clean-annotations -> download-videos -> extract-frames -> plot-distribution ->
balance-split -> convert-imageset. Each subcommand is a thin wrapper over
:mod:`caffe_compat.workflow`; ``scripts/<step>.py`` run the same commands.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option, progress_option, want_progress
from caffe_compat.workflow.annotations import DEFAULT_EXCLUDED_REMARKS, DEFAULT_MISSING_SCORES, CleanOptions, clean_annotations
from caffe_compat.workflow.balance import BalanceOptions, balance_split, parse_ratio
from caffe_compat.workflow.distribution import plot_distribution
from caffe_compat.workflow.download import DownloadOptions, download_videos
from caffe_compat.workflow.frames import FrameOptions, extract_frames, face_detector_from_model


@main.group("workflow")
def workflow() -> None:
    """The legacy data pipeline: annotation sheet -> videos -> frames -> balanced Caffe lists."""


def _notices(messages: list[str], limit: int = 20) -> None:
    """Print per-row notices to stderr, at most ``limit`` of them."""
    for message in messages[:limit]:
        click.echo(f"note: {message}", err=True)
    if len(messages) > limit:
        click.echo(f"note: ... and {len(messages) - limit} more", err=True)


@workflow.command("clean-annotations")
@click.argument("sheet", type=click.Path(dir_okay=False))
@caffe_option("output", "-o", required=True, type=click.Path(dir_okay=False), help="Clean CSV to write.")
@caffe_option("exclude-remark", multiple=True,
              help=f"Drop rows whose remark contains this (repeatable; replaces the default {', '.join(DEFAULT_EXCLUDED_REMARKS)}; "
                   "'' keeps every remark).")
@caffe_option("missing-score", multiple=True, help=f"Score cell meaning 'not scored' (repeatable; default {' '.join(DEFAULT_MISSING_SCORES)}).")
@caffe_option("sheet-name", default=None, help="XLSX worksheet to read (default: the first).")
@caffe_option("strict", is_flag=True, help="Stop at the first unusable score instead of dropping the row.")
def clean_annotations_cmd(sheet: str, output: str, exclude_remark: tuple[str, ...], missing_score: tuple[str, ...],
                          sheet_name: str | None, strict: bool) -> None:
    """Drop noisy rows of an annotation SHEET (.csv/.tsv/.xlsx) and print the count per reason."""
    options = CleanOptions(
        excluded_remarks=exclude_remark or DEFAULT_EXCLUDED_REMARKS,
        missing_scores=missing_score or DEFAULT_MISSING_SCORES,
        strict=strict,
        sheet=sheet_name,
    )
    result = clean_annotations(sheet, output, options)
    _notices(result.messages)
    click.echo(result.table())
    click.echo(f"wrote {len(result.rows)} rows to {output}")


@workflow.command("download-videos")
@click.argument("clean_csv", type=click.Path(dir_okay=False))
@caffe_option("output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the videos.")
@caffe_option("jobs", "-j", type=click.IntRange(min=1), default=4, show_default=True, help="Concurrent downloads.")
@caffe_option("retries", type=click.IntRange(0, 100), default=3, show_default=True, help="Retries per URL on transient errors.")
@caffe_option("backoff", type=click.FloatRange(0, 3600), default=1.0, show_default=True,
              help="First retry delay in seconds (doubles each retry).")
@caffe_option("timeout", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
              help="Network timeout in seconds, per connect and read.")
@caffe_option("max-time", type=click.FloatRange(0, min_open=True), default=1800.0, show_default=True,
              help="Most seconds one download attempt may take, however slowly the server sends.")
@caffe_option("speed-limit", type=click.FloatRange(0), default=1024.0, show_default=True,
              help="Bytes per second below which a transfer is cut off (and retried) once it lasts --speed-time.")
@caffe_option("speed-time", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds a transfer may stay below --speed-limit [default: --timeout].")
@caffe_option("manifest", default=None, type=click.Path(dir_okay=False), help="Manifest CSV (default OUTPUT/download_manifest.csv).")
@progress_option()
def download_videos_cmd(clean_csv: str, output: str, jobs: int, retries: int, backoff: float, timeout: float,
                        max_time: float, speed_limit: float, speed_time: float | None, manifest: str | None,
                        progress: bool | None) -> None:
    """Download every URL of CLEAN_CSV, resuming partial files and skipping finished ones."""
    options = DownloadOptions(jobs, retries, backoff, timeout, progress=want_progress(progress), max_time=max_time,
                              speed_limit=speed_limit, speed_time=speed_time)
    result = download_videos(clean_csv, output, options, manifest)
    _notices([f"row {r['row']} ({r['url']}): {r['error']}" for r in result.rows if r["status"] == "failed"])
    click.echo(result.table())
    click.echo(f"manifest: {result.manifest}")


@workflow.command("extract-frames")
@click.argument("videos", type=click.Path())
@caffe_option("output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the frames.")
@caffe_option("every", type=click.IntRange(min=1), default=50, show_default=True, help="Keep one frame in this many.")
@caffe_option("max", "max_frames", type=click.IntRange(min=1), default=10, show_default=True,
              help="At most this many frames per video.")
@caffe_option("annotations", default=None, type=click.Path(dir_okay=False), help="Clean CSV giving each video's score.")
@caffe_option("face", is_flag=True, help="Keep frames with exactly one face (OpenCV's Haar cascade unless --face-model).")
@caffe_option("face-model", default=None, type=click.Path(dir_okay=False),
              help="Face detector model: a Haar cascade .xml or a YuNet .onnx (implies --face).")
@caffe_option("crop-margin", default=None, type=click.FloatRange(0, 10),
              help="Crop to the face, growing its box by this fraction per side.")
@caffe_option("min-sharpness", default=None, type=click.FloatRange(min=0),
              help="Drop frames whose variance of Laplacian is below this.")
@caffe_option("jobs", "-j", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="all cores",
              help="Videos decoded at once.")
@progress_option()
def extract_frames_cmd(videos: str, output: str, every: int, max_frames: int, annotations: str | None, face: bool,
                       face_model: str | None, crop_margin: float | None, min_sharpness: float | None, jobs: int,
                       progress: bool | None) -> None:
    """Save every N-th frame of each video in VIDEOS (a folder or one file) as <videoid>_<frameidx>.jpg."""
    if crop_margin is not None and not (face or face_model):
        raise click.UsageError("--crop-margin needs --face or --face-model")
    detector = face_detector_from_model(face_model) if (face or face_model) else None
    options = FrameOptions(every=every, max_frames=max_frames, face_detector=detector,
                           crop_margin=crop_margin, min_sharpness=min_sharpness, jobs=jobs,
                           progress=want_progress(progress))
    result = extract_frames(videos, output, options, annotations)
    _notices(result.messages)
    click.echo(result.table())
    click.echo(f"manifest: {result.manifest}")


@workflow.command("plot-distribution")
@click.argument("source", type=click.Path(dir_okay=False))
@caffe_option("output", "-o", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@caffe_option("label-offset", default=60, show_default=True, help="Added to list-file labels to give scores.")
@caffe_option("title", default=None, help="Plot title.")
@caffe_option("log", "log_scale", is_flag=True, help="Logarithmic image-count axis.")
def plot_distribution_cmd(source: str, output: str, label_offset: int, title: str | None, log_scale: bool) -> None:
    """Histogram of scores in SOURCE (a CSV with a score column, or a Caffe list file)."""
    dist = plot_distribution(source, output, label_offset, title, log_scale)
    click.echo(dist.table())
    click.echo(f"wrote {output}")


@workflow.command("balance-split")
@click.argument("manifest", type=click.Path(dir_okay=False))
@caffe_option("output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for train.txt, val.txt, counts.csv.")
@caffe_option("ratio", default="5:1", show_default=True, help="Videos in train:val.")
@caffe_option("train-per-class", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Train images per class (0: no balancing).")
@caffe_option("val-per-class", type=click.IntRange(min=0), default=200, show_default=True,
              help="Val images per class (0: no balancing).")
@caffe_option("seed", default=0, show_default=True, help="Random seed for the split and sampling.")
def balance_split_cmd(manifest: str, output: str, ratio: str, train_per_class: int, val_per_class: int, seed: int) -> None:
    """Split a frames MANIFEST by video and balance each class to an exact image count."""
    options = BalanceOptions(ratio=parse_ratio(ratio), train_per_class=train_per_class or None,
                             val_per_class=val_per_class or None, seed=seed)
    result = balance_split(manifest, output, options)
    _notices(result.messages)
    click.echo(result.table())
    click.echo(f"wrote {Path(output) / 'train.txt'} ({len(result.train)} lines) and {Path(output) / 'val.txt'} "
               f"({len(result.val)} lines); image root for convert-imageset: {result.root}/")


def run_step(step: str) -> None:
    """Entry point of ``scripts/<step>.py``: run ``caffe-compat workflow <step>`` with this process's arguments."""
    main(args=["workflow", step, *sys.argv[1:]], prog_name="caffe-compat")
