#!/usr/bin/env python3
"""SCUT-FBP5500 as Caffe data: lists (x100 and 40-class labels), shuffled LMDBs and mean files.

    python scripts/prepare_scut_fbp5500.py data/scut-fbp5500 -o data/scut --protocol all
    ln -sfn data/scut/60-40 data_scut && ...   # each split folder is what the recipes read as data/

Logic in caffe_compat.workflow.scut_fbp5500; a split already built with the same options and
split files is reused. The data set's terms: non-commercial research only; never commit it.
"""

from __future__ import annotations

import sys

import click

from caffe_compat.errors import CaffeCompatError
from caffe_compat.workflow.scut_fbp5500 import PrepareOptions, prepare


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("data_dir", type=click.Path(file_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="folder of the split folders")
@click.option("--size", type=click.IntRange(min=1, max=4096), default=256, show_default=True,
              help="resize images to SIZE x SIZE (the recipes crop 224)")
@click.option("--protocol", type=click.Choice(["60-40", "5-fold", "all"]), default="all", show_default=True)
@click.option("--no-classes40", is_flag=True, help="skip the 40-class lists and LMDBs")
@click.option("--seed", type=int, default=1701, show_default=True, help="shuffle seed of the training LMDBs")
@click.option("--progress/--no-progress", default=None, help="progress bars (default: on a terminal)")
def main(data_dir: str, output: str, size: int, protocol: str, no_classes40: bool, seed: int,
         progress: bool | None) -> None:
    options = PrepareOptions(size=size, protocol=protocol, classes40=not no_classes40, seed=seed, progress=progress)
    try:
        for split in prepare(data_dir, output, options):
            state = "reused" if split.reused else "built"
            click.echo(f"{split.folder}: {split.train} train / {split.test} test images ({state})")
    except CaffeCompatError as exc:
        click.echo(f"caffe-compat: error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
