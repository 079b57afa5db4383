"""Frozen backbones: a registry of small frozen specs and one builder per network.

``get(name) -> BackboneSpec``, ``names()``, ``build(spec, weights="default", layer=None) -> FeatureModel``.
torch, torchvision and transformers are imported only when a network is built.
"""

from featpipe.backbones.registry import BackboneSpec, Preprocess, get, names

__all__ = ["BackboneSpec", "Preprocess", "get", "names", "build", "FeatureModel"]


def build(spec, weights: str = "default", layer=None):
    """Build ``spec`` (a :class:`BackboneSpec` or a registered name); see :func:`featpipe.backbones.model.build`."""
    from featpipe.backbones.model import build as _build

    return _build(spec, weights=weights, layer=layer)


def __getattr__(name):
    if name == "FeatureModel":
        from featpipe.backbones.model import FeatureModel

        return FeatureModel
    raise AttributeError(name)
