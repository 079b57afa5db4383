"""The first pass touches each image's pixels once: prepare (verification + decoded caches from one decode),
decode, extract of two backbones sharing a decode size; a second backbone and a fine-tuning epoch decode
nothing. Pillow's decoder (``ImageFile.load``) is wrapped and every decode is logged to a file, so decodes
in the worker processes are counted too."""

from __future__ import annotations

import argparse
import collections
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featpipe.params.config import ExtractParams, FinetuneParams, load_params
from featpipe.backbones.modelinput import first_pass
from featpipe.data.manifest import read_manifest
from featpipe.decoded.cache import DecodedImages, DecodeOptions

from tests.conftest import write_image


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / "img"
    for c, cls in enumerate(("finding", "normal")):
        for i in range(14):
            write_image(root / cls / f"{cls}{i:02d}.png", size=40, seed=100 * c + i)
    shutil.copy(root / "normal" / "normal03.png", root / "normal" / "normal99_copy.png")  # same bytes
    Image.new("RGB", (40, 40), (200, 40, 10)).save(root / "normal" / "z_colour.png")  # colour after grey
    good = (root / "finding" / "finding05.png").read_bytes()
    (root / "finding" / "finding50_cut.png").write_bytes(good[: len(good) // 2])
    return root


def _log_decodes(monkeypatch, log: Path) -> None:
    """Log every pixel decode Pillow does (an ``ImageFile.load`` with tiles left to decode), wherever it
    is triggered from (featpipe's decoder, or e.g. Pillow's own PNG ``getexif``)."""
    from PIL import ImageFile

    real = ImageFile.ImageFile.load

    def counted(self):
        if self.tile:
            with open(log, "a") as fh:  # O_APPEND: lines from forked workers do not interleave
                fh.write(f"{self.filename}\n")
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)


def _decodes(log: Path) -> collections.Counter:
    return collections.Counter(log.read_text().splitlines() if log.exists() else [])


def test_first_pass_decodes_each_image_once(tmp_path, folder, monkeypatch):
    from featpipe.cli.commands import decode as decode_cmd
    from featpipe.data.prepare import prepare
    from featpipe.data.splits import load_splits
    from featpipe.features.extract import extract
    from featpipe.finetune import run

    log = tmp_path / "decodes.log"
    _log_decodes(monkeypatch, log)
    params = load_params(None, [
        "data.source=folder", f"data.path={folder}", "data.name=fp", "decode.workers=2",
        "extract.backbones=[tiny_cnn,tiny_vit]", "finetune.backbones=[tiny_cnn]",
        "split.seeds=[0]", "split.shots=[2]", "split.val_fraction=0.2", "split.test_fraction=0.25",
    ])
    data, cache = tmp_path / "data", tmp_path / "cache"
    opts = DecodeOptions.from_params(params, progress=False)

    prepare(params, manifest_path=data / "manifest.csv", splits_path=data / "splits.json",
            decode=first_pass(params, cache_dir=cache, progress=False))
    manifest = read_manifest(data / "manifest.csv")  # paths joined to the data root
    rejects = pd.read_csv(data / "rejects.csv", dtype=str)
    assert rejects[["id", "reason"]].values.tolist() == [["finding/finding50_cut.png", "truncated"]]
    sp = load_splits(data / "splits.json")
    assert "finding/finding50_cut.png" not in set(sp.train) | set(sp.val) | set(sp.test)
    first = _decodes(log)
    copy = str(folder / "normal" / "normal99_copy.png")
    expected = {str(Path(p).resolve()) for p in manifest["path"] if p != copy} | {str(folder / "finding" / "finding50_cut.png")}
    assert set(first) == expected and set(first.values()) == {1}  # each once; the byte-identical copy not at all
    assert manifest.loc[manifest["id"] == "normal/normal99_copy.png", ["width", "height"]].values.tolist() == [[40, 40]]

    decode_cmd.run(argparse.Namespace(size=None, manifest=str(data / "manifest.csv"), cache_dir=str(cache), stamp=None,
                                      no_progress=True), params)
    for name in ("tiny_cnn", "tiny_vit"):  # both read decoded-32: one decode served both
        extract(data / "manifest.csv", backbone=name, dataset="fp", cache_dir=cache, decode=opts, progress=False,
                params=ExtractParams(precision="fp32", device="cpu", batch_size=16))
    paths = run.Paths(data / "manifest.csv", data / "splits.json", cache, tmp_path / "results", tmp_path / "models")
    run.run_job(run.Job("tiny_cnn", "head", 2, 0), FinetuneParams(epochs=1, patience=1, precision="fp32", device="cpu",
                                                                  save_models=False), paths, build=opts, progress=False)
    assert _decodes(log) == first  # decode stage, two extractions and a fine-tuning epoch: nothing decoded

    assert sorted(p.name for p in (cache / "fp").iterdir() if p.name.startswith("decoded")) == ["decoded-32.h5"]
    with DecodedImages(cache / "fp" / "decoded-32.h5") as r:
        assert list(r.ids) == manifest["id"].tolist() and r.channels == 3  # widened for the late colour image
        rows = r.read(r.index_of(["normal/normal03.png", "normal/normal99_copy.png", "normal/z_colour.png"]))
        np.testing.assert_array_equal(rows[0], rows[1])
        assert (rows[2] == [200, 40, 10]).all() and (rows[0][..., 0] == rows[0][..., 2]).all()
