"""A backbone's ``interpolation`` is honoured: its decoded pixels are resized with that Pillow filter, the filter is
part of the decoded cache's identity (``decoded-<size>.h5`` for bilinear, ``decoded-<size>-<filter>.h5``
otherwise) and of the decoder identity feature caches record."""

from __future__ import annotations

import argparse
import dataclasses
import json

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from featpipe.backbones import registry
from featpipe.backbones.reference import Fixed
from featpipe.backbones.modelinput import decode_files, decode_key, ensure_decoded
from featpipe.cli.commands import decode as decode_cmd
from featpipe.core.fileio import file_sha256
from featpipe.data.prepare import prepare
from featpipe.decoded.cache import DecodedImages, DecodeOptions, decoder_identity
from featpipe.features import cache as featcache
from featpipe.features.extract import extract
from featpipe.imaging.base import DEFAULT_DRAFT, Resize
from featpipe.imaging.decode import decode
from featpipe.imaging.memory import to_pixels
from featpipe.params.config import ExtractParams, load_params

from tests.conftest import write_image


def _pil_reference(path, size: int, resample) -> np.ndarray:
    """Shorter side to ``size`` with Pillow's own ``resize(..., resample)``, then the centre ``size x size``."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        w, h = im.size
        ow, oh = (size, max(size, int(size * h / w))) if w <= h else (max(size, int(size * w / h)), size)
        im = im.resize((ow, oh), resample)
        top, left = round((oh - size) / 2.0), round((ow - size) / 2.0)
        return np.asarray(im.crop((left, top, left + size, top + size)))


def test_bicubic_backbone_decodes_with_pil_bicubic(figure1_dir, tmp_path):
    files = []
    for f in sorted((figure1_dir / "images").iterdir()):
        with Image.open(f) as im:
            if im.mode == "L":
                files.append(f)
        if len(files) == 3:
            break
    manifest = pd.DataFrame({"id": [f.name for f in files], "path": [str(f) for f in files],
                             "sha256": [file_sha256(f) for f in files]})
    form = decode_key("efficientnet_b4")
    assert form == Resize(384, "bicubic")  # EfficientNet-B4's preprocessing: 384 px, bicubic
    cached = {}
    for draft in (False, True):  # whole-image decoding (the default, compared with Pillow), and JPEG draft
        res = ensure_decoded(manifest, ["efficientnet_b4"], cache_dir=tmp_path / str(draft), dataset="f1",
                             options=DecodeOptions(1, draft=draft, progress=False))
        assert res.paths[form].name == "decoded-384-bicubic.h5"
        with DecodedImages(res.paths[form]) as r:
            assert "bicubic" in r.attrs["resize_method"]
            cached[draft] = r.read(r.index_of(manifest["id"]))
    ok, pixels, _ = decode_files([str(f) for f in files], form)  # predict's path: the pixels of the cache
    np.testing.assert_array_equal(np.stack(pixels), cached[DEFAULT_DRAFT])
    for f, row in zip(files, cached[False]):
        ref = _pil_reference(f, 384, Image.BICUBIC)
        np.testing.assert_array_equal(row[..., 0], ref)
        np.testing.assert_array_equal(to_pixels(str(f), size=form, draft=False)[..., 0], ref)
        bilinear = decode(str(f), size=384, draft=False)
        np.testing.assert_array_equal(bilinear[..., 0], _pil_reference(f, 384, Image.BILINEAR))
        assert not np.array_equal(bilinear, row)  # the filter matters


@pytest.fixture()
def bicubic_twin(monkeypatch) -> str:
    """``tiny_vit_bicubic``: tiny_vit (32 px) resized bicubically: same decode size, another filter."""
    spec = registry.get("tiny_vit")
    twin = dataclasses.replace(spec, name="tiny_vit_bicubic",
                               reference=Fixed(dataclasses.replace(spec.preprocess, interpolation="bicubic")))
    monkeypatch.setitem(registry._REGISTRY, twin.name, twin)
    return twin.name


def test_same_size_other_filter_gets_its_own_cache_and_decode_builds_both(tmp_path, bicubic_twin):
    for c, cls in enumerate(("finding", "normal")):
        for i in range(6):
            write_image(tmp_path / "img" / cls / f"{cls}{i}.png", size=45, seed=10 * c + i)
    params = load_params(None, [
        "data.source=folder", f"data.path={tmp_path / 'img'}", "data.name=it", "decode.workers=1",
        f"extract.backbones=[tiny_vit,{bicubic_twin}]", "finetune.backbones=[]",
        "split.seeds=[0]", "split.shots=[2]", "split.val_fraction=0.2", "split.test_fraction=0.25"])
    data, cache = tmp_path / "data", tmp_path / "cache"
    prepare(params, manifest_path=data / "manifest.csv", splits_path=data / "splits.json")  # verify only, no cache
    stamp = tmp_path / "decode.json"
    decode_cmd.run(argparse.Namespace(size=None, manifest=str(data / "manifest.csv"), cache_dir=str(cache),
                                      stamp=str(stamp), no_progress=True), params)
    names = sorted(p.name for p in (cache / "it").iterdir() if p.name.startswith("decoded"))
    assert names == ["decoded-32-bicubic.h5", "decoded-32.h5"]
    assert sorted(json.loads(stamp.read_text())) == ["32", "32-bicubic"]
    with DecodedImages(cache / "it" / "decoded-32.h5") as a, DecodedImages(cache / "it" / "decoded-32-bicubic.h5") as b:
        assert "bilinear" in a.attrs["resize_method"] and "bicubic" in b.attrs["resize_method"]
        assert list(a.ids) == list(b.ids) and not np.array_equal(a.read(range(len(a))), b.read(range(len(b))))
        bicubic_rows = b.read(range(len(b)))
        ids = list(b.ids)

    res = extract(data / "manifest.csv", backbone=bicubic_twin, dataset="it", cache_dir=cache, progress=False,
                  params=ExtractParams(precision="fp32", device="cpu", batch_size=8))
    decoder = featcache.read_attrs(res.path)["decoder"]
    assert decoder == decoder_identity(Resize(32, "bicubic"), DEFAULT_DRAFT) and "bicubic" in decoder["resize_method"]
    recorded = {"decoder": decoder_identity(32, DEFAULT_DRAFT)}  # features made from bilinear pixels ...
    why = featcache.provenance_mismatch(recorded, {"decoder": decoder})  # ... are not features of bicubic ones
    assert why is not None and "resize_method" in why
    with DecodedImages(cache / "it" / "decoded-32-bicubic.h5") as b:  # extraction read the bicubic cache as is
        assert list(b.ids) == ids and np.array_equal(b.read(range(len(b))), bicubic_rows)
        with h5py.File(b.path) as f:
            assert int(f.attrs["n_decoded"]) == len(ids)
