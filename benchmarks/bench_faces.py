"""The report's default face detector on real faces and on pictures without any face.

    python benchmarks/bench_faces.py data/scut-fbp5500 [--sizes 350 128] [--non-faces 1000]

- **Recall**: SCUT-FBP5500's 5,500 images hold one frontal face each; a hit is an image with
  at least one detection, "exactly one" an image without ``several_faces``. Measured on the
  originals (350 px) and on the images resized as ``prepare --size 128`` stores them.
- **False alarms**: images drawn here from a fixed seed that hold no face: smoothed noise at
  several scales, stripes and checkerboards, random ellipses and rectangles, gradients (half
  of them with the colour statistics of skin). Share with at least one detection.
- **Seconds per 1,000 images**: wall time of ``quality_flags`` (detector + image flags) over
  the images already decoded, one process.
- **eyes_covered**: the SCUT faces (no sunglasses: false alarms) and the same faces with dark
  "sunglasses" painted over the eyes (two filled ellipses at the eye positions of the
  detected box: recall).

Figures go into docs/scut-fbp5500.md ("Face flags") with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from caffe_compat.report.faces import open_detector, quality_flags


def non_faces(count: int, side: int = 256, seed: int = 7) -> list[np.ndarray]:
    """``count`` BGR pictures without faces, from a fixed seed (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        kind = i % 5
        if kind == 0:  # smoothed noise at a random scale
            cells = int(rng.integers(4, 64))
            img = cv2.resize(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8), (side, side),
                             interpolation=cv2.INTER_CUBIC)
        elif kind == 1:  # stripes or a checkerboard
            period = int(rng.integers(6, 64))
            y, x = np.mgrid[:side, :side]
            angle = rng.uniform(0, np.pi)
            wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
            if rng.random() < 0.5:
                wave = wave * np.sin((x * -np.sin(angle) + y * np.cos(angle)) * 2 * np.pi / period)
            grey = ((wave + 1) * 127.5).astype(np.uint8)
            img = cv2.merge([grey, grey, grey])
        elif kind == 2:  # ellipses and rectangles on a flat background
            img = np.full((side, side, 3), rng.integers(0, 256, 3), np.uint8)
            for _ in range(int(rng.integers(3, 12))):
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                centre = tuple(int(c) for c in rng.integers(0, side, 2))
                axes = tuple(int(c) for c in rng.integers(4, side // 3, 2))
                if rng.random() < 0.5:
                    cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
                else:
                    cv2.rectangle(img, centre, (centre[0] + axes[0], centre[1] + axes[1]), colour, -1)
        else:  # gradients, half of them with skin colours, plus noise
            y, x = np.mgrid[:side, :side].astype(np.float32) / side
            base = np.array([120, 150, 200] if kind == 3 else rng.integers(0, 256, 3), np.float32)
            ramp = (rng.uniform(-80, 80) * x + rng.uniform(-80, 80) * y)[..., None]
            img = np.clip(base + ramp + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)
        out.append(img)
    return out


def paint_sunglasses(bgr: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Two dark filled ellipses where the eyes of a frontal face box are."""
    x, y, w, h = box
    img = bgr.copy()
    for cx in (x + 0.3 * w, x + 0.7 * w):
        cv2.ellipse(img, (int(cx), int(y + 0.38 * h)), (int(0.17 * w), int(0.1 * h)), 0, 0, 360, (20, 20, 25), -1)
    return img


def timed_flags(images: list[np.ndarray], detector) -> tuple[list[tuple[str, ...]], float]:
    start = time.perf_counter()
    flags = quality_flags(images, detector)
    return flags, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="the SCUT-FBP5500 folder (Images/)")
    p.add_argument("--sizes", type=int, nargs="+", default=[350, 128], help="square sides to measure at")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--non-faces", type=int, default=1000)
    args = p.parse_args()
    detector, note = open_detector(None)
    print(note)
    paths = sorted((args.data / "Images").glob("*.jpg"))[: args.limit]
    originals = [cv2.imread(str(path)) for path in paths]
    results: dict = {"detector": note, "images": len(paths)}
    for side in args.sizes:
        images = [img if img.shape[0] == side else cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
                  for img in originals]
        flags, seconds = timed_flags(images, detector)
        found = sum("no_face" not in f for f in flags)
        one = sum("no_face" not in f and "several_faces" not in f for f in flags)
        counts = {name: sum(name in f for f in flags) for name in sorted({n for f in flags for n in f})}
        results[f"scut_{side}px"] = {"recall": found / len(images), "exactly_one": one / len(images),
                                     "flag_counts": counts, "seconds_per_1000": 1000 * seconds / len(images)}
        print(side, json.dumps(results[f"scut_{side}px"]))
        if side == args.sizes[0]:
            painted, boxes = [], 0
            for img in images:
                faces = detector.detect(img)
                if faces:
                    boxes += 1
                    painted.append(paint_sunglasses(img, max(faces, key=lambda f: f.box[2] * f.box[3]).box))
            covered, _ = timed_flags(painted, detector)
            results[f"sunglasses_{side}px"] = {
                "faces_painted": boxes, "eyes_covered_recall": sum("eyes_covered" in f for f in covered) / max(1, boxes),
                "still_found": sum("no_face" not in f for f in covered) / max(1, boxes),
                "eyes_covered_false_alarms_unpainted": counts.get("eyes_covered", 0) / len(images)}
            print("sunglasses", json.dumps(results[f"sunglasses_{side}px"]))
    blanks = non_faces(args.non_faces)
    flags, seconds = timed_flags(blanks, detector)
    results["non_faces_256px"] = {"images": len(blanks), "false_alarm_rate": sum("no_face" not in f for f in flags) / len(blanks),
                                  "seconds_per_1000": 1000 * seconds / len(blanks)}
    print("non-faces", json.dumps(results["non_faces_256px"]))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
