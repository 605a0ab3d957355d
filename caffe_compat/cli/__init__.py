"""The ``caffe-compat`` command: one subcommand per Caffe tool, thin wrappers over the library.

Each area registers its subcommands from its own module so adding a tool touches one file (and
one line of :data:`COMMANDS`). Modules are imported only when their command runs, so a tool
pays only for its own imports (``compute-image-mean`` never loads torch). Flags mirror Caffe's
gflags spellings (``-solver`` as well as ``--solver``).
"""

from __future__ import annotations

import importlib
import sys

import click

from caffe_compat.cli.busybox import busybox_args
from caffe_compat.cli.glog import log_library_to_stderr
from caffe_compat.cli.guard import one_line_errors
from caffe_compat.cli.options import CaffeFlagsCommand

#: Subcommand -> the module of caffe_compat.cli that registers it on `main` when imported.
COMMANDS = {
    "upgrade-net-proto-text": "formats", "upgrade-net-proto-binary": "formats", "inspect": "formats",
    "convert-imageset": "data", "compute-image-mean": "data",
    "convert-mnist-data": "example_data", "convert-cifar-data": "example_data",
    "convert-mnist-siamese-data": "example_data",
    "forward": "net", "compare": "net", "time": "net",
    "train": "train", "plot-log": "train",
    "test": "evaluate", "report": "evaluate",
    "workflow": "workflow",
    "demo": "demo",
    "export-onnx": "onnx", "predict": "onnx",
    "export-torch": "onnx", "import-torch": "onnx",
    "device-query": "tools", "extract-features": "tools", "upgrade-solver-proto-text": "tools",
    "convert-db": "tools", "link-tools": "tools",
    "draw-net": "draw",
}


class _Group(click.Group):
    """Turns any failure into one clear line and a non-zero exit, never a traceback.

    Caffe's tool names (``convert_imageset``, ``compute_image_mean``) also work, so ported
    shell scripts only need ``caffe-compat`` put in front.
    """

    command_class = CaffeFlagsCommand
    group_class = type

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = cmd_name if cmd_name in COMMANDS or cmd_name in self.commands else cmd_name.replace("_", "-")
        if name in COMMANDS and name not in self.commands:
            importlib.import_module(f"caffe_compat.cli.{COMMANDS[name]}")
        return super().get_command(ctx, name)

    def main(self, args=None, prog_name=None, **extra):  # type: ignore[override]
        """Busybox-style: run through a link named after a Caffe tool, act as that tool."""
        if args is None:
            args, prog_name = busybox_args(sys.argv)
        return super().main(args, prog_name, **extra)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        with one_line_errors():  # the one rule: success, or one error line (caffe_compat.cli.guard)
            return super().invoke(ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help", "-help"]})
@click.version_option(package_name="caffe-compat")
@click.option("--dialect", metavar="NAME", default=None,
              help="Read and write binary Caffe files with this fork's field numbers (bvlc, opencv, segnet, "
                   "enet, pspnet, ...) where the file's layers cannot tell; see docs/zoo.md.")
def main(dialect: str | None) -> None:
    """Caffe's tools on PyTorch: read/write every Caffe file, build LMDBs, train, test, export."""
    log_library_to_stderr(click.get_current_context().info_name or "caffe-compat")
    from caffe_compat.proto import dialects

    dialects.select(dialect)

