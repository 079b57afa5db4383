"""Backbones named by library (timm:, hf:, open_clip:, xrv:) and the named members biomedclip and xrv_densenet121:
offline, random weights planted under the real names (tests/library_fixtures.py), compared with each library's
own transform and forward on real radiographs of several aspect ratios (portrait, wide landscape, grey, RGB)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import module_folder
import library_fixtures as lf
import numpy as np
import pytest
import torch

from featpipe.backbones import registry
from featpipe.backbones.create import create_backbone
from featpipe.backbones.libs_xrv import read_model_file
from featpipe.backbones.modelinput import decode_files, decode_key, model_input, same_channels
from featpipe.cli.main import main
from featpipe.core import optional
from featpipe.core.errors import FeatpipeError, WeightsError
from featpipe.core.names import cache_name, finetune_run_name, head_model_path
from featpipe.explain.gradcam import gradcam
from featpipe.saved.load import load_model
from featpipe.finetune.checkpoint import build_model


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with module_folder(tmp_path_factory, "libhome") as h:  # planted library weights (~400 MB)
        yield h


@pytest.fixture()
def planted(home, monkeypatch):
    lf.use(monkeypatch, home)
    return home


def test_library_names_resolve_to_specs_read_from_the_library(planted):
    vit = registry.get(f"timm:{lf.TIMM_NAME}")
    assert registry.get(f"timm:{lf.TIMM_NAME}") is vit  # made once per name
    assert (vit.embed_dim, vit.prefix_tokens, vit.gradcam_layer) == (192, 1, "blocks.11.norm1")
    # timm's data config: input 224, crop_pct 0.9 -> shorter side floor(224 / 0.9) = 248, bicubic, mean = std = 0.5
    p = vit.preprocess
    assert (p.input_size, p.resize_size, p.interpolation, p.resize_mode, p.mean) == (224, 248, "bicubic", "shorter",
                                                                                    (0.5,) * 3)
    assert registry.get(f"timm:{lf.TIMM_NAME}#mean").features == "mean"
    res = registry.get("timm:resnet18.a1_in1k")
    assert res.embed_dim == 512 and res.layers["layer3"] == 256 and res.preprocess.resize_size == 235

    bio, pooled = registry.get("biomedclip"), registry.get("biomedclip#pooler")
    assert (bio.embed_dim, bio.features, pooled.embed_dim, pooled.features) == (512, "image_embeds", 768, "pooler")
    assert (bio.preprocess.input_size, bio.preprocess.resize_size, bio.preprocess.interpolation) == (224, 224, "bicubic")
    clip = registry.get("open_clip:ViT-B-32/laion2b_s34b_b79k")  # a built-in config and pretrained tag
    assert (clip.embed_dim, clip.default_weights, clip.gradcam_layer) == (
        512, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "transformer.resblocks.11.ln_1")
    with pytest.raises(FeatpipeError, match="not a ViT"):
        registry.get("open_clip:RN50/openai")
    xrv = registry.get("xrv_densenet121")
    assert xrv.embed_dim == 1024 and xrv.preprocess.channels == 1
    assert xrv.preprocess.value_range == pytest.approx((-1024.0, 1024.0))
    assert registry.get("xrv:densenet121-res224-nih").pretrained == "densenet121-res224-nih"

    folder = lf.plant_hf_folder(planted)
    hf = registry.get(f"hf:{folder}")
    assert (hf.embed_dim, hf.features, hf.prefix_tokens, hf.preprocess.resize_size) == (32, "cls", 1, 256)
    assert list(hf.layers) == ["encoder.layer.0"] and hf.gradcam_layer == "encoder.layer.1.norm1"
    for name in (f"timm:{lf.TIMM_NAME}#mean", f"hf:{folder}", "open_clip:hf-hub:org/repo", "hf:owner/name"):
        head = head_model_path("models", backbone=name, layer=None, weights_tag=None, head="logistic", shots=5,
                               seed=0, dataset="d", head_params={})
        for file_name in (cache_name(name), head.name, finetune_run_name("d", name, "layerwise", 5, 0)):
            assert "/" not in file_name and ":" not in file_name and "#" not in file_name
        assert head.parent.name == "models"
    with pytest.raises(FeatpipeError, match="unknown timm model 'no_such_net'"):
        registry.get("timm:no_such_net")
    with pytest.raises(FeatpipeError, match="unknown torchxrayvision weights"):
        registry.get("xrv:resnet50-res512-all")
    with pytest.raises(FeatpipeError, match="cannot embed 'cls'"):
        registry.get("biomedclip#cls")


# Tolerances, measured (benchmarks/parity.py -> benchmarks/results/parity.md). JPEGs are decoded whole here
# (decode.draft=false), as the references decode them; the pipeline's default draft decoding is measured there.
# - timm, biomedclip: the decoded cache reproduces the library's transform exactly (shorter side, PIL filter,
#   torchvision's centre-crop rounding);
# - hf (a BitImageProcessor): the image processor's centre crop floors its offset where featpipe rounds as
#   torchvision does, a one-pixel shift on images whose resized long side minus the crop is odd: exact on the
#   wide landscape file only (its offset is whole), the embedding still agrees;
# - xrv: torchxrayvision resizes with skimage (Gaussian antialiasing, zero padding at the border, float) after
#   cropping; featpipe decodes with Pillow's bilinear to uint8: measured max 66.2, mean 2.3 (0-255 scale).
INPUT_MAX = {"timm": 1.0, "biomedclip": 1.0, "hf": None, "xrv": 70.0}


@pytest.mark.parametrize("kind", ["timm", "biomedclip", "xrv", "hf"])
def test_input_and_embedding_match_the_library_reference(kind, planted, figure1_dir, tmp_path):
    r = lf.measure(kind, planted, figure1_dir / "images", tmp_path, draft=False)
    print(kind, r)
    assert r["shape"] == r["ref_shape"]
    assert min(r["cosine"]) >= 0.9999
    if INPUT_MAX[kind] is not None:
        assert max(r["input_diff"]) <= INPUT_MAX[kind]
    if kind == "xrv":
        assert max(r["input_mean_diff"]) <= 3.0
    if kind == "hf":
        assert r["input_diff"][lf.FILES.index("COVID-00020.jpg")] <= 1.0


@pytest.mark.parametrize("name", ["biomedclip", "xrv_densenet121", f"timm:{lf.TIMM_NAME}",
                                  "open_clip:ViT-B-32/laion2b_s34b_b79k"])
def test_missing_weights_offline_is_one_line_never_random(name, tmp_path, monkeypatch):
    lf.use(monkeypatch, tmp_path)  # an empty cache
    with pytest.raises(WeightsError) as err:
        create_backbone(name)
    msg = str(err.value)
    assert "\n" not in msg and "offline" in msg
    assert ("FEATPIPE_XRV_CACHE" if name.startswith("xrv") else "HF_HOME") in msg


@pytest.mark.parametrize("name,module,extra", [("open_clip:hf-hub:org/repo", "open_clip", "open_clip"),
                                               ("xrv:densenet121-res224-chex", "torchxrayvision", "xrv"),
                                               ("timm:resnet34", "timm", "timm")])
def test_missing_library_is_one_line(name, module, extra, monkeypatch):
    monkeypatch.setattr(registry, "_DYNAMIC", {})
    monkeypatch.setattr(optional, "_passed", set())
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(FeatpipeError) as err:
        registry.get(name)
    assert "\n" not in str(err.value) and f"featpipe[{extra}]" in str(err.value)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_xrv_files_are_read_without_running_pickled_code(tmp_path, home, monkeypatch):
    legacy, zipped = lf.plant_xrv(home), tmp_path / "zip"
    lf.plant_xrv(zipped, legacy=False)
    a = read_model_file(next(legacy.iterdir()))
    b = read_model_file(next((zipped / "xrv").iterdir()))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, evil)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match="posix.system|os.system|nt.system"):
        read_model_file(evil)
    assert not (tmp_path / "pwned").exists()


def test_gradcam_on_new_members(planted, figure1_dir):
    lf.plant_xrv(planted)
    lf.plant_timm(planted)
    files = [str(figure1_dir / "images" / f) for f in lf.FILES[:2]]
    for name in ("xrv_densenet121", f"timm:{lf.TIMM_NAME}"):
        bb = create_backbone(name)
        _, pixels, _ = decode_files(files, decode_key(bb.preprocess))
        x = model_input(same_channels(pixels), bb.preprocess)
        torch.manual_seed(0)
        model = torch.nn.Sequential(bb.model, torch.nn.Linear(bb.embed_dim, 2)).eval()
        maps = gradcam(model, x, [0, 1])
        assert maps.shape == (2, x.shape[-2], x.shape[-1]) and np.isfinite(maps).all() and maps.max() > 0


@pytest.mark.parametrize("name", ["xrv_densenet121", f"timm:{lf.TIMM_NAME}"])
def test_finetune_strategies_on_new_members(name, planted):
    lf.plant_xrv(planted)
    lf.plant_timm(planted)
    spec = registry.get(name)
    first = next(iter(spec.layers))
    for strategy, layer in (("layerwise", None), ("truncated", first)):
        model, s = build_model(name, strategy, 2, layer=layer)
        x = torch.randn(2, s.preprocess.channels, s.preprocess.input_size, s.preprocess.input_size)
        out = model(x)
        out.sum().backward()
        grads = {n: p.grad is not None for n, p in model.named_parameters() if p.requires_grad}
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert out.shape == (2, 2) and frozen and any(grads.values())
        last = [n for n, _ in model.named_parameters() if f".{spec.gradcam_layer}." in n]
        assert last and (strategy == "layerwise") == all(n in grads for n in last)  # past the cut: frozen


def test_backbones_command_explains_prefixes_and_features(planted):
    out = subprocess.run([sys.executable, "-m", "featpipe", "backbones"], capture_output=True, text=True,
                         env=dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stderr
    for text in ("timm:<name>", "hf:<hub id or folder>", "open_clip:hf-hub:", "xrv:<weights>", "#<features>",
                 "biomedclip", "image_embeds", "xrv_densenet121", "values [-1.02e+03, 1.02e+03]"):
        assert text in out.stdout


def test_library_names_through_the_cli_extract_and_fit(planted, tmp_path, monkeypatch):
    """Names with ':' and '#' as plain YAML strings in extract.backbones: extract writes safe cache names and a
    head fits on them."""
    lf.plant_xrv(planted)
    lf.plant_timm(planted)
    vit = f"timm:{lf.TIMM_NAME}#mean"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 10, size: 40}}\n"
        "split: {seeds: [0], shots: [2], val_fraction: 0.2, test_fraction: 0.2}\n"
        f"extract:\n  backbones:\n    - {vit}\n    - xrv_densenet121\n  precision: fp32\n  device: cpu\n"
        "finetune: {backbones: []}\nfit: {n_jobs: 1}\n")
    assert main(["prepare"]) == 0
    assert main(["extract", "--no-progress"]) == 0
    caches = sorted(p.name for p in (tmp_path / "cache" / "demo").glob("*.h5") if not p.name.startswith("decoded"))
    assert caches == [cache_name(vit), cache_name("xrv_densenet121")]
    assert cache_name(vit) == f"timm_{lf.TIMM_NAME}_mean.h5"
    assert main(["fit", "--backbone", vit, "--head", "logistic", "--shots", "2", "--seeds", "0"]) == 0
    assert main(["fit", "--backbone", "xrv_densenet121", "--head", "logistic", "--shots", "2", "--seeds", "0"]) == 0
    images = sorted((tmp_path / "data" / "synthetic").rglob("*.png"))[:3]
    for label in (cache_name(vit)[:-3], "xrv_densenet121"):  # saved heads load back and predict from files
        saved = next((tmp_path / "models").rglob(f"{label}-logistic-k2-s0-*.skops"))
        loaded = load_model(saved)
        _, pixels, _ = decode_files([str(p) for p in images], loaded.decoding)
        proba = loaded.predict_proba(pixels)
        assert proba.shape == (3, 2) and np.allclose(proba.sum(axis=1), 1.0)
