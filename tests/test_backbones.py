"""Backbone registry, builders and weights: offline, random weights and tiny configs built here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from featpipe.backbones import registry
from featpipe.backbones import weights as W
from featpipe.backbones.forward import pooled_output
from featpipe.backbones.model import FeatureModel, build
from featpipe.core.errors import FeatpipeError, WeightsError

FULL = registry.names(tiny=False)  # the whole registry: adding a member adds it to every test below
TINY = registry.names(tiny=True)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may reach the network: every download path is refused, caches point into tmp_path."""
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def _images(spec, n=3, size=None, seed=0):
    size = size or spec.preprocess.input_size
    c = spec.preprocess.channels
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, c, size, size)).astype(np.float32))


def _cos(a, b):
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def test_registry_records_the_published_backbones():
    assert {"densenet161", "resnet50", "medsiglip", "resnet18", "densenet121", "efficientnet_b4", "vit_b_16",
            "tiny_cnn", "tiny_siglip"} <= set(registry.names())
    assert set(TINY) >= {"tiny_cnn", "tiny_vit", "tiny_siglip", "tiny_dino"}
    dims = {n: registry.get(n).embed_dim for n in ("densenet161", "resnet50", "medsiglip")}
    assert dims == {"densenet161": 2208, "resnet50": 2048, "medsiglip": 1152}
    med = registry.get("medsiglip")
    assert (med.family, med.pretrained, med.preprocess.input_size) == ("siglip", "google/medsiglip-448", 448)
    assert med.preprocess.mean == med.preprocess.std == (0.5, 0.5, 0.5) and med.prefix_tokens == 0
    assert med.make.config["hidden_size"] == 1152 and med.make.config["patch_size"] == 14
    assert registry.get("resnet50").gradcam_layer == "layer4"
    assert registry.get("densenet161").gradcam_layer == "features.norm5"
    with pytest.raises(FeatpipeError, match="unknown backbone 'resnet5'.*resnet50"):
        registry.get("resnet5")
    assert registry.get("densenet161").resolve_layer("denseblock3") == "features.denseblock3"
    with pytest.raises(FeatpipeError, match="no cut point 'layer9'"):
        registry.get("resnet50").resolve_layer("layer9")


@pytest.mark.parametrize("name", TINY)
def test_tiny_members_give_recorded_dims_at_every_cut(name):
    spec = registry.get(name)
    model = build(name)
    assert isinstance(model, FeatureModel) and model.weights_id == "random:seed0"
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    x = _images(spec, n=3)
    with torch.inference_mode():
        assert model(x).shape == (3, spec.embed_dim)
        for layer, dim in spec.layers.items():
            cut = build(spec, layer=layer)
            assert cut.embed_dim == dim and cut(x).shape == (3, dim)
    assert isinstance(model.gradcam_module, torch.nn.Module)


def _full_width(spec):
    """A real member at its registered width: the whole network, or for Hugging Face members (hundreds of
    millions of weights) the same config with one encoder layer, as the planted hub snapshots have."""
    if hasattr(spec.make, "build"):
        return FeatureModel(spec.make.build(num_hidden_layers=1).eval(), spec)
    return build(spec, weights="random")


@pytest.mark.parametrize("name", FULL)
def test_full_size_random_builds_give_recorded_dims(name):
    spec = registry.get(name)
    model = _full_width(spec)
    x = _images(spec, n=2, size=spec.preprocess.input_size)
    modules = dict(model.net.named_modules())
    with torch.inference_mode():
        y = model(x)
        assert y.shape == (2, spec.embed_dim) and torch.isfinite(y).all()
        for layer, dim in spec.layers.items():
            if layer in modules:  # a one-layer hub build has only its first cut points
                assert FeatureModel(model.net, spec, layer=layer)(x).shape == (2, dim)
        if name in ("resnet50", "densenet161"):  # the random full-size models: bf16 agrees with fp32
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
            assert np.median(_cos(y.numpy(), bf16.numpy())) >= 0.99
    assert model.net.get_submodule(spec.module_name(spec.gradcam_layer, model.net)) is model.gradcam_module


