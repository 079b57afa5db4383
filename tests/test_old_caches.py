"""Caches written before checksums existed (issue 21, item 2): readers use them unchecked and say so in one line
naming the command that rebuilds them; extract and decode rebuild them in full, with checksums."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from featpipe.cli.main import main
from featpipe.core import checksums
from tests.conftest import copy_project, extracted_project

PARAMS = ("data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 12, size: 32}}\n"
          "split: {seeds: [0], shots: [3], val_fraction: 0.2, test_fraction: 0.2}\n"
          "decode: {workers: 1}\n"
          "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 32}\n"
          "fit: {n_jobs: 1}\n")
FIT = ["fit", "--head", "prototype", "--shots", "3", "--seeds", "0"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return extracted_project(tmp_path_factory.mktemp("oldcache"), PARAMS, "--no-progress")


def _strip(path: Path, name: str) -> None:
    """Make ``path`` look written by a featpipe without checksums."""
    with h5py.File(path, "a") as f:
        del f[name + checksums.SUFFIX]


def test_a_cache_without_checksums_is_read_unchecked_said_once_and_rebuilt_by_extract(base, tmp_path, monkeypatch,
                                                                                       capsys):
    copy_project(base, tmp_path, monkeypatch)
    monkeypatch.setattr(checksums, "_SAID", set())
    cache = Path("cache/demo/tiny_cnn.h5")
    _strip(cache, "features")
    capsys.readouterr()
    assert main(FIT) == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if "no checksums" in ln]
    assert said == [f"featpipe: {cache} has no checksums (written by an older featpipe): read unchecked; run "
                    "'featpipe extract --backbone tiny_cnn' to rebuild it with checksums"]
    assert main(["extract", "--no-progress"]) == 0
    assert "no checksums" in capsys.readouterr().err
    with h5py.File(cache) as f:
        assert checksums.bad_blocks(f, "features") == []


def test_a_decoded_cache_without_checksums_is_read_unchecked_and_said(base, tmp_path, monkeypatch, capsys):
    from featpipe.decoded.cache import DecodedImages

    copy_project(base, tmp_path, monkeypatch)
    monkeypatch.setattr(checksums, "_SAID", set())
    path = next(Path("cache/demo").glob("decoded-*.h5"))
    _strip(path, "images")
    capsys.readouterr()
    with DecodedImages(path) as r:
        first = r.read(np.arange(3))
        r.read(np.arange(3, 6))
    assert first.shape[0] == 3
    err = capsys.readouterr().err
    assert err.count("no checksums") == 1 and "'featpipe decode'" in err
