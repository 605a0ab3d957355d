"""CLI for Caffe's file tools: upgrade_net_proto_text, upgrade_net_proto_binary, and inspect."""

from __future__ import annotations

import sys

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option
from caffe_compat.io.upgrade_files import upgrade_net_proto_binary, upgrade_net_proto_text
from caffe_compat.proto import caffe_pb2


def _report(result) -> None:
    for line in result.messages:
        click.echo(line, err=True)
    if not result.success:
        sys.exit(1)


@main.command("upgrade-net-proto-text")
@click.argument("input_file", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("output_file", metavar="OUT", type=click.Path(dir_okay=False))
def upgrade_text_command(input_file: str, output_file: str) -> None:
    """Upgrade a V0/V1 net prototxt to the current format (Caffe's upgrade_net_proto_text)."""
    _report(upgrade_net_proto_text(input_file, output_file))


@main.command("upgrade-net-proto-binary")
@click.argument("input_file", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("output_file", metavar="OUT", type=click.Path(dir_okay=False))
def upgrade_binary_command(input_file: str, output_file: str) -> None:
    """Upgrade a V0/V1 .caffemodel to the current format (Caffe's upgrade_net_proto_binary)."""
    _report(upgrade_net_proto_binary(input_file, output_file))


@main.command("inspect")
@click.argument("path", type=click.Path())
@caffe_option("phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False), default=None,
              help="Phase of a net's layers and shapes [prototxt: TEST; caffemodel: the saved phase].")
def inspect_command(path: str, phase: str | None) -> None:
    """Show what a prototxt, caffemodel, binaryproto, solverstate or LMDB holds."""
    from caffe_compat.net.summary import inspect_lines

    for line in inspect_lines(path, None if phase is None else caffe_pb2.Phase.Value(phase.upper())):
        click.echo(line)
