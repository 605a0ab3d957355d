"""The ``caffe-compat`` command: one subcommand per Caffe tool, thin wrappers over the library.

Each area registers its subcommands from its own module so adding a tool touches one file.
Flags mirror Caffe's gflags spellings (``-solver`` as well as ``--solver``).
"""

from __future__ import annotations

import importlib
import sys

import click

from caffe_compat.cli.glog import log_library_to_stderr
from caffe_compat.cli.options import CaffeFlagsCommand
from caffe_compat.errors import CaffeCompatError

# Modules that add subcommands to `main` when imported (one per area of the library).
_COMMAND_MODULES = ("formats", "data", "net", "train", "evaluate", "workflow", "demo", "onnx")


class _Group(click.Group):
    """Turns CaffeCompatError into one clear line and a non-zero exit, never a traceback.

    Caffe's tool names (``convert_imageset``, ``compute_image_mean``) also work, so ported
    shell scripts only need ``caffe-compat`` put in front.
    """

    command_class = CaffeFlagsCommand
    group_class = type

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or super().get_command(ctx, cmd_name.replace("_", "-"))

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except CaffeCompatError as exc:
            click.echo(f"caffe-compat: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="caffe-compat")
def main() -> None:
    """Caffe's tools on PyTorch: read/write every Caffe file, build LMDBs, train, test, export."""
    log_library_to_stderr()


for _name in _COMMAND_MODULES:
    importlib.import_module(f"caffe_compat.cli.{_name}")
