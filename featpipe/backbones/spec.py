"""What a registered backbone is, as data: :class:`Preprocess` (how images are prepared for it) and
:class:`BackboneSpec` (the frozen record the registry holds, :mod:`featpipe.backbones.registry`).

Both are plain frozen dataclasses with no torch: a spec's network is built by its ``make`` callable and its
family's behaviour is reached as ``spec.traits`` (:mod:`featpipe.backbones.families`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Callable, Mapping, Optional

from featpipe.backbones.families import Family, get_family
from featpipe.core.errors import FeatpipeError
from featpipe.imaging.base import DEFAULT_MODE, FILTERS, RESIZE_MODES, Resize, crop_steps_agree

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How images must be prepared for a backbone, as its reference (the library's own transform or image
    processor, :mod:`featpipe.backbones.reference`) prepares them:

    1. decode to ``resize_size`` with the ``interpolation`` filter in ``resize_mode`` (``shorter``: shorter side
       to ``resize_size``, centre crop to a square, offsets rounded as torchvision; ``shorter-floor``: the same,
       offsets rounded down as Hugging Face processors; ``square``: the whole image to ``resize_size x
       resize_size``, aspect ratio not kept) -- :attr:`decoding`, the decoded cache it reads;
    2. centre-crop ``input_size`` (offsets rounded as the mode says);
    3. ``channels`` (3: grey replicated; 1: colour averaged), scale to [0, 1], normalise with ``mean``/``std``
       (one value per channel): the network sees values in :attr:`value_range` (torchxrayvision's [-1024, 1024]
       is ``mean=0.5, std=1/2048``).

    The one representation of preprocessing: a sidecar or cache record is parsed by :meth:`from_dict`."""

    input_size: int
    resize_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    resize_mode: str = DEFAULT_MODE
    channels: int = 3

    def __post_init__(self):
        if self.interpolation not in FILTERS:
            raise FeatpipeError(f"unknown interpolation {self.interpolation!r} (known: {', '.join(FILTERS)})")
        if self.resize_mode not in RESIZE_MODES:
            raise FeatpipeError(f"unknown resize mode {self.resize_mode!r} (known: {', '.join(RESIZE_MODES)})")
        if self.resize_size < self.input_size:
            raise FeatpipeError(f"resize_size {self.resize_size} is smaller than input_size {self.input_size}")
        if self.channels not in (1, 3):
            raise FeatpipeError(f"channels must be 1 or 3, got {self.channels!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
            raise FeatpipeError(f"mean and std need {self.channels} values each (std > 0), got {self.mean}, {self.std}")

    @property
    def decoding(self) -> Resize:
        """The decoded form this preprocessing reads: ``resize_size`` with its ``interpolation`` and mode, its square
        aligned to the ``input_size`` crop where two centre crops would not equal the reference's one."""
        agree = crop_steps_agree(self.resize_size, self.input_size, self.resize_mode)
        return Resize(self.resize_size, self.interpolation, self.resize_mode, 0 if agree else self.input_size)

    @property
    def value_range(self) -> tuple[float, float]:
        """The range of the network input (first channel): black and white after normalisation."""
        return (-self.mean[0] / self.std[0], (1.0 - self.mean[0]) / self.std[0])

    def describe(self) -> str:
        """One line: ``shorter side 256 bilinear, crop 224, 3 ch, mean (...) std (...)``."""
        how = {"square": "whole image to", "shorter": "shorter side",
               "shorter-floor": "shorter side (crop offsets floored)"}[self.resize_mode] + f" {self.resize_size}"
        crop = f", crop {self.input_size}" if self.input_size != self.resize_size else ""
        lo, hi = self.value_range
        return (f"{how} {self.interpolation}{crop}, {self.channels} ch, values [{lo:.3g}, {hi:.3g}] "
                f"(mean {', '.join(f'{v:.4g}' for v in self.mean)}; std {', '.join(f'{v:.4g}' for v in self.std)})")

    def to_dict(self) -> dict:
        """Plain JSON-able dict (mean/std as lists): what sidecars and cache attributes record. ``resize_mode`` and
        ``channels`` are written when not the default (records made before they existed stay equal)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.resize_mode == DEFAULT_MODE:
            del d["resize_mode"]
        if self.channels == 3:
            del d["channels"]
        return d

    @classmethod
    def from_dict(cls, data: Mapping | str) -> Preprocess:
        """The Preprocess a sidecar or cache attribute recorded (a dict, or its JSON text); a record without
        ``resize_size``, ``interpolation``, ``resize_mode`` or ``channels`` (older files) gets ``input_size``,
        bilinear, shorter-side and 3."""
        if isinstance(data, str):
            data = json.loads(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FeatpipeError(f"unknown preprocessing keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(input_size=int(data["input_size"]), resize_size=int(data.get("resize_size") or data["input_size"]),
                   mean=tuple(float(v) for v in data.get("mean", IMAGENET_MEAN)),
                   std=tuple(float(v) for v in data.get("std", IMAGENET_STD)),
                   interpolation=str(data.get("interpolation") or "bilinear"),
                   resize_mode=str(data.get("resize_mode") or DEFAULT_MODE), channels=int(data.get("channels") or 3))


@dataclass(frozen=True)
class TextTower:
    """A backbone's text tower (CLIP-like models: zero-shot classification, text-initialised heads) and the
    tokenizer settings the model needs, pinned here.

    - MedSigLIP (``library="transformers"``, ``SiglipModel``): SigLIP pools the text at the LAST position, so its
      prompts must be padded to ``max_length`` (64 tokens, its ``max_position_embeddings``): a prompt padded only
      to its own length is pooled at another position and zero-shot falls to chance. Image side: ``pooler``.
    - BiomedCLIP (``library="open_clip"``, PubMedBERT through open_clip's ``HFTextEncoder``): open_clip's
      ``HFTokenizer`` as the repository's ``open_clip_config.json`` sets it: whitespace collapsed (``clean``),
      ``[CLS] ... [SEP]`` then ``[PAD]`` to the context length 256, truncated; the attention mask is ``ids !=
      pad``. Image side: ``image_embeds`` (``encode_image``)."""

    hf_class: str = "SiglipModel"  # the full model class (vision + text) in transformers ("" for open_clip)
    padding: str = "max_length"
    max_length: int = 64
    truncation: bool = True
    library: str = "transformers"  # transformers | open_clip: who builds the full model
    image_features: str = "pooler"  # the image features in the text's space (what zero-shot scores)
    clean: str = ""  # "" | "whitespace": open_clip's HFTokenizer collapses runs of whitespace first

    def tokenizer_kwargs(self) -> dict:
        return {"padding": self.padding, "max_length": self.max_length, "truncation": self.truncation}

    def provenance(self) -> dict:
        """What a text-embedding cache records of the tokenizer (the MedSigLIP record unchanged)."""
        return self.tokenizer_kwargs() | ({"clean": self.clean} if self.clean else {})


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone. ``make`` builds the bare network with random weights (lazy imports)."""

    name: str
    family: str  # a key of featpipe.backbones.families.FAMILIES (densenet, resnet, efficientnet, vit, siglip, dinov2)
    embed_dim: int
    # where the preprocessing comes from: a hashable callable returning the Preprocess, derived from the model's own
    # reference (featpipe.backbones.reference: torchvision's Weights.transforms(), a Hugging Face image processor
    # config, ...); read once, on first use of ``preprocess``
    reference: Callable[[], Preprocess]
    gradcam_layer: str  # module name in the network
    layers: Mapping[str, int] = field(hash=False)  # cut point (module name) -> pooled feature dim
    default_weights: str  # "imagenet" | a hub id | "random" (tiny members: nothing to download)
    pretrained: Optional[str] = None  # how the default weights are identified: torchvision enum or hub id
    prefix_tokens: int = 0  # transformer token outputs: leading non-patch tokens (ViT/DINOv2 CLS = 1, SigLIP = 0)
    tiny: bool = False
    make: Callable = field(default=None, repr=False, compare=False, hash=False)
    pooling: str = ""  # which features are the embedding ("" = the family's, Family.pooling; see POOLINGS)
    text: Optional[TextTower] = None  # its text tower, when it has one (zero-shot: featpipe.backbones.text)
    # embedding size of other features where it differs from embed_dim (BiomedCLIP: image_embeds 512, pooler 768)
    feature_dims: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), hash=False, compare=False)

    @functools.cached_property
    def preprocess(self) -> Preprocess:
        """The preprocessing of the reference (:attr:`reference`, read once per spec)."""
        return self.reference()

    @property
    def features(self) -> str:
        """Which features the embedding is (``avgpool``, ``cls``, ``mean``, ``pooler``, ``image_embeds``): the spec's
        ``pooling`` or its family's. Recorded in every feature cache and results row."""
        return self.pooling or self.traits.pooling

    @property
    def traits(self) -> Family:
        """The family's behaviour (:class:`featpipe.backbones.families.Family`)."""
        return get_family(self.family)

    def module_name(self, name: str, net) -> str:
        """``name`` with ``{last}`` replaced by the index of the network's last encoder layer (so a Grad-CAM
        layer can be named for every depth of a family: RAD-DINO's 12 layers, its 1-layer test snapshot)."""
        if not name:
            raise FeatpipeError(f"backbone '{self.name}' has no registered Grad-CAM layer; name a module of its "
                                "network with --layer (gradcam.layer)")
        if "{last}" not in name:
            return name
        return name.replace("{last}", str(int(net.config.num_hidden_layers) - 1))

    def resolve_layer(self, layer: Optional[str]) -> Optional[str]:
        """A registered cut point by full name or unique suffix (``denseblock3``); None = final embedding."""
        if layer in (None, "", "final", "none"):
            return None
        if layer in self.layers:
            return layer
        hits = [k for k in self.layers if k.endswith("." + layer)]
        if len(hits) == 1:
            return hits[0]
        raise FeatpipeError(
            f"backbone '{self.name}' has no cut point '{layer}' (choose from: {', '.join(self.layers)})"
        )

    def output_dim(self, layer: Optional[str] = None) -> int:
        layer = self.resolve_layer(layer)
        return self.embed_dim if layer is None else self.layers[layer]
