"""``caffe-compat test``: Caffe's ``caffe test -model M -weights W -iterations N`` (+ a score report)."""

from __future__ import annotations

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option


@main.command("test")
@caffe_option("model", required=True, type=click.Path(dir_okay=False), help="The net prototxt (TEST phase is used).")
@caffe_option("weights", required=True, type=click.Path(dir_okay=False), help="The trained .caffemodel.")
@caffe_option("iterations", default=50, show_default=True, type=int, help="Number of batches to score.")
@caffe_option("gpu", default=None, help="GPU id to run on (first of a list; 'all' = 0). CPU if omitted.")
@caffe_option("report", default=None, type=click.Path(file_okay=False),
              help="Write the face-score report (HTML, PNG, JSON) into this folder; reads blobs 'prob' and 'label', or the softmax and labels of the net's SoftmaxWithLoss.")
@caffe_option("stage", default="", help="Net stages, comma-separated (NetState).")
@caffe_option("level", default=0, type=int, help="Net level (NetState).")
@caffe_option("log_file", default=None, type=click.Path(dir_okay=False), help="Also append the log lines to this file.")
def test_command(model: str, weights: str, iterations: int, gpu: str | None, report: str | None,
                 stage: str, level: int, log_file: str | None) -> None:
    """Score a trained model over N batches of its TEST-phase data (Caffe's `caffe test`)."""
    from caffe_compat.evaluate import REPORT_BLOBS, run_test, write_test_report
    from caffe_compat.solver.caffe_log import CaffeLog

    log = CaffeLog(log_file=log_file)
    try:
        result = run_test(model, weights, iterations, gpu=gpu, log=log, keep=REPORT_BLOBS if report else (),
                          stages=[s for s in stage.split(",") if s], level=level)
    finally:
        log.close()
    if report:
        page = write_test_report(result, report, model=model, weights=weights)
        click.echo(f"report: {page}")
