"""Bit rot inside the caches is detected, never used (issue 21, failure 2): bytes flipped on disk inside the
``features`` of a feature cache or the ``images`` of a decoded-image cache make a read a one-line error, and
the next ``extract`` / ``decode`` rebuilds exactly the damaged rows to the original bytes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from featpipe.cli.main import main
from featpipe.core.errors import CacheError
from featpipe.decoded.cache import DecodedImages
from tests.conftest import copy_project, extracted_project

PARAMS = ("data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 16, size: 32}}\n"
          "split: {seeds: [0], shots: [5], val_fraction: 0.2, test_fraction: 0.2}\n"
          "decode: {workers: 1}\n"
          "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 32}\n"
          "fit: {n_jobs: 1, save_models: false}\n")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return extracted_project(tmp_path_factory.mktemp("rot"), PARAMS, "--no-progress")


@pytest.fixture
def project(base, tmp_path, monkeypatch):
    return copy_project(base, tmp_path, monkeypatch)


def _flip(path: Path, dataset: str, chunk: int, n: int) -> None:
    """Invert ``n`` bytes of chunk ``chunk`` of ``dataset`` in the file on disk (as a failing disk would)."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 8)
        data = bytearray(fh.read(n))
        fh.seek(info.byte_offset + 8)
        fh.write(bytes(b ^ 0xFF for b in data))


def _array(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][()]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_flipped_feature_bytes_are_refused_then_re_extracted(project, capsys):
    cache = next(Path("cache/demo").glob("tiny_cnn*.h5"))
    good = _array(cache, "features")
    _flip(cache, "features", 0, 64)
    assert not np.array_equal(_array(cache, "features"), good)
    capsys.readouterr()
    assert main(["fit", "--head", "logistic", "--shots", "5", "--seeds", "0"]) == 1
    err = _one_line(capsys)
    assert str(cache) in err and "damaged" in err and "featpipe extract" in err
    assert main(["extract", "--no-progress"]) == 0
    assert "do not match their checksums (damaged): extracting them again" in capsys.readouterr().err
    np.testing.assert_array_equal(_array(cache, "features"), good)
    assert main(["fit", "--head", "logistic", "--shots", "5", "--seeds", "0"]) == 0


def test_flipped_decoded_pixels_are_refused_then_decoded_again(project, capsys):
    cache = next(Path("cache/demo").glob("decoded-*.h5"))
    good = _array(cache, "images")
    _flip(cache, "images", 3, min(2048, good[0].size - 8))
    with DecodedImages(cache) as d, pytest.raises(CacheError, match="damaged .*rows 0-"):
        d.read([3])
    capsys.readouterr()
    assert main(["decode", "--no-progress"]) == 0
    assert "do not match their checksums (damaged): decoding them again" in capsys.readouterr().err
    np.testing.assert_array_equal(_array(cache, "images"), good)
    with DecodedImages(cache) as d:
        np.testing.assert_array_equal(d.read(np.arange(len(d))), good)
