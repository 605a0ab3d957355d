"""Model conversion and serving: ``export-onnx``, ``predict`` (ONNX Runtime or PyTorch engine),
and ``export-torch`` / ``import-torch`` (caffemodel <-> name-keyed PyTorch state dicts)."""

from __future__ import annotations

from typing import Any, Callable

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option, progress_option, want_progress
from caffe_compat.errors import CaffeCompatError

MAX_IMAGE_PIXELS = 1 << 28  # 16384 x 16384: one float32 colour image of it is 3 GiB already


PHASES = {"TRAIN": 0, "TEST": 1}  # caffe.Phase values


def _size(text: str | None, flag: str = "resize") -> tuple[int, int] | None:
    """"256" or "256,320" (height,width)."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        raise CaffeCompatError(f"--{flag}: expected N or H,W, got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise CaffeCompatError(f"--{flag}: expected N or H,W with positive sizes, got {text!r}")
    if parts[0] * parts[-1] > MAX_IMAGE_PIXELS:
        raise CaffeCompatError(f"--{flag} {text}: {parts[0]}x{parts[-1]} images are too big "
                               f"(at most {MAX_IMAGE_PIXELS:,} pixels, e.g. 16384x16384)")
    return (parts[0], parts[-1])


def _floats(text: str | None, flag: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CaffeCompatError(f"--{flag}: expected comma-separated numbers, got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def dual_option(name: str, **kwargs: Any) -> Callable:
    """An option spelled ``--fold-bn`` and ``--fold_bn`` (and Caffe's single-dash ``-fold_bn``)."""
    underscore = name.replace("-", "_")
    return click.option(f"--{name}", f"--{underscore}", f"-{underscore}", underscore, **kwargs)


@main.command("export-onnx")
@caffe_option("model", required=True, type=click.Path(dir_okay=False),
              help="Deploy or train_val prototxt (any Caffe version).")
@caffe_option("weights", required=True, type=click.Path(dir_okay=False), help="Trained .caffemodel.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .onnx file to write.")
@caffe_option("opset", default=17, show_default=True, type=int, help="ONNX opset version.")
@caffe_option("batch", default="dynamic", show_default=True,
              help="'dynamic' (axis 0 of the batched inputs is symbolic), 'prototxt' (the file's shapes) or a "
                   "fixed batch size.")
@dual_option("dynamic-inputs", help="Comma-separated inputs whose axis 0 is the batch (default: data layer tops "
                                    "and Input tops whose axis 0 matches the first one's).")
@caffe_option("fp16", is_flag=True, help="float16 weights and compute (inputs and outputs stay float32).")
@dual_option("fold-bn", is_flag=True, help="Fold BatchNorm/Scale into the convolution or inner product before them.")
@caffe_option("mean_file", type=click.Path(dir_okay=False),
              help="mean.binaryproto to subtract inside the model (centre-cropped like Caffe's TEST phase).")
@caffe_option("mean_value", help="Per-channel means (BGR) to subtract inside the model, comma-separated.")
@caffe_option("scale", type=float, help="transform_param.scale applied inside the model, after the mean.")
@dual_option("input-format", type=click.Choice(["bgr", "rgb"]), default="bgr", show_default=True,
             help="Channel order the model's input takes (rgb is flipped to Caffe's BGR in the graph).")
@dual_option("input-uint8", is_flag=True, help="The model takes uint8 pixels and casts them itself.")
@caffe_option("resize", help="Size N or H,W that predict resizes images to before the centre crop (recorded in "
                             "the model; default: the mean image's or the data layer's stored size).")
@caffe_option("plugins", help="Comma-separated modules (or .py files) that register extra layers and converters.")
@caffe_option("verify", is_flag=True,
              help="Run random inputs through onnxruntime and CaffeNet (also at twice the batch when dynamic).")
@dual_option("allow-fillers", is_flag=True,
             help="Export even if WEIGHTS misses layers with parameters (they keep random filler values).")
def export_onnx_command(model: str, weights: str, output: str, opset: int, batch: str, dynamic_inputs: str | None,
                        fp16: bool, fold_bn: bool, mean_file: str | None, mean_value: str | None,
                        scale: float | None, input_format: str, input_uint8: bool, resize: str | None,
                        plugins: str | None, verify: bool, allow_fillers: bool) -> None:
    """Convert a Caffe net and its weights to an ONNX model (Caffe's input transform optional inside)."""
    from caffe_compat.onnx.export import export_onnx

    result = export_onnx(model, weights, output, opset=opset, batch=batch, fp16=fp16, verify=verify,
                         dynamic_inputs=_names(dynamic_inputs), fold_bn=fold_bn, mean_file=mean_file,
                         mean_value=_floats(mean_value, "mean_value"), scale=scale, input_format=input_format,
                         input_uint8=input_uint8, resize=_size(resize), plugins=_names(plugins) or (),
                         allow_fillers=allow_fillers)
    click.echo(result.summary())


@main.command("predict")
@caffe_option("onnx", "onnx_path", type=click.Path(dir_okay=False),
              help="Exported .onnx model (the onnxruntime engine).")
@caffe_option("engine", type=click.Choice(["onnxruntime", "torch"]), default="onnxruntime", show_default=True,
              help="onnxruntime runs --onnx; torch runs --model/--weights as a CaffeNet (BatchNorm folded).")
@caffe_option("model", type=click.Path(dir_okay=False), help="Prototxt for the torch engine (deploy or train_val).")
@caffe_option("weights", type=click.Path(dir_okay=False), help=".caffemodel for the torch engine.")
@caffe_option("gpu", help="Torch engine: CUDA device as Caffe's -gpu (e.g. 0); default the CPU.")
@caffe_option("bf16", is_flag=True, help="Torch engine: bf16 autocast.")
@caffe_option("compile", "do_compile", is_flag=True,
              help="Torch engine: torch.compile(mode='reduce-overhead') (CUDA graphs on a GPU) at a fixed batch size.")
@caffe_option("mean_file", type=click.Path(dir_okay=False), help="mean.binaryproto (compute_image_mean's).")
@caffe_option("mean_value", help="Per-channel means, comma-separated (BGR), instead of a mean file.")
@caffe_option("scale", type=float, help="transform_param.scale, after the mean (default 1).")
@caffe_option("resize", help="Resize images to N or H,W first (default: the model's record, the mean image's "
                             "size, else the input's).")
@caffe_option("crop_size", type=click.IntRange(min=1), help="Centre crop side (default: the net's input side when needed).")
@caffe_option("providers", help="ONNX Runtime providers in order of preference, e.g. cuda,cpu (unavailable ones "
                                "are skipped, with a warning naming the one used; default: cuda when available).")
@caffe_option("top_k", default=5, show_default=True, type=click.IntRange(min=1), help="Classes to show per image.")
@caffe_option("output_blob", help="Output to read (default: 'prob' when the net has it, else the first).")
@caffe_option("batch_size", default=16, show_default=True, type=click.IntRange(min=1), help="Images per call.")
@progress_option()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def predict_command(onnx_path: str | None, engine: str, model: str | None, weights: str | None, gpu: str | None,
                    bf16: bool, do_compile: bool, mean_file: str | None, mean_value: str | None,
                    scale: float | None, resize: str | None, crop_size: int | None, providers: str | None, top_k: int,
                    output_blob: str | None, batch_size: int, progress: bool | None, images: tuple[str, ...]) -> None:
    """Run a net on image files with Caffe's TEST preprocessing; print per image its score
    (one-output regression nets), the expected score Σ p_k·(60+k) and the top-k scores (40-class
    score nets), or the top-k classes. A model exported with its transform needs no
    preprocessing flags."""
    from caffe_compat.onnx.predict import format_predictions, predict

    session = None
    if engine == "torch":
        from caffe_compat.onnx.engines import TorchEngine

        if model is None or weights is None:
            raise CaffeCompatError("--engine torch needs --model and --weights (the Caffe net, not the .onnx)")
        session = TorchEngine(model, weights, gpu=gpu, bf16=bf16, compile=do_compile, batch_size=batch_size,
                              mean_file=mean_file, mean_value=_floats(mean_value, "mean_value"), scale=scale)
        mean_file, mean_value, scale = None, None, None  # now part of the engine's transform
    elif onnx_path is None:
        raise CaffeCompatError("--onnx is required with --engine onnxruntime")
    elif gpu is not None or bf16 or do_compile:
        raise CaffeCompatError("--gpu/--bf16/--compile are torch-engine flags; with onnxruntime use --providers")
    probs = predict(onnx_path, list(images), mean_file, mean_value=_floats(mean_value, "mean_value"),
                    scale=scale, resize=_size(resize), crop_size=crop_size, providers=_names(providers),
                    output=output_blob, batch_size=batch_size, progress=want_progress(progress), session=session)
    for line in format_predictions(images, probs, top_k):
        click.echo(line)


@main.command("export-torch")
@caffe_option("model", required=True, type=click.Path(dir_okay=False), help="Prototxt of the net (any phase).")
@caffe_option("weights", required=True, type=click.Path(dir_okay=False), help="The .caffemodel to convert.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The .safetensors file to write.")
@caffe_option("keys", type=click.Choice(["index", "torch"]), default="index", show_default=True,
              help="'index': '<layer>.<blob index>'; 'torch': '<layer>.weight' / '.bias' where Caffe's blobs are "
                   "a weight and a bias (see converters/README.md).")
@caffe_option("phase", type=click.Choice(["TRAIN", "TEST"]), default="TEST", show_default=True,
              help="Phase to build the net in (which layers exist).")
def export_torch_command(model: str, weights: str, output: str, keys: str, phase: str) -> None:
    """Write a caffemodel's blobs as a name-keyed PyTorch state dict (safetensors, never pickle)."""
    from caffe_compat.net.torch_state import export_torch

    click.echo(export_torch(model, weights, output, keys=keys, phase=PHASES[phase]))


@main.command("import-torch")
@caffe_option("model", required=True, type=click.Path(dir_okay=False), help="Prototxt of the net to fill.")
@caffe_option("state", required=True, type=click.Path(dir_okay=False),
              help="State dict: .safetensors, or .pt/.pth (loaded with weights_only=True).")
@caffe_option("map", "mapping",
              help="JSON file mapping the state's names to '<layer>.<blob index>' (or a shipped one: "
                   "torchvision-resnet50).")
@caffe_option("template", type=click.Path(dir_okay=False),
              help="Write into this caffemodel's layout (layers, order, blob shapes) instead of Net::ToProto's.")
@dual_option("allow-missing", is_flag=True, help="Blobs the state does not give keep their filler values.")
@caffe_option("phase", type=click.Choice(["TRAIN", "TEST"]), default="TEST", show_default=True,
              help="Phase to build the net in (Net::ToProto writes it into every layer).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .caffemodel to write.")
def import_torch_command(model: str, state: str, mapping: str | None, template: str | None, allow_missing: bool,
                         phase: str, output: str) -> None:
    """Write a .caffemodel from a PyTorch state dict keyed by layer name (or mapped onto them)."""
    from caffe_compat.net.torch_state import import_torch

    click.echo(import_torch(model, state, output, mapping=mapping, template=template, allow_missing=allow_missing,
                            phase=PHASES[phase]))
