"""``caffe-compat demo``: the whole legacy workflow on a synthetic set (the README's ``make demo``)."""

from __future__ import annotations

import sys

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option


@main.command("demo")
@caffe_option("out", default="demo_out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for every artefact (sheet, videos, frames, lists, LMDBs, mean, nets, log, snapshot, report).")
@caffe_option("videos", default=None, type=int, help="Usable synthetic videos (default 160).")
@caffe_option("iterations", default=None, type=int, help="Finetuning iterations (default 120).")
def demo_command(out: str, videos: int | None, iterations: int | None) -> None:
    """Run every workflow step on a synthetic set of drawn-face videos served on 127.0.0.1: clean the
    sheet, download, extract frames, plot the histogram, balance and split, build the LMDBs and the
    mean, finetune the stand-in legacy ResNet-50-1by2 on CPU and write the test report."""
    from dataclasses import replace

    from caffe_compat.demo import DemoConfig, run_demo

    cfg = DemoConfig()
    if videos is not None:
        cfg = replace(cfg, videos=videos)
    if iterations is not None:
        cfg = replace(cfg, iterations=iterations)
    result = run_demo(out, cfg)
    if not result.ok:
        sys.exit(1)
