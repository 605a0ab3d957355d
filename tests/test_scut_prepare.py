"""scripts/prepare_scut_fbp5500.py and benchmarks/bench_scut.py on a tiny synthetic stand-in of
SCUT-FBP5500's layout (CI has no real faces: the data set is non-commercial)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from caffe_compat.data.image_mean import compute_image_mean
from caffe_compat.data.lmdb_dataset import LMDBDataset
from caffe_compat.io.blob import read_binaryproto
from caffe_compat.workflow.scut_fbp5500 import class_score, regression_label, score_class

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "prepare_scut_fbp5500.py"


def fake_scut(root: Path, count: int = 10, size: int = 40) -> dict[str, float]:
    """Images/ and train_test_files/ as the real data set lays them out, with random scores."""
    rng = np.random.default_rng(0)
    (root / "Images").mkdir(parents=True)
    scores = {}
    for i in range(count):
        name = f"{'AF' if i % 2 else 'CM'}{i + 1}.jpg"
        cv2.imwrite(str(root / "Images" / name), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        scores[name] = round(float(rng.uniform(1.0, 5.0)), 6)
    names = list(scores)
    lines = lambda subset: "".join(f"{n} {scores[n]}\n" for n in subset)  # noqa: E731
    split = root / "train_test_files" / "split_of_60%training and 40%testing"
    split.mkdir(parents=True)
    cut = count * 6 // 10
    (split / "train.txt").write_text(lines(names[:cut]))
    (split / "test.txt").write_text(lines(names[cut:]))
    for k in range(1, 6):
        fold = root / "train_test_files" / "5_folders_cross_validations_files" / f"cross_validation_{k}"
        fold.mkdir(parents=True)
        test = names[(k - 1) * count // 5 : k * count // 5]
        (fold / f"train_{k}.txt").write_text(lines([n for n in names if n not in test]))
        (fold / f"test_{k}.txt").write_text(lines(test))
    return scores


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_labels() -> None:
    assert regression_label(2.716667) == 272 and regression_label(1.02) == 102 and regression_label(5.0) == 500
    assert [score_class(s) for s in (1.0, 3.0, 5.0, 4.75)] == [0, 20, 39, 37]
    assert class_score(0) == 1.0 and class_score(39) == pytest.approx(5.0)
    for s in np.linspace(1, 5, 81):  # the class keeps the score within half a class step
        assert abs(class_score(score_class(s)) - s) <= 4 / 39 / 2 + 1e-9


def test_prepare_builds_lists_lmdbs_and_mean_per_split(tmp_path: Path) -> None:
    scores = fake_scut(tmp_path / "scut")
    out = tmp_path / "out"
    done = run_script(str(tmp_path / "scut"), "-o", str(out), "--size", "32", "--protocol", "all", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(built)") == 6
    for split, train, test in [("60-40", 6, 4)] + [(f"fold{k}", 8, 2) for k in range(1, 6)]:
        folder = out / split
        for prefix, labeler in (("scut", regression_label), ("scut40", score_class)):
            listed = [line.split() for line in (folder / f"{prefix}_train.txt").read_text().splitlines()]
            assert len(listed) == train
            assert all(int(label) == labeler(scores[name]) for name, label in listed)
            db = LMDBDataset(str(folder / f"{prefix}_train_lmdb"))
            assert len(db) == train and db[0][0].shape == (3, 32, 32)
            assert sorted(k.decode().split("_", 1)[1] for k in db.keys) == sorted(n for n, _ in listed)
            assert len(LMDBDataset(str(folder / f"{prefix}_test_lmdb"))) == test
        mean = read_binaryproto(folder / "scut_mean.binaryproto")
        np.testing.assert_array_equal(mean.reshape(3, 32, 32), compute_image_mean(folder / "scut_train_lmdb").mean.reshape(3, 32, 32))
        assert json.loads((folder / "manifest.json").read_text())["train"] == train


def test_prepare_reuses_a_finished_split_and_rebuilds_a_changed_one(tmp_path: Path) -> None:
    fake_scut(tmp_path / "scut")
    out = tmp_path / "out"
    args = (str(tmp_path / "scut"), "-o", str(out), "--size", "24", "--protocol", "60-40", "--no-classes40")
    assert run_script(*args).returncode == 0
    stamp = (out / "60-40" / "scut_train_lmdb" / "data.mdb").stat().st_mtime_ns
    again = run_script(*args)
    assert again.returncode == 0 and "(reused)" in again.stdout
    assert (out / "60-40" / "scut_train_lmdb" / "data.mdb").stat().st_mtime_ns == stamp
    resized = run_script(*args[:4], "32", *args[5:])
    assert "(built)" in resized.stdout
    assert LMDBDataset(str(out / "60-40" / "scut_train_lmdb"))[0][0].shape == (3, 32, 32)


def test_prepare_names_a_bad_line(tmp_path: Path) -> None:
    fake_scut(tmp_path / "scut")
    split = tmp_path / "scut" / "train_test_files" / "split_of_60%training and 40%testing" / "test.txt"
    split.write_text(split.read_text() + "AF99.jpg seven\n")
    done = run_script(str(tmp_path / "scut"), "-o", str(tmp_path / "out"), "--protocol", "60-40")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("caffe-compat: error: ") and "test.txt:5:" in done.stderr
    missing = run_script(str(tmp_path), "-o", str(tmp_path / "out"))
    assert missing.returncode == 1 and "no Images/ folder" in missing.stderr


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scut", ROOT / "benchmarks" / "bench_scut.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_recipe(folder: Path) -> Path:
    """The shipped regression recipe (data layers, head, L1 loss, solver) on a two-layer trunk,
    so the protocol runner is tested in seconds; the shipped trunk itself is trained on real
    faces by tests/test_scut_recipes.py."""
    from caffe_compat.io.prototxt import parse_net_text, read_solver, to_text
    from caffe_compat.proto import caffe_pb2

    shipped = ROOT / "prototxt" / "scut_fbp5500" / "resnet50_1by2"
    net = parse_net_text((shipped / "train_val.prototxt").read_text())
    data = [layer for layer in net.layer if layer.type == "Data"]
    head = [layer for i, layer in enumerate(net.layer) if i >= [l.name for l in net.layer].index("fc_score")]
    trunk = parse_net_text("""
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
          convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "msra" } } }
        layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }""")
    tiny = caffe_pb2.NetParameter(name="tiny_scut")
    tiny.layer.extend([*data, *trunk.layer, *head])
    folder.mkdir()
    (folder / "train_val.prototxt").write_text(to_text(tiny))
    (folder / "solver.prototxt").write_text(to_text(read_solver(shipped / "solver.prototxt")))
    return folder


def test_bench_runs_the_protocol_and_resumes(tmp_path: Path) -> None:
    """The protocol runner on the stand-in, through `caffe-compat train` and `caffe-compat test`:
    metrics equal numpy's on its predictions, every test image is scored once, and a second run
    reuses the finished split instead of training again."""
    scores = fake_scut(tmp_path / "scut", count=10, size=40)
    bench = _bench()
    argv = ["--data", str(tmp_path / "scut"), "--work", str(tmp_path / "work"), "--size", "32", "--crop", "24",
            "--batch", "2", "--epochs", "1", "--ema", "0.9", "--no-weights",
            "--recipe-dir", str(tiny_recipe(tmp_path / "tiny"))]
    bench.main(argv)
    results = sorted((tmp_path / "work").glob("*/results.json"))
    assert len(results) == 1
    data = json.loads(results[0].read_text())["results"]
    assert [r["split"] for r in data] == ["60-40"] and data[0]["iterations"] == 3
    run = results[0].parent / "60-40"
    names, preds = bench.read_predictions(run / "report" / "predictions.csv", classes40=False)
    assert sorted(names) == sorted(list(scores)[6:])
    truth = np.array([scores[n] for n in names])
    assert data[0]["mae"] == pytest.approx(np.abs(np.array(preds) - truth).mean())
    assert data[0]["pc"] == pytest.approx(np.corrcoef(preds, truth)[0, 1])
    stamp = (run / "train.log").stat().st_mtime_ns
    bench.main(argv)
    assert (run / "train.log").stat().st_mtime_ns == stamp
    assert "| 60-40 |" in (results[0].parent / "results.md").read_text()
