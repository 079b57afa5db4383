"""Shared fixtures: the real data beside the repo (skip with a reason when absent) and tiny image trees."""

from __future__ import annotations

import contextlib
import os
import shutil
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


def pytest_collection_modifyitems(config, items):
    """The longest tests first (``@pytest.mark.slow(seconds=N)``: seconds on an idle 2-core machine), then the rest in
    file order. With ``-n 2`` (the README's test command) the two workers start on the long ``dvc repro`` tests at
    once and the short ones fill in behind them, instead of one worker finishing a long test alone at the end."""
    def cost(item):
        mark = item.get_closest_marker("slow")
        return -float(mark.kwargs.get("seconds", 1)) if mark is not None else 0.0

    items.sort(key=cost)  # stable: equal costs keep their order


def write_image(path: Path, value: int = 128, size: int = 24, seed: int | None = None) -> Path:
    """A small grayscale image; ``seed`` makes its bytes unique, ``value`` sets its level."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size), value, dtype=np.uint8)
    if seed is not None:
        arr = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def fit_tiny_project(tmp_path: Path, monkeypatch, *, precision: str = "fp32") -> Path:
    """In ``tmp_path``: prepare a synthetic set -> extract with tiny_cnn (``precision`` on the CPU) -> fit a
    logistic head at k=5, seed 0 through the CLI; the saved head's path (relative to ``tmp_path``)."""
    from featpipe.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    (tmp_path / "params.yaml").write_text(
        "data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 16, size: 32}}\n"
        "split: {seeds: [0], shots: [5], val_fraction: 0.2, test_fraction: 0.2}\n"
        f"extract: {{backbones: [tiny_cnn], precision: {precision}, device: cpu, batch_size: 32}}\n"
        "fit: {n_jobs: 1}\n")
    assert main(["prepare"]) == 0
    assert main(["extract", "--no-progress"]) == 0
    assert main(["fit", "--head", "logistic", "--shots", "5", "--seeds", "0"]) == 0
    return next(Path("models").glob("tiny_cnn-logistic-k5-s0-*.skops"))


@contextlib.contextmanager
def module_folder(tmp_path_factory, name: str):
    """A folder for one module's planted files (full-size random weights: hundreds of MB each), removed when the
    module's fixture ends, so a full run does not keep every module's weights until the session ends."""
    folder = tmp_path_factory.mktemp(name)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def extracted_project(root: Path, params: str, *prepare_args: str) -> Path:
    """In ``root``: ``params`` as params.yaml, then ``featpipe prepare`` (with ``prepare_args``) and ``extract``
    (offline); the working directory is restored. For module-scoped project fixtures copied per test."""
    from featpipe.cli.main import main

    (root / "params.yaml").write_text(params)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        os.environ["FEATPIPE_OFFLINE"] = "1"
        assert main(["prepare", *prepare_args]) == 0
        assert main(["extract", "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    return root


def copy_project(base: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the project ``base`` under ``tmp_path``, made the working directory (offline)."""
    root = tmp_path / "p"
    shutil.copytree(base, root, symlinks=True)
    monkeypatch.chdir(root)
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    return root
