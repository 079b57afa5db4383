"""Networks of your own registered as backbones, from params (``networks:``) or from Python.

``factory: simple_cnn`` is featpipe's plain CNN (:func:`featpipe.backbones.nets.make_simple_cnn`: blocks of
conv-BN-ReLU-pool, global average pooling; cut points ``blocks.<i>``); ``factory: module:callable`` is any
function of yours returning a network that maps normalised (B, 3, H, W) images to (B, embed_dim) embeddings,
imported when the network is built. Either is then a backbone like the built-in ones: ``extract``, the heads,
``finetune`` (every strategy; ``scratch`` from the run's seed; layer-wise freezes the first block), Grad-CAM and
``predict``. Its definition is part of its weights identity (``random:seed<n>@custom:<hash>``), so a changed
definition under the same name never reuses old features or models.

The command line registers ``params.networks`` before every command; in Python call :func:`register_network`
(or :func:`register_networks`) before naming the network. Worker processes (a Ray cluster, a local pool) register
them again from their definition: the command line hands the executor that step (its ``setup``); a
``module:callable`` factory must be importable on the workers.
"""

from __future__ import annotations

import hashlib
import json

from featpipe.backbones import nets
from featpipe.backbones.reference import Fixed
from featpipe.backbones.registry import register_custom
from featpipe.backbones.spec import BackboneSpec, Preprocess
from featpipe.core.errors import ConfigError
from featpipe.params.config import Params
from featpipe.params.study import NetworkParams


def register_network(net: NetworkParams) -> BackboneSpec:
    """Register ``net`` as the backbone ``net.name`` (replacing an earlier network of yours of that name)."""
    if net.factory == "simple_cnn":
        make = nets.make_simple_cnn(tuple(net.channels))
        dim = int(net.channels[-1])
        layers = {f"blocks.{i}": int(c) for i, c in enumerate(net.channels[:-1])}
        gradcam = net.gradcam_layer or f"blocks.{len(net.channels) - 1}"
    else:
        make, dim, gradcam = nets.make_factory(net.factory), int(net.embed_dim), net.gradcam_layer
        layers = {}
        for entry in net.layers:
            name, _, d = entry.partition("=")
            if not d.strip().isdigit():
                raise ConfigError(f"networks '{net.name}': layers entry {entry!r} must read 'module.name=dim'")
            layers[name.strip()] = int(d)
    size = int(net.input_size)
    definition = json.dumps({"factory": net.factory, "channels": list(net.channels), "embed_dim": dim,
                             "layers": layers}, sort_keys=True)
    tag = hashlib.sha256(definition.encode()).hexdigest()[:12]
    pre = Preprocess(input_size=size, resize_size=int(net.resize_size or size), mean=tuple(net.mean), std=tuple(net.std))
    return register_custom(name=net.name, family="custom", embed_dim=dim, reference=Fixed(pre, f"params networks: {net.name}"), gradcam_layer=gradcam,
                           layers=layers, default_weights="random", pretrained=f"custom:{tag}", make=make)


def register_networks(params: Params | None) -> list[str]:
    """Register every network of ``params.networks``; their names."""
    return [register_network(n).name for n in (params.networks if params else ())]

