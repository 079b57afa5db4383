"""Backbones for the Python API: :func:`list_backbones` and :func:`create_backbone` (the model and its
preprocessing, as ``open_clip.create_model_and_transforms`` gives a model and its transforms)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from featpipe.backbones.model import build
from featpipe.backbones.registry import Preprocess, names


class Backbone(NamedTuple):
    """A frozen backbone and how images must be prepared for it (``model, preprocess = backbone``).

    ``model`` is a :class:`~featpipe.backbones.model.FeatureModel` (normalised ``(B, 3, H, W)`` float ->
    ``(B, D)`` embeddings, eval mode, no gradients); ``preprocess`` its
    :class:`~featpipe.backbones.registry.Preprocess` (decode size, crop, mean/std)."""

    model: Any
    preprocess: Preprocess

    @property
    def weights(self) -> str:
        """The weights request it was built from (what a saved head records, to rebuild it)."""
        ref = self.model.weights
        return ref.request if ref is not None else "default"

    @property
    def name(self) -> str:
        return self.model.spec.name

    @property
    def layer(self) -> Optional[str]:
        return self.model.layer

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def weights_id(self) -> str:
        return self.model.weights_id

    def provenance(self, *, precision: str = "fp32") -> dict:
        """What a feature cache records about the backbone that made it (its ``attrs``), for embeddings
        computed with ``precision``: the keys a saved head must match to be applied again."""
        return {"backbone": self.name, "weights": self.weights, "weights_request": self.weights,
                "weights_id": self.weights_id, "layer": self.layer or "", "preprocess": self.preprocess.to_dict(),
                "embedding_dim": self.embed_dim, "precision": precision}


def list_backbones(*, tiny: Optional[bool] = None) -> list[str]:
    """Registered backbone names (``tiny=False``: only the real ones; ``tiny=True``: only the tiny test members,
    which have random weights and need no download)."""
    return names(tiny=tiny)


def create_backbone(name: str, weights: str = "default", layer: Optional[str] = None) -> Backbone:
    """Build backbone ``name`` with ``weights`` (``default``, ``imagenet``, ``random``, a local file or folder,
    a hub id) cut at ``layer`` (a registered cut point; None = the final embedding). Unknown names, layers or
    weights that cannot be found are a one-line :class:`~featpipe.core.errors.FeatpipeError`."""
    model = build(name, weights=weights, layer=layer)
    return Backbone(model, model.spec.preprocess)
