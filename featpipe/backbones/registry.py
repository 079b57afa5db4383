"""The backbone registry: one frozen :class:`BackboneSpec` per name, preprocessing travelling as data.

Adding a backbone is one ``_register(...)`` call with a small builder in :mod:`featpipe.backbones.nets`;
its family's behaviour (forward call, weights source and key mapping, freeze rule, precision) is data in
:mod:`featpipe.backbones.families`, reached as ``spec.traits``.
Cut points (``layers``) and the Grad-CAM layer are module names in the network (``spec`` ->
``build(spec).net.get_submodule(name)``); the dimension recorded for each cut point is that of the
globally pooled features taken there.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Optional

from featpipe.backbones import libs_hf, libs_openclip, libs_timm, libs_xrv, nets
from featpipe.backbones.families import get_family
from featpipe.backbones.reference import Fixed, ProcessorConfig, TorchvisionTransforms
from featpipe.backbones.spec import BackboneSpec, Preprocess, TextTower
from featpipe.core.errors import FeatpipeError

_REGISTRY: dict[str, BackboneSpec] = {}
# Backbones named by library, ``<prefix>:<name>`` (featpipe.backbones.libs_*): specs read from the library itself.
LIBRARIES = {m.PREFIX: m for m in (libs_timm, libs_hf, libs_openclip, libs_xrv)}
# Named members of those libraries (built on first use: their library is imported then, not here).
NAMED = {
    "biomedclip": lambda: replace(libs_openclip.make_spec_from(libs_openclip.BIOMEDCLIP_CONFIG, "biomedclip",
                                                               libs_openclip.BIOMEDCLIP),
                                  text=libs_openclip.BIOMEDCLIP_TEXT),
    "xrv_densenet121": lambda: libs_xrv.make_spec("densenet121-res224-all", "xrv_densenet121"),
}
_DYNAMIC: dict[str, BackboneSpec] = {}  # specs of library names and named members, made once per name


def _register(**kw) -> BackboneSpec:
    kw["layers"] = MappingProxyType(dict(kw.get("layers", {})))
    spec = BackboneSpec(**kw)
    get_family(spec.family)  # an unknown family is a programming error, caught at import
    _REGISTRY[spec.name] = spec
    return spec


def register_custom(**kw) -> BackboneSpec:
    """Register a network of your own (:mod:`featpipe.backbones.custom`); a built-in name is refused."""
    old = _REGISTRY.get(kw["name"])
    if old is not None and old.family != "custom":
        raise FeatpipeError(f"network name '{kw['name']}' is a built-in backbone: choose another name")
    return _register(**kw)


def get(name: str | BackboneSpec) -> BackboneSpec:
    """The spec registered as ``name`` (a spec is returned as is); unknown name = one-line error.

    ``<prefix>:<name>`` is a backbone of a library (:data:`LIBRARIES`: ``timm:``, ``hf:``, ``open_clip:``, ``xrv:``),
    read from the library on first use and kept (the same spec object per name); :data:`NAMED` members likewise.
    ``<name>#<features>`` is the same backbone with another embedding (``rad_dino#mean``: the mean of the patch
    tokens instead of the CLS token; the choices are its family's ``poolings``): a backbone of its own name,
    so its caches and results rows never mix with the default's."""
    if isinstance(name, BackboneSpec):
        return name
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _DYNAMIC:
        return _DYNAMIC[name]
    base, sep, features = str(name).partition("#")
    if sep:
        spec = with_features(get(base), features)
    elif name in NAMED:
        spec = NAMED[name]()
    elif name.partition(":")[0] in LIBRARIES and name.partition(":")[2]:
        prefix, _, rest = name.partition(":")
        spec = LIBRARIES[prefix].make_spec(rest, name)
    else:
        raise FeatpipeError(f"unknown backbone '{name}' (registered: {', '.join(names())}; or "
                            f"{', '.join(p + ':<name>' for p in LIBRARIES)}; see 'featpipe backbones')") from None
    _DYNAMIC[name] = spec
    return spec