def test_random_weights_are_reproducible_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build("tiny_cnn", weights="random")
    after = torch.rand(1)
    b = build("tiny_cnn", weights="random")
    assert torch.equal(before, after)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_tiny_siglip_goes_through_pooler_output():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model = build("tiny_siglip")
    x = _images(model.spec, n=2)
    out = model.net(pixel_values=x)
    assert isinstance(out, BaseModelOutputWithPooling)  # transformers 5: an object, not a tensor
    with torch.inference_mode():
        assert torch.allclose(model(x), out.pooler_output)
        assert not torch.allclose(model(x), out.last_hidden_state.mean(1))
    with pytest.raises(TypeError, match="pooler_output"):
        pooled_output(object())


def _state_dict_with_other_seed(name):
    spec = registry.get(name)
    torch.manual_seed(7)
    net = spec.make()
    return spec, net


def test_weights_file_loads_state_dict_offline_and_matches(tmp_path):
    spec, net = _state_dict_with_other_seed("tiny_cnn")
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}  # as saved from DataParallel
    # torchvision's own densenet files use the old "norm.1" key names, and carry a classifier
    sd = {k.replace("denselayer1.norm1", "denselayer1.norm.1"): v for k, v in sd.items()}
    sd["classifier.weight"], sd["classifier.bias"] = torch.zeros(1000, 32), torch.zeros(1000)
    path = tmp_path / "my weights.pth"
    torch.save({"state_dict": sd}, path)
    model = build("tiny_cnn", weights=str(path))
    expected = FeatureModel(net.eval(), spec)
    x = _images(spec)
    with torch.inference_mode():
        assert torch.allclose(model(x), expected(x), atol=1e-6)
        assert not torch.allclose(model(x), build("tiny_cnn")(x), atol=1e-3)
    assert model.weights_id == "sha256:" + W.file_sha256(path)
    assert model.weights.tag.startswith("my-weights-") and model.weights.tag.endswith(W.file_sha256(path)[:8])


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    spec, net = _state_dict_with_other_seed("tiny_vit")
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    model = build("tiny_vit", weights=str(path))
    x = _images(spec)
    with torch.inference_mode():
        assert torch.allclose(model(x), net.eval()(x), atol=1e-6)


def test_weights_that_do_not_fit_are_one_line_errors(tmp_path):
    _, net = _state_dict_with_other_seed("tiny_vit")
    path = tmp_path / "vit.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(WeightsError) as err:
        build("tiny_cnn", weights=str(path))
    assert "do not fit tiny_cnn" in str(err.value) and "\n" not in str(err.value)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": net}, pickled)  # a whole pickled module: refused by weights_only=True
    with pytest.raises(WeightsError, match="plain state dict"):
        build("tiny_vit", weights=str(pickled))


def test_saved_hf_folder_of_a_full_siglip_loads_offline_and_matches(tmp_path):
    from transformers import SiglipConfig, SiglipModel, SiglipTextConfig

    vision = registry.get("tiny_siglip").make.config
    text = SiglipTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                            vocab_size=100, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(3)
    full = SiglipModel(SiglipConfig(vision_config=vision, text_config=text.to_dict())).eval()
    folder = tmp_path / "medsiglip-like"
    full.save_pretrained(folder)
    model = build("tiny_siglip", weights=str(folder))
    x = _images(model.spec)
    with torch.inference_mode():
        expected = pooled_output(full.get_image_features(pixel_values=x))  # the MedSigLIP model card's embedding
        assert torch.allclose(model(x), expected, atol=1e-5)
    assert model.weights_id.startswith("hf-folder:sha256:")
    with pytest.raises(WeightsError, match="is a Hugging Face folder but tiny_cnn"):
        build("tiny_cnn", weights=str(folder))
    with pytest.raises(WeightsError, match="width 32 at 28px, but medsiglip is 1152-d"):
        build("medsiglip", weights=str(folder))


