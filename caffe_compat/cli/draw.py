"""CLI for Caffe's ``python/draw_net.py``: a picture of a net prototxt's graph."""

from __future__ import annotations

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option


@main.command("draw-net")
@click.argument("input_net_proto_file", metavar="NET", type=click.Path(dir_okay=False))
@click.argument("output_image_file", metavar="OUT", type=click.Path(dir_okay=False))
@caffe_option("rankdir", default="LR", show_default=True,
              help="Graph direction: LR, RL, TB (top-bottom) or BT; any Graphviz rankdir.")
@caffe_option("phase", type=click.Choice(["TRAIN", "TEST", "ALL"], case_sensitive=False), default="ALL",
              show_default=True, help="Draw this phase's layers, or ALL layers regardless of phase.")
@caffe_option("display_lrm", is_flag=True, help="Show the learning rate multipliers of learned layers.")
def draw_net_command(input_net_proto_file: str, output_image_file: str, rankdir: str, phase: str,
                     display_lrm: bool) -> None:
    """Draw a net as Caffe's draw_net.py does; OUT's extension picks the format (png, svg, pdf, raw).

    Reads the prototxt only: Python layers are drawn by name, never imported."""
    from caffe_compat.io.prototxt import read_net
    from caffe_compat.net.draw import draw_net_to_file
    from caffe_compat.proto import caffe_pb2

    net = read_net(input_net_proto_file)
    click.echo(f"Drawing net to {output_image_file}")
    draw_net_to_file(net, output_image_file, rankdir, None if phase.upper() == "ALL" else
                     caffe_pb2.Phase.Value(phase.upper()), display_lrm)