def with_features(spec: BackboneSpec, features: str) -> BackboneSpec:
    """``spec`` embedding ``features`` (one of its family's ``poolings``), named ``<name>#<features>``."""
    allowed = spec.traits.poolings or (spec.traits.pooling,)
    if features not in allowed:
        raise FeatpipeError(f"backbone '{spec.name}' cannot embed '{features}' (choose from: {', '.join(allowed)})")
    if features == spec.features:
        return spec
    return replace(spec, name=f"{spec.name}#{features}", pooling=features,
                   embed_dim=spec.feature_dims.get(features, spec.embed_dim))


def names(*, tiny: Optional[bool] = None) -> list[str]:
    """Registered names (the named library members included); ``tiny=False`` only the real ones, ``tiny=True``
    only the test members."""
    return [n for n, s in _REGISTRY.items() if tiny is None or s.tiny == tiny] + ([] if tiny else list(NAMED))


def hf_names() -> list[str]:
    """The real (not tiny) members whose weights come as Hugging Face models (a hub id or a model folder)."""
    return [n for n, s in _REGISTRY.items() if s.traits.hf_class and not s.tiny]


# --------------------------------------------------------------------------- the members

def _densenet_layers(init: int, growth: int, blocks: tuple[int, ...]) -> dict[str, int]:
    out, c = {}, init
    for i, n in enumerate(blocks[:-1], start=1):
        c += n * growth
        out[f"features.denseblock{i}"] = c
        c //= 2
        out[f"features.transition{i}"] = c
    return out


def _tv(enum: str) -> dict:
    """A torchvision member's default weights and the reference its preprocessing is read from."""
    return {"default_weights": "imagenet", "pretrained": enum, "reference": TorchvisionTransforms(enum)}


# The image processors of the hub members as published beside their weights (a downloaded snapshot's own
# preprocessor_config.json wins: featpipe.backbones.weights.with_weights). MedSigLIP: SiglipImageProcessor, the
# whole image to 448 x 448 (no crop), bilinear, mean = std = 0.5. RAD-DINO: BitImageProcessor, shorter side 518,
# centre crop 518, bicubic, chest X-ray mean/std.
MEDSIGLIP_PROCESSOR = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5] * 3,
                       "image_std": [0.5] * 3, "image_processor_type": "SiglipImageProcessor", "resample": 2,
                       "rescale_factor": 1 / 255, "size": {"height": 448, "width": 448}}
RAD_DINO_PROCESSOR = {"crop_size": {"height": 518, "width": 518}, "do_center_crop": True, "do_convert_rgb": True,
                      "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5307] * 3,
                      "image_std": [0.2583] * 3, "image_processor_type": "BitImageProcessor", "resample": 3,
                      "rescale_factor": 1 / 255, "size": {"shortest_edge": 518}}

_register(name="densenet161", family="densenet", embed_dim=2208,
          gradcam_layer="features.norm5", layers=_densenet_layers(96, 48, (6, 12, 36, 24)),
          **_tv("DenseNet161_Weights.IMAGENET1K_V1"),
          make=nets.make_tv("densenet161"))
_register(name="densenet121", family="densenet", embed_dim=1024,
          gradcam_layer="features.norm5", layers=_densenet_layers(64, 32, (6, 12, 24, 16)),
          **_tv("DenseNet121_Weights.IMAGENET1K_V1"),
          make=nets.make_tv("densenet121"))
_register(name="resnet50", family="resnet", embed_dim=2048, gradcam_layer="layer4",
          layers={"layer1": 256, "layer2": 512, "layer3": 1024},
          **_tv("ResNet50_Weights.IMAGENET1K_V1"), make=nets.make_tv("resnet50"))
_register(name="resnet18", family="resnet", embed_dim=512, gradcam_layer="layer4",
          layers={"layer1": 64, "layer2": 128, "layer3": 256},
          **_tv("ResNet18_Weights.IMAGENET1K_V1"), make=nets.make_tv("resnet18"))