def test_hub_id_resolves_from_hf_home_offline(tmp_path):
    from transformers import SiglipVisionModel

    commit = "c" * 40
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--someone--tiny-siglip"
    torch.manual_seed(5)
    net = registry.get("tiny_siglip").make().eval()
    net.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = build("tiny_siglip", weights="someone/tiny-siglip")
    assert model.weights_id == f"hf:someone/tiny-siglip@{commit}"
    x = _images(model.spec)
    with torch.inference_mode():
        assert torch.allclose(model(x), net(pixel_values=x).pooler_output, atol=1e-5)
    assert isinstance(model.net, SiglipVisionModel)
    with pytest.raises(WeightsError) as err:
        build("tiny_siglip", weights="someone/not-downloaded")
    assert "someone/not-downloaded" in str(err.value) and "--weights FOLDER" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_weights_are_one_line_errors_never_random(tmp_path):
    with pytest.raises(WeightsError) as err:
        build("resnet18", weights=str(tmp_path / "nope.pth"))
    assert str(tmp_path / "nope.pth") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(WeightsError) as err:
        build("resnet50")  # default = ImageNet, not in the empty TORCH_HOME, offline
    msg = str(err.value)
    expected = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert str(expected) in msg and "--weights PATH" in msg and "\n" not in msg
    with pytest.raises(WeightsError, match="medsiglip-448"):
        build("medsiglip")  # gated hub id, nothing cached, offline
    with pytest.raises(WeightsError, match="no torchvision ImageNet weights"):
        build("tiny_siglip", weights="imagenet")


def test_imagenet_weights_load_from_torch_home_offline():
    spec, net = _state_dict_with_other_seed("resnet18")
    target = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    sd = dict(net.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(sd, target)
    model = build("resnet18", weights="default")
    assert model.weights_id == "torchvision:ResNet18_Weights.IMAGENET1K_V1:resnet18-f37072fd.pth"
    assert model.weights.tag is None  # default weights: plain cache file name
    x = _images(spec, n=2, size=64)
    with torch.inference_mode():
        assert torch.allclose(model(x), net.eval()(x), atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_bf16_autocast_agrees_with_fp32(name):
    spec = registry.get(name)
    model = build(name, weights="random")
    x = _images(spec, n=4, seed=1)
    with torch.inference_mode():
        fp32 = model(x).numpy()
        cl = x.contiguous(memory_format=torch.channels_last) if spec.traits.channels_last else x
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.to(memory_format=torch.channels_last)(cl).numpy()
    assert bf16.dtype == np.float32
    assert np.median(_cos(fp32, bf16)) >= 0.99


def test_precision_auto_is_the_familys_measured_choice(monkeypatch):
    """auto = bf16 autocast, except fp32 for SigLIP (slower in bf16 here), on a bf16 CPU (measured:
    benchmarks/results/precision.md), fp32 on a CPU without bf16; an explicit precision is kept."""
    from featpipe.core import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    got = {n: runtime.select_precision("auto", cpu, registry.get(n).traits) for n in FULL}
    assert {got[n] for n in ("densenet161", "resnet50", "efficientnet_b4", "vit_b_16", "rad_dino")} == {"bf16"}
    assert got["medsiglip"] == "fp32"
    assert all(got[n] == registry.get(n).traits.precision("cpu") for n in FULL)
    assert runtime.select_precision("bf16", cpu, registry.get("medsiglip").traits) == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.select_precision("auto", cpu, registry.get("densenet161").traits) == "fp32"


def test_preprocess_round_trips_through_its_recorded_forms():
    """A sidecar's dict and a cache's JSON attribute parse back to the same Preprocess; older records without
    resize_size/interpolation get input_size and bilinear; an unknown key is an error, not silently dropped."""
    import json

    from featpipe.backbones.spec import Preprocess
    from featpipe.core.errors import FeatpipeError

    for name in FULL + TINY:
        pre = registry.get(name).preprocess
        assert Preprocess.from_dict(pre.to_dict()) == pre
        assert Preprocess.from_dict(json.dumps(pre.to_dict())) == pre
    old = Preprocess.from_dict({"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    assert (old.resize_size, old.interpolation) == (32, "bilinear")
    with pytest.raises(FeatpipeError, match="interp"):
        Preprocess.from_dict({"input_size": 32, "interp": "bicubic"})
