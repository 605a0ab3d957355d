"""CLI subcommands for this area (registered on import by caffe_compat.cli)."""

from __future__ import annotations

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option
