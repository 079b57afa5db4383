"""Frozen backbones: a registry of small frozen specs and one builder per network.

- :mod:`~featpipe.backbones.spec`: ``Preprocess`` and ``BackboneSpec``, the data a backbone is;
- :mod:`~featpipe.backbones.families`: what differs between network families, as data;
- :mod:`~featpipe.backbones.registry`: ``get(name) -> BackboneSpec``, ``names()``, the members;
- :mod:`~featpipe.backbones.weights`: resolving and loading weights, their identity;
- :mod:`~featpipe.backbones.model`: ``build(spec, weights="default", layer=None) -> FeatureModel``;
- :mod:`~featpipe.backbones.modelinput`: decoded pixels -> network input, and the decoded sizes a backbone reads.

torch, torchvision and transformers are imported only when a network is built.
"""