_register(name="efficientnet_b4", family="efficientnet", embed_dim=1792, gradcam_layer="features.8",
          layers={f"features.{i}": d for i, d in enumerate((24, 32, 56, 112, 160, 272, 448), start=1)},
          **_tv("EfficientNet_B4_Weights.IMAGENET1K_V1"),
          make=nets.make_tv("efficientnet_b4"))
_register(name="vit_b_16", family="vit", embed_dim=768,
          gradcam_layer="encoder.layers.encoder_layer_11.ln_1",
          layers={f"encoder.layers.encoder_layer_{i}": 768 for i in (3, 5, 7, 9)},
          **_tv("ViT_B_16_Weights.IMAGENET1K_V1"), prefix_tokens=1,
          make=nets.make_tv("vit_b_16"))
_register(name="medsiglip", family="siglip", embed_dim=1152,
          reference=ProcessorConfig.of(MEDSIGLIP_PROCESSOR, "google/medsiglip-448 preprocessor_config.json"),
          gradcam_layer="post_layernorm",
          layers={f"encoder.layers.{i}": 1152 for i in (8, 13, 18, 22)},
          default_weights="google/medsiglip-448", pretrained="google/medsiglip-448",
          text=TextTower(hf_class="SiglipModel", padding="max_length", max_length=64, truncation=True),
          make=nets.make_siglip(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, image_size=448, patch_size=14))

# RAD-DINO (Perez-Garcia et al. 2024): DINOv2 ViT-B/14 trained on chest X-rays, a Dinov2Model on the hub; its
# embedding is the CLS token after the final layer norm (= pooler_output). Preprocessing: its hub processor
# (RAD_DINO_PROCESSOR as published; a downloaded snapshot's own preprocessor_config.json wins).
# Grad-CAM at the last layer's first norm: the pooled CLS token attends to every patch there.
_register(name="rad_dino", family="dinov2", embed_dim=768,
          reference=ProcessorConfig.of(RAD_DINO_PROCESSOR, "microsoft/rad-dino preprocessor_config.json"),
          gradcam_layer="encoder.layer.{last}.norm1",
          layers={f"encoder.layer.{i}": 768 for i in (3, 5, 7, 9)},
          default_weights="microsoft/rad-dino", pretrained="microsoft/rad-dino", prefix_tokens=1,
          make=nets.make_dinov2(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                                image_size=518, patch_size=14, layerscale_value=1.0))

# Tiny members for tests: same families, same code paths, random weights only.
_register(name="tiny_cnn", family="densenet", embed_dim=32, reference=Fixed(Preprocess(input_size=32, resize_size=32)),
          gradcam_layer="features.norm5", layers=_densenet_layers(16, 8, (2, 2, 2, 2)),
          default_weights="random", tiny=True,
          make=nets.make_tiny_densenet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16))
_register(name="tiny_vit", family="vit", embed_dim=16, reference=Fixed(Preprocess(input_size=32, resize_size=32)),
          gradcam_layer="encoder.layers.encoder_layer_1.ln_1", layers={"encoder.layers.encoder_layer_0": 16},
          default_weights="random", prefix_tokens=1, tiny=True,
          make=nets.make_tiny_vit(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32))
_register(name="tiny_siglip", family="siglip", embed_dim=32,
          reference=Fixed(Preprocess(input_size=28, resize_size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                    resize_mode="square")),
          gradcam_layer="post_layernorm", layers={"encoder.layers.0": 32}, default_weights="random", tiny=True,
          make=nets.make_siglip(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, image_size=28, patch_size=14))
_register(name="tiny_dino", family="dinov2", embed_dim=16, reference=Fixed(Preprocess(input_size=28, resize_size=28)),
          gradcam_layer="encoder.layer.{last}.norm1", layers={"encoder.layer.0": 16}, default_weights="random",
          prefix_tokens=1, tiny=True,
          make=nets.make_dinov2(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                image_size=28, patch_size=14))
