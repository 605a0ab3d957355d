"""CLI subcommands for this area (registered on import by caffe_compat.cli).

``convert-imageset`` and ``compute-image-mean``: Caffe's tools, same arguments and flags.
"""

from __future__ import annotations

import logging

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import CaffeFlagsCommand, caffe_option

GFLAG_BOOL = {"is_flag": True, "default": False}
INT_MAX = 2**31 - 1  # Caffe's flags are int32, and a blob holds at most INT_MAX values
_TRUE, _FALSE = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}


class _GflagsBoolCommand(CaffeFlagsCommand):
    """Accepts gflags' boolean spellings: ``-gray``, ``--gray=true``, ``-gray=false``, ``--nogray``.

    Every boolean flag here defaults to false, so a false spelling just drops the token.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags = {o.name for o in self.params if isinstance(o, click.Option) and o.is_flag and not o.secondary_opts}
        rewritten = []
        for arg in args:
            name, _, value = arg.lstrip("-").partition("=")
            if arg.startswith("-") and name.startswith("no") and name[2:] in flags and not value:
                continue
            if arg.startswith("-") and name in flags and value:
                if value.lower() not in _TRUE | _FALSE:
                    raise click.BadParameter(f"{value!r} is not a boolean", param_hint=f"--{name}")
                if value.lower() in _TRUE:
                    rewritten.append(f"--{name}")
                continue
            rewritten.append(arg)
        return super().parse_args(ctx, rewritten)


@main.command("convert-imageset", cls=_GflagsBoolCommand)
@click.argument("root_folder")
@click.argument("list_file", type=click.Path(dir_okay=True))
@click.argument("db_name", type=click.Path())
@caffe_option("gray", help="Treat images as grayscale ones (IMREAD_GRAYSCALE).", **GFLAG_BOOL)
@caffe_option("shuffle", help="Randomly shuffle the order of images and their labels.", **GFLAG_BOOL)
@caffe_option("backend", default="lmdb", show_default=True, help="The backend for storing the result: lmdb or leveldb.")
@caffe_option("resize_width", type=click.IntRange(0, INT_MAX), default=0, show_default=True,
              help="Width images are resized to.")
@caffe_option("resize_height", type=click.IntRange(0, INT_MAX), default=0, show_default=True,
              help="Height images are resized to.")
@caffe_option("check_size", help="Check that all the datums have the same size.", **GFLAG_BOOL)
@caffe_option("encoded", help="Store the encoded image in the datum.", **GFLAG_BOOL)
@caffe_option("encode_type", default="", help="Encoding for the images ('png', 'jpg', ...); implies --encoded.")
@caffe_option("seed", type=int, default=None, help="[extra] Seed for --shuffle (reproducible order).")
@caffe_option("jobs", "-j", type=click.IntRange(min=1), default=None,
              help="[extra] Parallel decoding threads (default: all cores); output identical to --jobs 1.")
@caffe_option("overwrite", is_flag=True, help="[extra] Replace DB_NAME if it already exists.")
@click.option("--progress/--no-progress", default=None, help="[extra] Progress bar (default: on a terminal).")
def convert_imageset_cmd(root_folder: str, list_file: str, db_name: str, **flags) -> None:
    """Convert a set of images to a Caffe Datum LMDB or LevelDB (Caffe's convert_imageset).

    LIST_FILE lines are 'subfolder/file.jpg label'; ROOT_FOLDER is prepended to each name as is
    (keep its trailing '/').
    """
    from caffe_compat.data.convert_imageset import ConvertOptions, convert_imageset

    summary = convert_imageset(root_folder, list_file, db_name, ConvertOptions(**flags))
    click.echo(f"convert-imageset: {summary.report()}", err=True)


@main.command("compute-image-mean")
@click.argument("input_db", type=click.Path())
@click.argument("output_file", type=click.Path(), required=False)
@caffe_option("backend", default="lmdb", show_default=True, help="The backend of INPUT_DB: lmdb or leveldb.")
@click.option("--progress/--no-progress", default=None, help="[extra] Progress bar (default: on a terminal).")
def compute_image_mean_cmd(input_db: str, output_file: str | None, backend: str, progress: bool | None) -> None:
    """Compute the mean image of a Datum LMDB or LevelDB (Caffe's compute_image_mean) into a .binaryproto."""
    from caffe_compat.data.db_writer import check_backend
    from caffe_compat.data.image_mean import compute_image_mean, write_image_mean

    log = logging.getLogger("caffe_compat.data")
    result = compute_image_mean(input_db, progress, check_backend(backend))
    if output_file:
        log.info(f"Write to {output_file}")
        write_image_mean(result, output_file)
    log.info(f"Number of channels: {result.mean.shape[0]}")
    for c, value in enumerate(result.channel_means):
        log.info(f"mean_value channel [{c}]: {value:.6g}")
