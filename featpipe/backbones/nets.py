"""Builders of the bare networks (random weights, classifier removed), one small function per kind.

Each ``make_*`` returns a zero-argument callable so that the registry imports neither torchvision
nor transformers. The returned network maps normalised (B, 3, H, W) to its (B, D) embedding: the
torchvision classifier (``fc``, ``classifier``, ``heads``) is replaced by ``nn.Identity``.
"""

from __future__ import annotations

from typing import Callable


def _headless(net):
    import torch.nn as nn

    for attr in ("fc", "classifier", "heads"):
        if hasattr(net, attr):
            setattr(net, attr, nn.Identity())
    return net


def make_simple_cnn(channels: tuple[int, ...], in_channels: int = 3) -> Callable:
    """A plain CNN: blocks ``blocks.<i>`` of 3x3 conv, BatchNorm, ReLU and 2x2 max-pool, then global average
    pooling: (B, 3, H, W) -> (B, channels[-1])."""

    def make():
        from collections import OrderedDict

        import torch.nn as nn

        blocks, c_in = [], in_channels
        for c in channels:
            blocks.append(nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                        nn.ReLU(inplace=True), nn.MaxPool2d(2)))
            c_in = c
        return nn.Sequential(OrderedDict([("blocks", nn.Sequential(*blocks)), ("pool", nn.AdaptiveAvgPool2d(1)),
                                          ("flatten", nn.Flatten())]))

    return make


def make_factory(target: str) -> Callable:
    """Your own network from a Python entry point ``module:callable`` (imported when the network is built)."""

    def make():
        import importlib

        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)()

    return make


def make_tv(arch: str) -> Callable:
    """A torchvision architecture by its builder name (``resnet50``), no weights."""

    def make():
        import torchvision.models as tvm

        return _headless(getattr(tvm, arch)(weights=None))

    make.__name__ = f"make_{arch}"
    make.arch = arch  # torchvision builder name (tests build the full network, classifier included, from it)
    return make


def make_tiny_densenet(**kw) -> Callable:
    def make():
        from torchvision.models.densenet import DenseNet

        return _headless(DenseNet(**kw))

    return make


def make_tiny_vit(**kw) -> Callable:
    def make():
        from torchvision.models.vision_transformer import VisionTransformer

        return _headless(VisionTransformer(**kw))

    return make


def make_hf(model_class: str, config_class: str, **kw) -> Callable:
    """A Hugging Face vision model (``SiglipVisionModel``, ``Dinov2Model``) of the given config, random
    weights. ``make.config`` is the config; ``make.build(**overrides)`` builds another size of it (tests
    plant one-layer models of the real width as hub snapshots)."""

    def build(**overrides):
        import transformers

        config = getattr(transformers, config_class)(**(kw | overrides))
        return getattr(transformers, model_class)(config)

    def make():
        return build()

    make.config = kw
    make.build = build
    return make


def siglip_config(**kw):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(**kw)


def make_siglip(**kw) -> Callable:
    """A SigLIP vision tower (``SiglipVisionModel``) of the given config, random weights."""
    return make_hf("SiglipVisionModel", "SiglipVisionConfig", **kw)


def make_dinov2(**kw) -> Callable:
    """A DINOv2 ViT (``Dinov2Model``, CLS + patch tokens, no registers) of the given config, random weights."""
    return make_hf("Dinov2Model", "Dinov2Config", **kw)
