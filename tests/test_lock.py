"""requirements/lock.txt agrees with pyproject.toml, and .ci/check_lock.py catches drift."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
tomllib = pytest.importorskip("tomllib")


def load_checker():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / ".ci" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_dependency_is_locked_within_its_range() -> None:
    """Fails after a merge that added or narrowed a dependency until `make lock` is rerun."""
    checker = load_checker()
    pins = checker.locked_pins(LOCK.read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for req in wanted:
        name = checker.canonical(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in the lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock has {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}: run `make lock`")


def test_every_pin_has_a_hash() -> None:
    """pip's --require-hashes needs one for each requirement; torch's is the CPU wheel's alone."""
    blocks = re.split(r"\n(?=[a-z0-9])", LOCK.read_text(encoding="utf-8"))
    pinned = [b for b in blocks if re.match(r"[a-z0-9][a-z0-9._-]*==", b)]
    assert pinned and all("--hash=sha256:" in b for b in pinned)
    (torch,) = [b for b in pinned if b.startswith("torch==")]
    assert torch.startswith("torch==2.13.0+cpu") and torch.count("--hash=") == 1


def test_check_lock_reports_each_difference() -> None:
    checker = load_checker()
    locked = checker.locked_pins("numpy==2.4.6 \\\n    --hash=sha256:ab\nOpenCV_Python.Headless==5.1.0.95 \\\n")
    assert locked == {"numpy": "2.4.6", "opencv-python-headless": "5.1.0.95"}
    assert checker.differences(locked, {"numpy": "2.4.6", "opencv-python-headless": "5.1.0.95", "pip": "26"}) == []
    assert checker.differences(locked, {"numpy": "2.5.0", "six": "1.17.0", "caffe-compat": "0.1.0"}) == [
        "numpy: lock has 2.4.6, installed 2.5.0",
        "opencv-python-headless: lock has 5.1.0.95, installed nothing",
        "six: installed 1.17.0, not in the lock",
    ]
