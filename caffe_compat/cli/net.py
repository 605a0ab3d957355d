"""``forward``, ``compare`` and ``time``: per-blob dumps, dump comparison and ``caffe time``."""

from __future__ import annotations

import sys

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option, progress_option, want_progress
from caffe_compat.errors import CaffeCompatError

PHASES = {"TRAIN": 0, "TEST": 1}


def _phase_option(default: str):
    return caffe_option(
        "phase", type=click.Choice(sorted(PHASES), case_sensitive=False), default=default, show_default=True,
        help="Network phase (include/exclude rules, Dropout, BatchNorm statistics).",
    )


def _split_stages(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """Caffe's ``-stage a,b`` is comma-separated; repeating the flag works too."""
    return tuple(s.strip() for value in values for s in value.split(",") if s.strip())


_stage_option = caffe_option("stage", multiple=True, callback=_split_stages,
                             help="Net state stages, comma-separated like Caffe's (or repeat the flag).")
_level_option = caffe_option("level", type=int, default=0, show_default=True, help="Net state level.")


@main.command("forward")
@caffe_option("model", required=True, help="Net prototxt.")
@caffe_option("weights", help="Trained .caffemodel (current or V1); fillers otherwise.")
@_phase_option("TEST")
@_stage_option
@_level_option
@caffe_option("input", "inputs", multiple=True, metavar="NAME=FILE.npy",
              help="Array for an input blob (repeatable).")
@caffe_option("blobs", help="Comma-separated blob names to write (default: the net outputs).")
@caffe_option("all", "all_blobs", is_flag=True, help="Write every blob, Caffe's split copies included.")
@click.option("-o", "--output", required=True, help="Output .npz (one array per blob name).")
@caffe_option("backward", metavar="DIFFS.npz",
              help="Also run Caffe's backward and write every blob diff and '<layer>/<i>' param diff here.")
@caffe_option("top_diff", metavar="TOP_DIFF.npz", help="Diffs for non-loss outputs (default 0), with --backward.")
def forward_command(model, weights, phase, stage, level, inputs, blobs, all_blobs, output, backward,
                    top_diff) -> None:
    """Run one forward pass and write blobs to an .npz, to compare with a dump from real Caffe."""
    from caffe_compat.net.diff import (
        forward_backward_blobs, forward_blobs, load_blobs, load_net_for_inputs, parse_input_specs, save_blobs,
    )

    if blobs and all_blobs:
        raise CaffeCompatError("give either --blobs or --all, not both")
    arrays = parse_input_specs(inputs)
    net, report = load_net_for_inputs(model, arrays, PHASES[phase.upper()], weights, stage, level)
    if report is not None:
        click.echo(report.summary(), err=True)
    selection = "outputs"
    if all_blobs:
        selection = "all"
    elif blobs:
        selection = [b.strip() for b in blobs.split(",") if b.strip()]
    if top_diff and not backward:
        raise CaffeCompatError("--top_diff needs --backward")
    if backward:
        top_diffs = load_blobs(top_diff) if top_diff else None
        dumped, diffs = forward_backward_blobs(net, arrays, selection, top_diffs)
        save_blobs(backward, diffs)
        click.echo(f"wrote {len(diffs)} diff(s) to {backward}")
    else:
        dumped = forward_blobs(net, arrays, selection)
    save_blobs(output, dumped)
    click.echo(f"wrote {len(dumped)} blob(s) to {output}")


@main.command("compare")
@click.argument("file_a", metavar="A.npz")
@click.argument("file_b", metavar="B.npz")
@caffe_option("atol", type=click.FloatRange(min=0), default=1e-5, show_default=True, help="Absolute tolerance.")
@caffe_option("rtol", type=click.FloatRange(min=0), default=1e-5, show_default=True,
              help="Tolerance relative to B's largest magnitude (B is the reference).")
def compare_command(file_a, file_b, atol, rtol) -> None:
    """Per common blob: shape, max abs and max relative error; exit 1 past the tolerances."""
    from caffe_compat.net.diff import compare_blob_files, format_comparison

    result = compare_blob_files(file_a, file_b, atol, rtol)
    click.echo(format_comparison(result, atol, rtol))
    if not result.passed:
        sys.exit(1)


@main.command("time")
@caffe_option("model", required=True, help="Net prototxt.")
@caffe_option("weights", help="Trained .caffemodel (fillers otherwise).")
@_phase_option("TRAIN")
@_stage_option
@_level_option
@caffe_option("iterations", type=click.IntRange(min=1), default=50, show_default=True,
              help="Forward-backward passes to average over.")
@caffe_option("gpu", is_flag=False, flag_value="0", default=None, metavar="[ID]",
              help="Run on a CUDA device: --gpu alone or Caffe's -gpu 0 (\"all\" = the first).")
@caffe_option("bf16", is_flag=True, help="Run under bf16 autocast.")
@progress_option()
def time_command(model, weights, phase, stage, level, iterations, gpu, bf16, progress) -> None:
    """Benchmark like ``caffe time``: per-layer forward/backward ms averaged over iterations."""
    from caffe_compat.net.builder import load_net
    from caffe_compat.net.timing import cuda_device, format_timing, time_net

    device = cuda_device(gpu) if gpu is not None else "cpu"
    net = load_net(model, PHASES[phase.upper()], weights, stage, level)
    click.echo(f"Use GPU with device ID {device[5:]}." if device != "cpu" else "Use CPU.")
    click.echo(format_timing(time_net(net, iterations, device=device, bf16=bf16, progress=want_progress(progress))))
