"""What a registered backbone is, as data: :class:`Preprocess` (how images are prepared for it) and
:class:`BackboneSpec` (the frozen record the registry holds, :mod:`featpipe.backbones.registry`).

Both are plain frozen dataclasses with no torch: a spec's network is built by its ``make`` callable and its
family's behaviour is reached as ``spec.traits`` (:mod:`featpipe.backbones.families`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Mapping, Optional

from featpipe.backbones.families import Family, get_family
from featpipe.core.errors import FeatpipeError
from featpipe.imaging.base import FILTERS, Resize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How images must be prepared for a backbone: decode to ``resize_size`` square with the ``interpolation``
    filter (:attr:`decoding`: the decoded cache it reads), centre-crop ``input_size``, scale to [0, 1],
    normalise with ``mean``/``std`` (3 channels). The one representation of preprocessing: a sidecar or cache
    record is parsed by :meth:`from_dict` where it is read."""

    input_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.interpolation not in FILTERS:
            raise FeatpipeError(f"unknown interpolation {self.interpolation!r} (known: {', '.join(FILTERS)})")
        if self.resize_size < self.input_size:
            raise FeatpipeError(f"resize_size {self.resize_size} is smaller than input_size {self.input_size}")

    @property
    def decoding(self) -> Resize:
        """The decoded form this preprocessing reads: ``resize_size`` with its ``interpolation`` filter."""
        return Resize(self.resize_size, self.interpolation)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (mean/std as lists): what sidecars and cache attributes record."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: Mapping | str) -> Preprocess:
        """The Preprocess a sidecar or cache attribute recorded (a dict, or its JSON text); a record without
        ``resize_size`` or ``interpolation`` (older files) gets ``input_size`` and bilinear."""
        if isinstance(data, str):
            data = json.loads(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FeatpipeError(f"unknown preprocessing keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(input_size=int(data["input_size"]), resize_size=int(data.get("resize_size") or data["input_size"]),
                   mean=tuple(float(v) for v in data.get("mean", IMAGENET_MEAN)),
                   std=tuple(float(v) for v in data.get("std", IMAGENET_STD)),
                   interpolation=str(data.get("interpolation") or "bilinear"))


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone. ``make`` builds the bare network with random weights (lazy imports)."""

    name: str
    family: str  # a key of featpipe.backbones.families.FAMILIES (densenet, resnet, efficientnet, vit, siglip, dinov2)
    embed_dim: int
    preprocess: Preprocess
    gradcam_layer: str  # module name in the network
    layers: Mapping[str, int] = field(hash=False)  # cut point (module name) -> pooled feature dim
    default_weights: str  # "imagenet" | a hub id | "random" (tiny members: nothing to download)
    pretrained: Optional[str] = None  # how the default weights are identified: torchvision enum or hub id
    prefix_tokens: int = 0  # transformer token outputs: leading non-patch tokens (ViT/DINOv2 CLS = 1, SigLIP = 0)
    tiny: bool = False
    make: Callable = field(default=None, repr=False, compare=False, hash=False)

    @property
    def traits(self) -> Family:
        """The family's behaviour (:class:`featpipe.backbones.families.Family`)."""
        return get_family(self.family)

    def module_name(self, name: str, net) -> str:
        """``name`` with ``{last}`` replaced by the index of the network's last encoder layer (so a Grad-CAM
        layer can be named for every depth of a family: RAD-DINO's 12 layers, its 1-layer test snapshot)."""
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
