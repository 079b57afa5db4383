"""A missing or too-old optional dependency (pydicom, ray) is one clear error at the start of the work, never a
per-file reject reason; ``from featpipe.finetune import *`` works."""

from __future__ import annotations

import importlib.metadata
import sys

import numpy as np
import pytest
from PIL import Image

import featpipe.finetune as finetune
from featpipe.engine import ray as engine
from featpipe.core import optional
from featpipe.core.errors import FeatpipeError
from featpipe.core.optional import require, version_tuple
from featpipe.data.manifest import build_manifest
from featpipe.data.sources import Record
from featpipe.imaging.decode import decode, probe
from test_imaging import _dicom as write_dicom


@pytest.fixture(autouse=True)
def _forget_passed_checks(monkeypatch):
    monkeypatch.setattr(optional, "_passed", set())


def _hide(monkeypatch, module: str) -> None:
    """Make ``import module`` fail as if it were not installed."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)


def _fake_version(monkeypatch, dist: str, version: str) -> None:
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda d: version if d == dist else real(d))


def _dicom(path) -> str:
    """A 4 x 4 12-bit MONOCHROME2 DICOM file (written as tests/test_imaging.py writes its DICOM files)."""
    return write_dicom(path, np.arange(16, dtype=np.uint16).reshape(4, 4), PhotometricInterpretation="MONOCHROME2")


def test_version_tuple():
    assert version_tuple("3.0.1rc2") == (3, 0, 1)
    assert version_tuple("2.60") == (2, 60) > version_tuple("2.9.3")
    assert version_tuple("2.4.0") < version_tuple("3.0")


def test_require_missing_and_too_old(monkeypatch):
    require("numpy", "1.0", extra="x", why="numbers")  # present and new enough: nothing happens
    _fake_version(monkeypatch, "numpy", "0.9.1")
    with pytest.raises(FeatpipeError, match=r"numpy>=9.0 is needed for numbers, but numpy 0.9.1 is installed: "
                                            r"pip install 'featpipe\[x\]'"):
        require("numpy", "9.0", extra="x", why="numbers")
    _hide(monkeypatch, "numpy_not_here")
    with pytest.raises(FeatpipeError, match=r"numpy_not_here>=1.0 is needed for numbers, but it is not installed"):
        require("numpy_not_here", "1.0", extra="x", why="numbers")


def test_dicom_without_pydicom_stops_the_command(tmp_path, monkeypatch):
    path = _dicom(tmp_path / "a.dcm")
    png = tmp_path / "b.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    assert decode(path, size=4).shape == (4, 4, 1)  # with pydicom 3: decodes
    monkeypatch.setattr(optional, "_passed", set())
    _hide(monkeypatch, "pydicom")
    with pytest.raises(FeatpipeError, match=r"pydicom>=3.0.1 is needed for DICOM files, but it is not installed: "
                                            r"pip install 'featpipe\[dicom\]'"):
        probe(path, max_pixels=100)
    records = [Record("a", path, "x", None), Record("b", str(png), "y", None)]
    with pytest.raises(FeatpipeError, match="pydicom"):  # the scan stops; "a" is not rejected as unreadable
        build_manifest(records, max_pixels=100, workers=1)


def test_dicom_with_pydicom_2_stops_the_command(tmp_path, monkeypatch):
    path = _dicom(tmp_path / "a.dcm")
    _fake_version(monkeypatch, "pydicom", "2.4.4")
    with pytest.raises(FeatpipeError,
                       match=r"pydicom>=3.0.1 is needed for DICOM files, but pydicom 2.4.4 is installed"):
        decode(path, size=4)


def test_ray_missing_or_too_old_is_one_line(monkeypatch):
    pytest.importorskip("ray")
    _fake_version(monkeypatch, "ray", "2.9.3")
    with pytest.raises(FeatpipeError, match=r"ray>=2.60 is needed for --engine ray, but ray 2.9.3 is installed: "
                                            r"pip install 'featpipe\[ray\]'"):
        engine.import_ray()
    monkeypatch.undo()
    monkeypatch.setattr(optional, "_passed", set())
    _hide(monkeypatch, "ray")
    with pytest.raises(FeatpipeError, match=r"ray>=2.60 is needed for --engine ray, but it is not installed"):
        engine.import_ray()


def test_finetune_star_import():
    namespace: dict = {}
    exec("from featpipe.finetune import *", namespace)
    assert set(finetune.__all__) <= set(namespace)
