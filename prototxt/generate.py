"""Regenerate every committed prototxt in this folder from caffe_compat.workflow.prototxt_defs.

    .venv/bin/python prototxt/generate.py          # rewrite the files
    .venv/bin/python prototxt/generate.py --check  # exit 1 if a committed file differs

Paths inside the files are relative to the folder you run ``caffe-compat train`` from (the
project root holding ``data/`` and ``snapshots/``); see README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.workflow.prototxt_defs import DataSpec, SolverSpec, deploy, solver, train_val

HERE = Path(__file__).resolve().parent

# Face score, 40 classes: 40 x 1000 train images (batch 32 -> 1250 iterations an epoch) and
# 40 x 200 val images (batch 25 -> 320 test iterations cover them once); 16 epochs.
SCORE40 = dict(
    data=DataSpec(),
    solver=dict(base_lr=0.001, stepsize=8000, max_iter=20000, test_iter=320, test_interval=1250,
                snapshot=2500),
)
# SCUT-FBP5500 (see prototxt/README.md and issue 12), lists/LMDBs/mean from
# scripts/prepare_scut_fbp5500.py: 3300 train images on the 60/40 split (batch 32 -> 103
# iterations an epoch), 4400 on a 5-fold split (138); 2200 / 1100 test images (batch 25 -> 88 /
# 44 test iterations; the files carry the 60/40 values). 4000 iterations = 39 epochs of 60/40,
# 29 of a fold. Adam + poly (linear to 0) + L1 loss: SGD at 0.001 with the squared loss diverged
# within 5 iterations on real faces; measurements in docs/benchmarks.md ("SCUT-FBP5500").
SCUT_SOLVER = dict(type="Adam", lr_policy="poly", base_lr=0.0001, max_iter=4000, test_iter=88,
                   test_interval=500, snapshot=1000)
SCUT = dict(
    data=DataSpec(train_source="data/scut_train_lmdb", val_source="data/scut_test_lmdb",
                  mean_file="data/scut_mean.binaryproto"),
    solver=SCUT_SOLVER,
)
# The CPU walk-through of docs/scut-fbp5500.md: the same net at 112 px crops of the 128 px
# images `prepare --size 128` writes, batch 16, 400 iterations (2 epochs of the 60/40 training
# split), reading the prepared split where the prepare step leaves it (no `data` link to make).
SCUT_CPU = dict(
    data=DataSpec(train_source="data/scut/60-40/scut_train_lmdb", val_source="data/scut/60-40/scut_test_lmdb",
                  mean_file="data/scut/60-40/scut_mean.binaryproto", crop_size=112, train_batch=16),
    solver=dict(SCUT_SOLVER, max_iter=400, test_iter=0, snapshot=400, solver_mode="CPU"),
    crop_size=112,
    snapshot_prefix="snapshots/scut_cpu",
)
SCUT40 = dict(
    data=DataSpec(train_source="data/scut40_train_lmdb", val_source="data/scut40_test_lmdb",
                  mean_file="data/scut_mean.binaryproto"),
    solver=SCUT_SOLVER,
)


def files() -> dict[str, str]:
    """Relative path -> content of every generated file."""
    recipes = []
    for backbone in ("resnet50", "resnet50_1by2"):
        recipes += [(backbone, backbone, "score40", SCORE40), (f"scut_fbp5500/{backbone}", backbone, "scut", SCUT)]
    recipes.append(("scut_fbp5500/resnet50_1by2_40", "resnet50_1by2", "scut40", SCUT40))
    recipes.append(("scut_fbp5500/resnet50_1by2_cpu", "resnet50_1by2", "scut", SCUT_CPU))
    out: dict[str, str] = {}
    for folder, backbone, task, recipe in recipes:
        out[f"{folder}/train_val.prototxt"] = train_val(backbone, task, recipe["data"])
        out[f"{folder}/deploy.prototxt"] = deploy(backbone, task, recipe.get("crop_size", 224))
        prefix = recipe.get("snapshot_prefix", f"snapshots/{backbone}_{task}")
        out[f"{folder}/solver.prototxt"] = solver(SolverSpec(
            net=f"prototxt/{folder}/train_val.prototxt", snapshot_prefix=prefix, **recipe["solver"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for rel, text in files().items():
        path = HERE / rel
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, text.encode("utf-8"))
            print(f"wrote prototxt/{rel}")
    for rel in stale:
        print(f"out of date: prototxt/{rel} (run prototxt/generate.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
