"""``caffe-compat test`` (Caffe's ``caffe test -model M -weights W -iterations N``, + the report)
and ``caffe-compat report`` (the report again from its predictions.csv)."""

from __future__ import annotations

import click

from caffe_compat.cli import main
from caffe_compat.cli.onnx import _floats, _size
from caffe_compat.cli.options import caffe_option, progress_option
from caffe_compat.errors import CaffeCompatError

DECODE = click.Choice(["expectation", "argmax", "both"])


def flag(name: str, *extra: str, **kwargs):
    """A Caffe-style option (``--mean_file``, ``-mean_file``) also spelt with dashes (``--mean-file``)."""
    dashed = (f"--{name.replace('_', '-')}",) if "_" in name else ()
    return caffe_option(name, *dashed, *extra, **kwargs)


def report_options(func):
    """The flags that say how to decode and annotate the report (test and report commands)."""
    for option in reversed([
        flag("labels", help="Class values LO:HI (default 60:99 for 40 classes) or a label-map file, one "
                                    "class per line (numbers: a score net; names: a classifier)."),
        flag("decode", type=DECODE, default="expectation", show_default=True,
                     help="Score nets: the prediction is the expectation Σ p·value, the argmax class's value, or "
                          "both (metrics for each; the expectation leads)."),
        flag("face_model", type=click.Path(dir_okay=False),
                     help="Face detector for the face flags: a YuNet .onnx (cv2.FaceDetectorYN) or a Haar cascade "
                          ".xml (default: dlib's HOG detector from the dlib-bin wheel)."),
        click.option("--face-flags/--no-face-flags", "face_flags", default=None,
                     help="Quality flags (blur, light, faces) per sample (default: for score and regression nets)."),
    ]):
        func = option(func)
    return func


@main.command("test")
@flag("model", type=click.Path(dir_okay=False), help="The net prototxt (TEST phase is used).")
@flag("weights", type=click.Path(dir_okay=False), help="The trained .caffemodel.")
@flag("iterations", default=None, type=click.IntRange(min=1), help="Number of batches to score [default: 50].")
@flag("all", "all_records", is_flag=True,
              help="As many batches as cover the TEST source once (the log's last batch wraps around as in Caffe).")
@flag("gpu", default=None, help="GPU id to run on (first of a list; 'all' = 0). CPU if omitted.")
@flag("bf16", is_flag=True, help="bf16 autocast (GPU; also works on the CPU).")
@flag("channels_last", is_flag=True, help="channels_last memory format for 4-d blobs.")
@flag("report", default=None, type=click.Path(file_okay=False),
              help="Write the report (predictions.csv, report.json, report.md, report.html) into this folder: every "
                   "record of the TEST source scored once, whatever --iterations says.")
@flag("output_blob", help="The blob the report reads (default: the Softmax output, else the softmax of the "
                                  "SoftmaxWithLoss input, else the one-output prediction a EuclideanLoss or an L1 "
                                  "loss (Eltwise/AbsVal/Reduction) compares with the label).")
@flag("label_scale", type=float, default=None,
              help="Regression nets: ground truth = label × this (default: the product of the Power layers "
                   "between the label and the loss, e.g. 0.01 in the SCUT-FBP5500 recipes; else 1).")
@flag("mirror", is_flag=True,
              help="Report: average each sample's output with that of its horizontal mirror (test-time augmentation).")
@report_options
@flag("onnx", "onnx_path", type=click.Path(dir_okay=False),
              help="Score an exported ONNX model instead of --model/--weights (needs --source and --report).")
@flag("source", type=click.Path(), help="With --onnx: the LMDB (or image list file) to score.")
@flag("root_folder", default="", help="With --onnx and a list file: folder the image paths are relative to.")
@flag("mean_file", type=click.Path(dir_okay=False), help="With --onnx: mean.binaryproto.")
@flag("mean_value", help="With --onnx: per-channel means, comma-separated (BGR), instead of a mean file.")
@flag("scale", default=1.0, show_default=True, type=float, help="With --onnx: transform_param.scale.")
@flag("crop_size", type=int, help="With --onnx: centre crop side (default: the net's input side).")
@flag("resize", help="With --onnx and a list file: resize images to N or H,W as they are read.")
@flag("batch_size", default=16, show_default=True, type=click.IntRange(min=1),
              help="With --onnx: images per ONNX Runtime call.")
