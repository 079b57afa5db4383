"""Every registered pretrained backbone sees what its authors' code would feed it: on real radiographs (portrait,
landscape, RGB), the network input featpipe builds from its decoded cache equals the reference preprocessing's
output, and the embedding equals the reference forward (cosine >= 0.9999 in fp32). Random weights are planted under
the real names (tests/pretrained_fixtures.py). The full table, with more files: benchmarks/parity.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import module_folder
import pretrained_fixtures as pf
from featpipe.backbones import registry
from featpipe.backbones.model import build
from featpipe.backbones.reference import ProcessorConfig, from_processor
from featpipe.backbones.spec import Preprocess
from featpipe.core.errors import FeatpipeError
from tests.parity import HUB, TORCHVISION, compare

# Portrait 1414x1755 JPEG, landscape RGB 1151x972 JPEG, landscape 3052x2541 grey PNG.
FILES = ("COVID-00017.jpg", "COVID-00001.jpg", "COVID-00015b.png")

# Largest input difference (0-255 scale) allowed per member, as measured (benchmarks/results/parity.md):
# torchvision members are exact (the decoded cache is Pillow's antialiased resize, as transforms() on a PIL image);
# the Hugging Face processors of transformers 5 resize uint8 tensors with torchvision's antialiased kernels, which
# round differently from Pillow by at most 1 grey level (bilinear: MedSigLIP) or 2 (bicubic: RAD-DINO).
TOLERANCE = {**{n: 0.0 for n in TORCHVISION}, "medsiglip": 1.0, "rad_dino": 2.0}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with module_folder(tmp_path_factory, "parity-weights") as h:  # ~1 GB of full-size random weights
        yield pf.plant(h, [*TORCHVISION, *HUB])


@pytest.mark.parametrize("name", [*TORCHVISION, *HUB])
def test_input_and_embedding_equal_the_reference(name, home, figure1_dir, tmp_path, monkeypatch):
    pf.use_home(monkeypatch, home)
    got = compare(name, [figure1_dir / "images" / f for f in FILES], tmp_path, home)
    assert got.input_max_diff <= TOLERANCE[name] + 1e-3, got
    assert got.input_mean_diff < 0.05, got
    assert got.lowest_cosine >= 0.9999, got


def test_medsiglip_resizes_the_whole_radiograph_and_rad_dino_floors_its_crop():
    med, dino = registry.get("medsiglip").preprocess, registry.get("rad_dino").preprocess
    assert (med.resize_mode, med.resize_size, med.input_size, med.interpolation) == ("square", 448, 448, "bilinear")
    assert med.decoding.label == "448-square" and med.value_range == (-1.0, 1.0)
    assert (dino.resize_mode, dino.interpolation, dino.mean) == ("shorter-floor", "bicubic", (0.5307,) * 3)
    eff = registry.get("efficientnet_b4").preprocess  # read from torchvision's transforms(), not typed
    assert (eff.resize_size, eff.input_size, eff.interpolation) == (384, 380, "bicubic")


def test_the_torchvision_table_is_what_the_installed_torchvision_gives():
    """prepare reads torchvision members' preprocessing from a generated table (no torch import); it must equal
    ``Weights.transforms()`` of the installed torchvision (else: python tests/parity.py --write-torchvision-table)."""
    from featpipe.backbones.reference import TorchvisionTransforms
    from featpipe.backbones.torchvision_transforms import TORCHVISION_TRANSFORMS
    from tests.parity import torchvision_table

    assert torchvision_table() == TORCHVISION_TRANSFORMS
    assert {registry.get(n).pretrained for n in TORCHVISION} == set(TORCHVISION_TRANSFORMS)
    spec = registry.get("efficientnet_b4")
    assert spec.preprocess == TorchvisionTransforms(spec.pretrained).live()


def test_a_snapshot_with_chest_xray_statistics_is_used_as_published_not_refused(tmp_path, monkeypatch):
    """A RAD-DINO folder whose processor normalises with other statistics and another size: featpipe follows it."""
    spec = registry.get("rad_dino")
    folder = tmp_path / "rad-dino-variant"
    spec.make.build(num_hidden_layers=1).save_pretrained(folder)
    cfg = dict(registry.RAD_DINO_PROCESSOR, image_mean=[0.4, 0.4, 0.4], image_std=[0.3, 0.3, 0.3],
               size={"shortest_edge": 448}, crop_size={"height": 448, "width": 448})
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    model = build("rad_dino", weights=str(folder))
    pre = model.spec.preprocess
    assert (pre.mean, pre.std, pre.resize_size, pre.input_size) == ((0.4,) * 3, (0.3,) * 3, 448, 448)
    x = np.random.default_rng(0).normal(size=(1, 3, 448, 448)).astype(np.float32)
    import torch

    assert model(torch.from_numpy(x)).shape == (1, 768)


def test_processor_configs_featpipe_cannot_reproduce_are_one_line_errors():
    base = dict(registry.MEDSIGLIP_PROCESSOR)
    with pytest.raises(FeatpipeError, match="not square"):
        from_processor({**base, "size": {"height": 448, "width": 336}})
    with pytest.raises(FeatpipeError, match="resample 0"):
        from_processor({**base, "resample": 0})
    with pytest.raises(FeatpipeError, match="longest_edge"):
        from_processor({**base, "size": {"shortest_edge": 224, "longest_edge": 1333}})
    assert ProcessorConfig.of(base, "x")() == Preprocess(448, 448, (0.5,) * 3, (0.5,) * 3, "bilinear", "square")


def test_which_features_is_recorded_and_a_features_variant_is_its_own_backbone(tmp_path, monkeypatch):
    """``tiny_dino`` embeds its CLS token, ``tiny_dino#mean`` the mean of its patch tokens: two caches, two sets of
    rows, each saying which features it holds (cache attribute ``features``, runs.csv column ``features``)."""
    import pandas as pd

    from featpipe.cli.main import main
    from featpipe.features import cache as featcache

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    (tmp_path / "params.yaml").write_text(
        "data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 12, size: 32}}\n"
        "split: {seeds: [0], shots: [3], val_fraction: 0.2, test_fraction: 0.3}\n"
        "extract: {backbones: [tiny_dino, 'tiny_dino#mean'], precision: fp32, device: cpu}\nfit: {n_jobs: 1}\n")
    assert main(["prepare"]) == 0
    assert main(["extract", "--no-progress"]) == 0
    cls, mean = (featcache.read_features(f"cache/demo/{n}.h5") for n in ("tiny_dino", "tiny_dino_mean"))
    assert (cls.attrs["features"], mean.attrs["features"]) == ("cls", "mean")
    assert not np.allclose(cls.features, mean.features)
    for backbone in ("tiny_dino", "tiny_dino#mean"):
        assert main(["fit", "--backbone", backbone, "--head", "logistic", "--shots", "3", "--seeds", "0"]) == 0
    runs = pd.read_csv("results/runs.csv")
    assert dict(zip(runs["backbone"], runs["features"])) == {"tiny_dino": "cls", "tiny_dino#mean": "mean"}
    with pytest.raises(FeatpipeError, match="cannot embed 'avgpool'"):
        registry.get("tiny_dino#avgpool")


@pytest.mark.parametrize("resize,crop,mode", [(235, 224, "shorter"), (226, 224, "shorter"), (256, 224, "shorter"),
                                              (237, 224, "shorter-floor"), (518, 518, "shorter-floor")])
def test_the_decoded_square_and_its_crop_equal_the_references_one_crop(resize, crop, mode):
    """timm's crop_pct can leave an odd margin (resnet18.a1_in1k: 235 -> 224): the decoded square is aligned so
    that featpipe's two crops (decode, then model input) equal the reference's single centre crop, pixel for pixel,
    for every image shape."""
    from PIL import Image

    from featpipe.backbones.modelinput import centre_crop
    from featpipe.imaging.base import FILTERS, crop_offset, finish

    pre = Preprocess(crop, resize, resize_mode=mode)
    rng = np.random.default_rng(resize)
    for w, h in [(300, 301), (301, 300), (640, 481), (481, 640), (1001, 768), (999, 1000), (700, 700)]:
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        ow, oh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
        ref = im.resize((ow, oh), FILTERS["bilinear"])
        top, left = crop_offset(oh - crop, mode), crop_offset(ow - crop, mode)  # one crop, the reference's rounding
        ref = np.asarray(ref.crop((left, top, left + crop, top + crop)))
        ours = centre_crop(finish(im, pre.decoding, None)[None], pre)[0, ..., 0]
        np.testing.assert_array_equal(ours, ref, err_msg=f"{w}x{h} {pre.decoding.label}")
