"""``FeatureModel``: a frozen network mapping normalised images to embeddings, final or from a cut point."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from featpipe.backbones import weights as weights_mod
from featpipe.backbones.forward import global_pool
from featpipe.backbones.registry import get
from featpipe.backbones.spec import BackboneSpec


class _Stop(Exception):
    """Raised by the cut-point hook to skip the rest of the network."""


class FeatureModel(nn.Module):
    """Normalised float (B, 3, H, W) -> (B, D) float32 embeddings.

    ``net`` is the underlying network (classifier removed; ``net.get_submodule(spec.gradcam_layer)``
    is the Grad-CAM target); ``layer`` a registered cut point (globally pooled features taken from that
    module's output) or None for the final embedding; ``weights`` the resolved
    :class:`~featpipe.backbones.weights.WeightsRef`. Built in eval mode with gradients off (frozen):
    call ``requires_grad_(True)`` to fine-tune.
    """

    def __init__(self, net: nn.Module, spec: BackboneSpec, *, layer: Optional[str] = None,
                 weights: Optional[weights_mod.WeightsRef] = None):
        super().__init__()
        self.net = net
        self.spec = spec
        self.layer = spec.resolve_layer(layer)
        self.weights = weights
        self.embed_dim = spec.output_dim(self.layer)

    @property
    def weights_id(self) -> str:
        return self.weights.identity if self.weights is not None else "unknown"

    @property
    def gradcam_layer(self) -> str:
        """The registered Grad-CAM layer's module name in this network."""
        return self.spec.module_name(self.spec.gradcam_layer, self.net)

    @property
    def gradcam_module(self) -> nn.Module:
        return self.net.get_submodule(self.gradcam_layer)

    def _run(self, x: torch.Tensor):
        return self.spec.traits.forward(self.net, x, self.spec.features, self.spec.prefix_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return self._run(x).float()
        got = {}

        def hook(_module, _inputs, output):
            got["out"] = output[0] if isinstance(output, (tuple, list)) else output
            raise _Stop

        handle = self.net.get_submodule(self.layer).register_forward_hook(hook)
        try:
            self._run(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return global_pool(got["out"], self.spec.prefix_tokens).float()


def build(spec: BackboneSpec | str, weights: str = "default", layer: Optional[str] = None) -> FeatureModel:
    """Build ``spec`` (or a registered name) with ``weights`` (see :mod:`featpipe.backbones.weights`)."""
    spec = get(spec)
    layer = spec.resolve_layer(layer)
    spec, ref = weights_mod.resolve_spec(spec, weights)
    net = weights_mod.load_network(spec, ref)
    model = FeatureModel(net, spec, layer=layer, weights=ref)
    model.eval()
    model.requires_grad_(False)
    return model