@flag("providers", default="cuda,cpu", show_default=True, help="With --onnx: ONNX Runtime providers.")
@flag("stage", default="", help="Net stages, comma-separated (NetState).")
@flag("level", default=0, type=int, help="Net level (NetState).")
@flag("log_file", default=None, type=click.Path(dir_okay=False), help="Also append the log lines to this file.")
@progress_option()
def test_command(model, weights, iterations, all_records, gpu, bf16, channels_last, report, output_blob, label_scale,
                 mirror, labels, decode, face_model, face_flags, onnx_path, source, root_folder, mean_file, mean_value,
                 scale, crop_size, resize, batch_size, providers, stage, level, log_file, progress) -> None:
    """Score a trained model over N batches of its TEST-phase data (Caffe's `caffe test`), and
    with --report every record of the TEST source once."""
    from caffe_compat.evaluate import ReportOptions

    options = ReportOptions(labels, decode, label_scale, face_model, face_flags, progress)
    if onnx_path is not None:
        page = _test_onnx(onnx_path, source, report, options, model=model, weights=weights, root_folder=root_folder,
                          mean_file=mean_file, mean_value=_floats(mean_value, "mean_value"), scale=scale,
                          crop_size=crop_size, resize=_size(resize), batch_size=batch_size,
                          providers=providers.split(","), output=output_blob, mirror=mirror)
        click.echo(f"report: {page}")
        return
    from caffe_compat.evaluate import run_test, write_test_report
    from caffe_compat.solver.caffe_log import CaffeLog

    if model is None or weights is None:
        raise CaffeCompatError("give --model and --weights (or --onnx MODEL --source LMDB --report DIR)")
    if source is not None:
        raise CaffeCompatError("--source is for --onnx; a Caffe net reads its TEST data layer's source")
    if all_records and iterations is not None:
        raise CaffeCompatError("give --iterations N or --all, not both")
    if not report and (output_blob or labels or label_scale is not None or mirror or face_model):
        raise CaffeCompatError("--output-blob, --labels, --label-scale, --mirror and --face-model shape the "
                               "report: give --report DIR")
    log = CaffeLog(log_file=log_file)
    try:
        result = run_test(model, weights, None if all_records else (iterations or 50), gpu=gpu, log=log,
                          stages=[s for s in stage.split(",") if s], level=level, report=options if report else None,
                          output_blob=output_blob, mirror=mirror, bf16=bf16, channels_last=channels_last,
                          progress=progress)
        if report:
            page = write_test_report(result, report, model=model, weights=weights, options=options, mirror=mirror,
                                     log=log)
            click.echo(f"report: {page}")
    finally:
        log.close()


def _test_onnx(onnx_path, source, report, options, *, model, weights, output, mirror, **kwargs):
    from caffe_compat.evaluate import score_onnx, write_samples_report

    if model is not None or weights is not None:
        raise CaffeCompatError("--onnx scores an exported model: drop --model/--weights")
    if source is None or report is None:
        raise CaffeCompatError("--onnx needs --source LMDB (or a list file) and --report DIR")
    from caffe_compat.solver.caffe_log import CaffeLog

    samples = score_onnx(onnx_path, source, output=output, mirror=mirror, progress=options.progress, **kwargs)
    info = [("ONNX model", str(onnx_path)), ("source", str(source)),
            ("mirror (test-time augmentation)", "yes" if mirror else "no")]
    return write_samples_report(samples, report, options, info, {"onnx": str(onnx_path), "source": str(source),
                                                                 "mirror": mirror},
                                title=f"caffe-compat test: {onnx_path}", log=CaffeLog())


@main.command("report")
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write the report into.")
@flag("source", type=click.Path(), help="The LMDB (or list file) the CSV's rows index, for the pictures.")
@flag("root_folder", default="", help="With a list file: folder the image paths are relative to.")
@report_options
@flag("title", default=None, help="Page title (default: from the CSV's name).")
@progress_option()
def report_command(predictions, out_dir, source, root_folder, labels, decode, face_model, face_flags, title,
                   progress) -> None:
    """Render the report again from a predictions.csv, without running the net (pictures and
    fresh flags need the --source the rows come from)."""
    from caffe_compat.evaluate import ReportOptions, add_flags
    from caffe_compat.report import check_source_matches, write_report
    from caffe_compat.report.images import RecordImages
    from caffe_compat.report.predictions import parse_labels, read_csv

    label_map = parse_labels(labels, None)
    pred = read_csv(predictions, decode, label_map)
    images = RecordImages.open(source, root_folder) if source is not None else None
    notes: list[str] = []
    if images is not None:
        check_source_matches(pred, images)
        if pred.flags is None or face_flags or face_model:
            pred, notes = add_flags(pred.with_flags(None), images, ReportOptions(face_model=face_model,
                                                                                  face_flags=face_flags,
                                                                                  progress=progress))
    info = [("predictions", str(predictions)), ("source", str(source) if source else "(none: no pictures)"),
            ("samples", str(len(pred))), ("mode", pred.mode + (f", decode {pred.decode}" if pred.mode == "score" else ""))]
    page = write_report(out_dir, pred, images=images, info=info, notes=notes,
                        title=title or f"caffe-compat report: {predictions}")
    click.echo(f"report: {page}")
