"""``export-onnx`` and ``predict``: a Caffe deploy net to ONNX, and ONNX Runtime on image files."""

from __future__ import annotations

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option, progress_option, want_progress
from caffe_compat.errors import CaffeCompatError


def _size(text: str | None) -> tuple[int, int] | None:
    """"256" or "256,320" (height,width)."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        raise CaffeCompatError(f"--resize: expected N or H,W, got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise CaffeCompatError(f"--resize: expected N or H,W with positive sizes, got {text!r}")
    return (parts[0], parts[-1])


def _floats(text: str | None, flag: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CaffeCompatError(f"--{flag}: expected comma-separated numbers, got {text!r}") from None


@main.command("export-onnx")
@caffe_option("model", required=True, type=click.Path(dir_okay=False), help="Deploy prototxt (any Caffe version).")
@caffe_option("weights", required=True, type=click.Path(dir_okay=False), help="Trained .caffemodel.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .onnx file to write.")
@caffe_option("opset", default=17, show_default=True, type=int, help="ONNX opset version.")
@caffe_option("batch", default="dynamic", show_default=True,
              help="'dynamic' (axis 0 of the inputs is symbolic) or a fixed batch size.")
@caffe_option("fp16", is_flag=True, help="float16 weights and compute (inputs and outputs stay float32).")
@caffe_option("verify", is_flag=True, help="Run a random batch through onnxruntime and CaffeNet; print the difference.")
def export_onnx_command(model: str, weights: str, output: str, opset: int, batch: str, fp16: bool,
                        verify: bool) -> None:
    """Convert a Caffe deploy net and its weights to an ONNX model."""
    from caffe_compat.onnx.export import export_onnx

    click.echo(export_onnx(model, weights, output, opset=opset, batch=batch, fp16=fp16, verify=verify).summary())


@main.command("predict")
@caffe_option("onnx", "onnx_path", required=True, type=click.Path(dir_okay=False), help="Exported .onnx model.")
@caffe_option("mean_file", type=click.Path(dir_okay=False), help="mean.binaryproto (compute_image_mean's).")
@caffe_option("mean_value", help="Per-channel means, comma-separated (BGR), instead of a mean file.")
@caffe_option("scale", default=1.0, show_default=True, type=float, help="transform_param.scale, after the mean.")
@caffe_option("resize", help="Resize images to N or H,W first (default: the mean image's size, else the input's).")
@caffe_option("crop_size", type=int, help="Centre crop side (default: the net's input side when needed).")
@caffe_option("providers", default="cuda,cpu", show_default=True,
              help="ONNX Runtime providers in order of preference (unavailable ones are skipped).")
@caffe_option("top_k", default=5, show_default=True, type=int, help="Classes to show per image.")
@caffe_option("output_blob", help="Output to read (default: 'prob' when the net has it, else the first).")
@caffe_option("batch_size", default=16, show_default=True, type=int, help="Images per ONNX Runtime call.")
@progress_option()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def predict_command(onnx_path: str, mean_file: str | None, mean_value: str | None, scale: float,
                    resize: str | None, crop_size: int | None, providers: str, top_k: int,
                    output_blob: str | None, batch_size: int, progress: bool | None, images: tuple[str, ...]) -> None:
    """Run an exported net on image files with Caffe's TEST preprocessing; print top-k per image
    (and the expected score Σ p_k·(60+k) for 40-class score nets)."""
    from caffe_compat.onnx.predict import format_predictions, predict

    probs = predict(onnx_path, list(images), mean_file, mean_value=_floats(mean_value, "mean_value"),
                    scale=scale, resize=_size(resize), crop_size=crop_size, providers=providers.split(","),
                    output=output_blob, batch_size=batch_size, progress=want_progress(progress))
    for line in format_predictions(images, probs, top_k):
        click.echo(line)
