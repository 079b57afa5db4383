"""Shared fixtures: the real data beside the repo (skip with a reason when absent) and tiny image trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIGURE1 = SHARED_DATA / "figure1-covid-cxr"
PNEUMONIAMNIST = SHARED_DATA / "pneumoniamnist_balanced_28.npz"


@pytest.fixture
def figure1_dir() -> Path:
    if not (FIGURE1 / "metadata.csv").is_file():
        pytest.skip(f"real data not found at {FIGURE1} (the shared data folder beside the repo)")
    return FIGURE1


@pytest.fixture
def pneumoniamnist() -> Path:
    if not PNEUMONIAMNIST.is_file():
        pytest.skip(f"real data not found at {PNEUMONIAMNIST} (the shared data folder beside the repo)")
    return PNEUMONIAMNIST


def write_image(path: Path, value: int = 128, size: int = 24, seed: int | None = None) -> Path:
    """A small grayscale image; ``seed`` makes its bytes unique, ``value`` sets its level."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size), value, dtype=np.uint8)
    if seed is not None:
        arr = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path
