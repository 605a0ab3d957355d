"""``caffe-compat train`` (Caffe's ``caffe train``) and ``caffe-compat plot-log``."""

from __future__ import annotations

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option
from caffe_compat.errors import CaffeCompatError

EFFECTS = click.Choice(["snapshot", "stop", "none"])


@main.command("train")
@caffe_option("solver", required=True, type=click.Path(dir_okay=False), help="solver.prototxt")
@caffe_option("weights", default=None, help="caffemodel(s) to finetune from, comma-separated (copied by layer name)")
@caffe_option("snapshot", default=None, help=".solverstate to resume from")
@caffe_option("gpu", default=None, help="GPU ids: 0, 0,1 or all (one process per GPU); default: the solver's solver_mode")
@caffe_option("iterations", type=click.IntRange(min=0), default=None, help="override the solver's max_iter")
@caffe_option("sigint_effect", type=EFFECTS, default="stop", show_default=True, help="what Ctrl-C / SIGTERM do")
@caffe_option("sighup_effect", type=EFFECTS, default="snapshot", show_default=True, help="what SIGHUP does")
@caffe_option("stage", default="", help="net stages, comma-separated (NetState)")
@caffe_option("level", type=int, default=0, help="net level (NetState)")
@caffe_option("bf16", is_flag=True, help="bf16 autocast with fp32 master weights (GPU; also works on CPU)")
@caffe_option("channels_last", is_flag=True, help="channels_last memory format for 4-d blobs")
@caffe_option("compile", "do_compile", is_flag=True, help="torch.compile the training forward")
@click.option("--cudnn_benchmark/--no_cudnn_benchmark", default=True, help="cudnn.benchmark on GPU")
@caffe_option("workers", type=click.IntRange(min=0), default=None,
              help="data prefetch worker processes per GPU/process (default: 2 on the CPU; on GPUs "
                   "the cores left over, at most 12 per GPU)")
@caffe_option("ema", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0,
              help="keep an exponential moving average of the weights with this decay (e.g. 0.999); "
                   "tests and snapshot caffemodels use it (0: off)")
@caffe_option("warmup", type=click.IntRange(min=0), default=0,
              help="ramp the learning rate up linearly over the first N iterations")
@caffe_option("log", "log_file", default=None, type=click.Path(dir_okay=False), help="also write the log here")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a terminal)")
def train_command(solver, weights, snapshot, gpu, iterations, sigint_effect, sighup_effect, stage, level,
                  bf16, channels_last, do_compile, cudnn_benchmark, workers, ema, warmup, log_file,
                  progress) -> None:
    """Train a net from a Caffe solver.prototxt, like ``caffe train``."""
    from caffe_compat.solver.solver import TrainOptions, resolve_gpus, train

    if snapshot and weights:
        raise CaffeCompatError("give --snapshot to resume training or --weights to finetune, not both")
    options = TrainOptions(
        weights=[w for w in (weights or "").split(",") if w],
        resume=snapshot,
        max_iter=iterations,
        sigint_effect=sigint_effect,
        sighup_effect=sighup_effect,
        stages=[s for s in stage.split(",") if s],
        level=level,
        bf16=bf16,
        channels_last=channels_last,
        compile=do_compile,
        cudnn_benchmark=cudnn_benchmark,
        workers=workers,
        ema=ema,
        warmup=warmup,
        progress=progress,
        log_file=log_file,
    )
    options.gpus = resolve_gpus(solver, gpu)
    train(solver, options)


@main.command("plot-log")
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="PNG to write (default LOG.png)")
@click.option("--title", default=None, help="chart title (default: the log's file name)")
def plot_log_command(log, output, title) -> None:
    """Draw train loss and test accuracy/loss against iterations from a Caffe training log."""
    from caffe_compat.solver.plot_log import plot_log

    out = output or f"{log}.png"
    parsed = plot_log(log, out, title)
    tests = sum(len(points) for outputs in parsed.tests.values() for points in outputs.values())
    click.echo(f"{out}: {len(parsed.train_loss)} train loss points, {tests} test values")
