"""The backbone registry: one frozen :class:`BackboneSpec` per name, preprocessing travelling as data.

Adding a backbone is one ``_register(...)`` call with a small builder in :mod:`featpipe.backbones.nets`;
its family's behaviour (forward call, weights source and key mapping, freeze rule, precision) is data in
:mod:`featpipe.backbones.families`, reached as ``spec.traits``.
Cut points (``layers``) and the Grad-CAM layer are module names in the network (``spec`` ->
``build(spec).net.get_submodule(name)``); the dimension recorded for each cut point is that of the
globally pooled features taken there.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Optional

from featpipe.backbones import nets
from featpipe.backbones.families import get_family
from featpipe.backbones.spec import BackboneSpec, Preprocess
from featpipe.core.errors import FeatpipeError

_REGISTRY: dict[str, BackboneSpec] = {}


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
    """The spec registered as ``name`` (a spec is returned as is); unknown name = one-line error."""
    if isinstance(name, BackboneSpec):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FeatpipeError(f"unknown backbone '{name}' (registered: {', '.join(names())})") from None


def names(*, tiny: Optional[bool] = None) -> list[str]:
    """Registered names; ``tiny=False`` only the real ones, ``tiny=True`` only the test members."""
    return [n for n, s in _REGISTRY.items() if tiny is None or s.tiny == tiny]


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


_CNN = Preprocess(input_size=224, resize_size=256)

_register(name="densenet161", family="densenet", embed_dim=2208, preprocess=_CNN,
          gradcam_layer="features.norm5", layers=_densenet_layers(96, 48, (6, 12, 36, 24)),
          default_weights="imagenet", pretrained="DenseNet161_Weights.IMAGENET1K_V1",
          make=nets.make_tv("densenet161"))
_register(name="densenet121", family="densenet", embed_dim=1024, preprocess=_CNN,
          gradcam_layer="features.norm5", layers=_densenet_layers(64, 32, (6, 12, 24, 16)),
          default_weights="imagenet", pretrained="DenseNet121_Weights.IMAGENET1K_V1",
          make=nets.make_tv("densenet121"))
_register(name="resnet50", family="resnet", embed_dim=2048, preprocess=_CNN, gradcam_layer="layer4",
          layers={"layer1": 256, "layer2": 512, "layer3": 1024}, default_weights="imagenet",
          pretrained="ResNet50_Weights.IMAGENET1K_V1", make=nets.make_tv("resnet50"))
_register(name="resnet18", family="resnet", embed_dim=512, preprocess=_CNN, gradcam_layer="layer4",
          layers={"layer1": 64, "layer2": 128, "layer3": 256}, default_weights="imagenet",
          pretrained="ResNet18_Weights.IMAGENET1K_V1", make=nets.make_tv("resnet18"))
_register(name="efficientnet_b4", family="efficientnet", embed_dim=1792,
          preprocess=Preprocess(input_size=380, resize_size=384, interpolation="bicubic"),
          gradcam_layer="features.8",
          layers={f"features.{i}": d for i, d in enumerate((24, 32, 56, 112, 160, 272, 448), start=1)},
          default_weights="imagenet", pretrained="EfficientNet_B4_Weights.IMAGENET1K_V1",
          make=nets.make_tv("efficientnet_b4"))
_register(name="vit_b_16", family="vit", embed_dim=768, preprocess=_CNN,
          gradcam_layer="encoder.layers.encoder_layer_11.ln_1",
          layers={f"encoder.layers.encoder_layer_{i}": 768 for i in (3, 5, 7, 9)},
          default_weights="imagenet", pretrained="ViT_B_16_Weights.IMAGENET1K_V1", prefix_tokens=1,
          make=nets.make_tv("vit_b_16"))
_register(name="medsiglip", family="siglip", embed_dim=1152,
          preprocess=Preprocess(input_size=448, resize_size=448, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
          gradcam_layer="post_layernorm",
          layers={f"encoder.layers.{i}": 1152 for i in (8, 13, 18, 22)},
          default_weights="google/medsiglip-448", pretrained="google/medsiglip-448",
          make=nets.make_siglip(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, image_size=448, patch_size=14))

# RAD-DINO (Perez-Garcia et al. 2024): DINOv2 ViT-B/14 trained on chest X-rays, a Dinov2Model on the hub; its
# embedding is the CLS token after the final layer norm (= pooler_output). Preprocessing as its hub processor
# (BitImageProcessor): shortest edge 518 (bicubic), centre crop 518, ImageNet mean/std; a downloaded snapshot's
# preprocessor_config.json is checked against this on load (featpipe.backbones.weights.check_preprocessor_config).
# Grad-CAM at the last layer's first norm: the pooled CLS token attends to every patch there.
_register(name="rad_dino", family="dinov2", embed_dim=768,
          preprocess=Preprocess(input_size=518, resize_size=518, interpolation="bicubic"),
          gradcam_layer="encoder.layer.{last}.norm1",
          layers={f"encoder.layer.{i}": 768 for i in (3, 5, 7, 9)},
          default_weights="microsoft/rad-dino", pretrained="microsoft/rad-dino", prefix_tokens=1,
          make=nets.make_dinov2(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                                image_size=518, patch_size=14, layerscale_value=1.0))

# Tiny members for tests: same families, same code paths, random weights only.
_register(name="tiny_cnn", family="densenet", embed_dim=32, preprocess=Preprocess(input_size=32, resize_size=32),
          gradcam_layer="features.norm5", layers=_densenet_layers(16, 8, (2, 2, 2, 2)),
          default_weights="random", tiny=True,
          make=nets.make_tiny_densenet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16))
_register(name="tiny_vit", family="vit", embed_dim=16, preprocess=Preprocess(input_size=32, resize_size=32),
          gradcam_layer="encoder.layers.encoder_layer_1.ln_1", layers={"encoder.layers.encoder_layer_0": 16},
          default_weights="random", prefix_tokens=1, tiny=True,
          make=nets.make_tiny_vit(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32))
_register(name="tiny_siglip", family="siglip", embed_dim=32,
          preprocess=Preprocess(input_size=28, resize_size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
          gradcam_layer="post_layernorm", layers={"encoder.layers.0": 32}, default_weights="random", tiny=True,
          make=nets.make_siglip(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, image_size=28, patch_size=14))
_register(name="tiny_dino", family="dinov2", embed_dim=16, preprocess=Preprocess(input_size=28, resize_size=28),
          gradcam_layer="encoder.layer.{last}.norm1", layers={"encoder.layer.0": 16}, default_weights="random",
          prefix_tokens=1, tiny=True,
          make=nets.make_dinov2(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                image_size=28, patch_size=14))
