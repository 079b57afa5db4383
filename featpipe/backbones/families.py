"""Family behaviour as data: everything that differs between torchvision CNNs, torchvision ViTs and Hugging
Face vision transformers lives here, on a :class:`Family` that every :class:`~featpipe.backbones.spec.
BackboneSpec` points to (``spec.traits``). Nothing outside ``featpipe.backbones`` branches on a family name.

A family says:

- how its network is called (``forward``: bare ``net(x)`` or ``net(pixel_values=x).pooler_output``);
- where its default weights come from (``source``: ``torchvision`` weight enums, a Hugging Face ``hub``
  id, or ``random`` for test members) and which ``transformers`` class loads a model folder (``hf_class``);
- how a state dict is mapped onto the network (``classifier_prefixes`` and ``drop_prefixes`` dropped,
  ``strip_prefixes`` removed when the bare network has no such key, ``key_rewrites`` regexes);
- which parameters layer-wise fine-tuning freezes (``freeze``, a :class:`FreezeRule`);
- how it runs fastest (``channels_last`` under bf16, and ``auto_precision`` per device type, measured:
  ``benchmarks/bench_precision.py`` -> ``benchmarks/results/precision.md``).

Adding a family is one :data:`FAMILIES` entry; adding a member of a known family is one ``_register``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional

from featpipe.backbones.forward import hf_features, token_features


@dataclass(frozen=True)
class FreezeRule:
    """Parameter-name prefixes (relative to the network root) frozen by ``layerwise`` fine-tuning.

    ``anchors`` are prefixes that must exist under the root: they locate it inside wrappers.
    """

    family: str
    frozen: tuple[str, ...]
    anchors: tuple[str, ...]
    note: str


def _call(net, x, features: str, prefix_tokens: int):
    return net(x)


def _hf(net, x, features: str, prefix_tokens: int):
    """Hugging Face vision models: ``pooler`` = ``pooler_output`` (SigLIP: the attention-pooling head; DINOv2: the
    layer-normed CLS token), ``cls`` = the first token of ``last_hidden_state``, ``mean`` = the mean of its patch
    tokens (:func:`featpipe.backbones.forward.hf_features`)."""
    return hf_features(net(pixel_values=x), features, prefix_tokens)


def _timm(net, x, features: str, prefix_tokens: int):
    """timm models built with ``num_classes=0``: ``pooler`` = the model's own pooled pre-logits features (``net(x)``:
    global average pool for CNNs, the class token or its pooling for ViTs); ``cls``/``mean`` from the tokens of
    ``forward_features`` (after the final norm)."""
    if features == "pooler":
        return net(x)
    return token_features(net.forward_features(x), features, prefix_tokens)


def _open_clip(net, x, features: str, prefix_tokens: int):
    """An open_clip image tower (``model.visual``): ``image_embeds`` = ``net(x)`` (what ``encode_image`` returns,
    unnormalised); ``pooler`` = a timm tower's trunk output, before the projection (BiomedCLIP: the 768-d class
    token after the final norm)."""
    if features == "image_embeds":
        return net(x)
    trunk = getattr(net, "trunk", None)
    if features == "pooler" and trunk is not None:
        return trunk(x)
    raise ValueError(f"features {features!r} cannot be taken from this open_clip tower (image_embeds"
                     + (", pooler)" if trunk is not None else "; pooler only for timm towers)"))


def _xrv(net, x, features: str, prefix_tokens: int):
    """torchxrayvision DenseNet: ``model.features2(x)`` (relu + global average pool of the DenseNet features)."""
    return net.features2(x)


@dataclass(frozen=True)
class Family:
    name: str
    source: str  # torchvision | hub | timm | open_clip | xrv | hf: where the default weights come from
    forward: Callable = field(default=_call, repr=False, compare=False)  # (net, x, features, prefix_tokens) -> (B, D)
    pooling: str = "avgpool"  # which features its members' embedding is by default (BackboneSpec.features)
    poolings: tuple[str, ...] = ()  # the features ``<name>#<features>`` may choose (forward.POOLINGS); () = the default only
    hf_class: Optional[str] = None  # transformers class that loads a model folder of this family
    check_image_size: bool = True  # a folder's config.image_size must equal the spec's input size
    classifier_prefixes: tuple[str, ...] = ()
    drop_prefixes: tuple[str, ...] = ()  # other towers of a full checkpoint (SigLIP's text model)
    strip_prefixes: tuple[str, ...] = ()  # removed from a key the bare network does not have
    key_rewrites: tuple[tuple[str, str], ...] = ()  # (regex, replacement) applied to every key
    freeze: Optional[FreezeRule] = None
    channels_last: bool = False  # run channels_last when computing in bf16 (CNNs)
    auto_precision: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    def map_key(self, key: str, have: Mapping) -> Optional[str]:
        """A checkpoint key as the bare network names it, or None when it is to be dropped."""
        for pattern, repl in self.key_rewrites:
            key = re.sub(pattern, repl, key)
        if key.startswith(self.drop_prefixes) or key.startswith(self.classifier_prefixes):
            return None
        for prefix in self.strip_prefixes:
            if key.startswith(prefix) and key not in have:
                key = key[len(prefix):]
        return key

    def precision(self, device_type: str) -> str:
        """``bf16`` (autocast) or ``fp32``: the faster on ``device_type`` as measured, fp32 where unmeasured
        (cuda: bf16 where the device supports it, decided by the caller)."""
        return self.auto_precision.get(device_type, "fp32")


_DENSENET_OLD = (r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|"
                 r"num_batches_tracked))$", r"\1\2")

# Measured on this project's 2-core CPU (AMX/AVX-512 bf16): benchmarks/results/precision.md.
_BF16_CPU = MappingProxyType({"cpu": "bf16", "cuda": "bf16"})
_FP32_CPU = MappingProxyType({"cpu": "fp32", "cuda": "bf16"})

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("resnet", "torchvision", classifier_prefixes=("fc.",), channels_last=True, auto_precision=_BF16_CPU,
           freeze=FreezeRule("resnet", ("conv1.", "bn1.", "layer1."), ("conv1.weight", "layer1."),
                             "stem (conv1, bn1) + layer1")),
    Family("densenet", "torchvision", classifier_prefixes=("classifier.",), key_rewrites=(_DENSENET_OLD,),
           channels_last=True, auto_precision=_BF16_CPU,
           freeze=FreezeRule("densenet", ("features.conv0.", "features.norm0.", "features.denseblock1."),
                             ("features.conv0.weight", "features.denseblock1."),
                             "stem (conv0, norm0) + denseblock1 (transition1 trains)")),
    # torchvision EfficientNet: features.0 is the stem, features.1.. the MBConv stages
    Family("efficientnet", "torchvision", classifier_prefixes=("classifier.",), channels_last=True,
           auto_precision=_BF16_CPU,
           freeze=FreezeRule("efficientnet", ("features.0.", "features.1.", "features.2."),
                             ("features.0.", "features.1.", "features.2."),
                             "features[0:3] (stem + first two MBConv stages), torchvision indexing")),
    # torchvision's ViT measured faster under bf16 autocast than fp32 on this CPU (unlike the HF towers)
    Family("vit", "torchvision", pooling="cls", classifier_prefixes=("heads.",), auto_precision=_BF16_CPU,
           freeze=FreezeRule("vit", ("conv_proj.", "class_token", "encoder.pos_embedding")
                             + tuple(f"encoder.layers.encoder_layer_{i}." for i in range(4)),
                             ("conv_proj.weight", "encoder.layers.encoder_layer_0."),
                             "patch + position embeddings, class token, encoder layers 0-3")),
    # measured: a 1152-d SigLIP layer at 448 px runs ~2.5x slower under bf16 autocast than in fp32 here
    Family("siglip", "hub", forward=_hf, pooling="pooler", poolings=("pooler", "mean"), hf_class="SiglipVisionModel", drop_prefixes=("text_model.", "logit_"),
           strip_prefixes=("vision_model.",), auto_precision=_FP32_CPU,
           freeze=FreezeRule("siglip", ("embeddings.",) + tuple(f"encoder.layers.{i}." for i in range(4)),
                             ("embeddings.", "encoder.layers.0."), "embeddings + encoder layers 0-3")),
    # DINOv2 interpolates its position embeddings to the input size: a checkpoint's config.image_size
    # need not equal the input size (RAD-DINO's preprocessor_config.json decides that, checked on load).
    # Backbones named by library (featpipe.backbones.libs_*): their default weights come from each library's cache.
    # timm: CNNs (feature maps) and token models (ViTs: class token / mean of the patch tokens as well).
    # unmeasured on the CPU: fp32 there (as the HF towers measured), bf16 on CUDA as every family
    Family("timm", "timm", forward=_timm, pooling="pooler", auto_precision=_FP32_CPU),
    Family("timm_vit", "timm", forward=_timm, pooling="pooler", poolings=("pooler", "cls", "mean"),
           auto_precision=_FP32_CPU),
    # open_clip image towers: a full CLIP checkpoint's other tower (text, logit scale) is dropped, "visual." stripped
    Family("open_clip", "open_clip", forward=_open_clip, pooling="image_embeds", poolings=("image_embeds", "pooler"),
           auto_precision=_FP32_CPU, key_rewrites=((r"^(?!visual\.)", "~other."),), drop_prefixes=("~other.",), strip_prefixes=("visual.",)),
    Family("xrv_densenet", "xrv", forward=_xrv, classifier_prefixes=("classifier.",), drop_prefixes=("op_threshs",),
           key_rewrites=(_DENSENET_OLD,), channels_last=True, auto_precision=_BF16_CPU,
           freeze=FreezeRule("densenet", ("features.conv0.", "features.norm0.", "features.denseblock1."),
                             ("features.conv0.weight", "features.denseblock1."),
                             "stem (conv0, norm0) + denseblock1 (transition1 trains)")),
    # any Hugging Face vision model (hf:<hub id or folder>): with a class token (ViT, DINOv2, ...) or without
    Family("hf_cls", "hf", forward=_hf, pooling="cls", poolings=("cls", "mean", "pooler"), hf_class="AutoModel",
           check_image_size=False, auto_precision=_FP32_CPU),
    Family("hf_pooler", "hf", forward=_hf, pooling="pooler", poolings=("pooler", "mean"), hf_class="AutoModel",
           check_image_size=False, auto_precision=_FP32_CPU),
    Family("dinov2", "hub", forward=_hf, pooling="cls", poolings=("cls", "mean"), hf_class="Dinov2Model", check_image_size=False,
           auto_precision=_BF16_CPU,  # measured: bf16 autocast ~2x fp32 for a 768-d DINOv2 layer at 518 px
           freeze=FreezeRule("dinov2", ("embeddings.",) + tuple(f"encoder.layer.{i}." for i in range(4)),
                             ("embeddings.", "encoder.layer.0."), "embeddings + encoder layers 0-3")),
)}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown backbone family {name!r} (known: {', '.join(FAMILIES)})") from None


def freeze_rule(family: Optional[str]) -> Optional[FreezeRule]:
    """The layer-wise freeze rule of a family name (None: unknown family, first block frozen)."""
    fam = FAMILIES.get(family or "")
    return fam.freeze if fam else None
