"""torchxrayvision DenseNets by weights name: ``xrv:<weights>`` (``xrv:densenet121-res224-all``, ``-nih``, ``-chex``,
...), and the named member ``xrv_densenet121`` (``densenet121-res224-all``).

- the network is ``xrv.models.DenseNet()`` with its classifier removed; the embedding is ``model.features2(x)``
  (relu + global average pool of the DenseNet features, 1024-d); cut points and Grad-CAM as torchvision's
  DenseNet-121 (same module names);
- the preprocessing is torchxrayvision's documented pipeline (:class:`~featpipe.backbones.reference.XrvTransform`:
  one channel, [-1024, 1024], shorter side, 224);
- default weights: the file torchxrayvision itself downloads (the basename of ``model_urls[w]["weights_url"]``)
  in ``$FEATPIPE_XRV_CACHE`` if set, else torchxrayvision's cache (``xrv.utils.get_cache_dir()``,
  ``~/.torchxrayvision/models_data``); downloaded there only when online; identity ``sha256:<hex>`` of the file.

**Loading is safe.** torchxrayvision's files are whole pickled models, which its own loader reads with
``torch.load(weights_only=False)`` (any code a file names would run). featpipe reads them with a restricted
unpickler instead (:func:`read_model_file`): the only globals a file may name are torch's tensor and storage
rebuilders, ``OrderedDict``/``set``, and ``torch.nn.Module`` subclasses defined in ``torch.nn.modules`` or
``torchxrayvision`` (whose instances are rebuilt by their own ``__setstate__``); anything else is refused with a
one-line WeightsError. ``torch.load(weights_only=True)`` alone cannot read them: the old (pre-zip) format stores
module source code as persistent ids, which it refuses.
"""

from __future__ import annotations

import importlib
import os
import pickle
import types
from pathlib import Path
from types import MappingProxyType

from featpipe.backbones import hubcache
from featpipe.backbones.reference import XrvTransform
from featpipe.backbones.spec import BackboneSpec
from featpipe.core.errors import FeatpipeError, WeightsError
from featpipe.core.fileio import file_sha256
from featpipe.core.optional import require

SOURCE = "xrv"
PREFIX = "xrv"
CACHE_ENV = "FEATPIPE_XRV_CACHE"
DENSENET121_LAYERS = {"features.denseblock1": 256, "features.transition1": 128, "features.denseblock2": 512,
                      "features.transition2": 256, "features.denseblock3": 1024, "features.transition3": 512}
_FUNCTIONS = {("torch._utils", n) for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter",
                                            "_rebuild_parameter_with_state")}
_FUNCTIONS |= {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("torch", "Size")}


def _require() -> None:
    require("torchxrayvision", "1.2", extra="xrv", why="xrv: backbones and xrv_densenet121")


def _urls() -> dict:
    import torchxrayvision as xrv

    return xrv.models.model_urls


def make_net():
    """torchxrayvision's DenseNet-121 (1 channel), random weights, classifier removed."""
    import torch.nn as nn
    import torchxrayvision as xrv

    net = xrv.models.DenseNet(weights=None)
    net.classifier = nn.Identity()
    return net


def make_spec(weights: str, name: str) -> BackboneSpec:
    """The spec of torchxrayvision DenseNet weights ``weights`` (registered as ``name``)."""
    _require()
    known = sorted(k for k in _urls() if k.startswith("densenet121-"))
    if weights not in known:
        raise FeatpipeError(f"unknown torchxrayvision weights '{weights}' (featpipe embeds with the DenseNets: "
                            f"{', '.join(known)})")
    return BackboneSpec(name=name, family="xrv_densenet", embed_dim=1024, reference=XrvTransform(weights),
                        gradcam_layer="features.norm5", layers=MappingProxyType(DENSENET121_LAYERS),
                        default_weights=weights, pretrained=weights, make=make_net)


def weights_path(weights: str) -> tuple[Path, str]:
    """(local file, URL) of torchxrayvision weights ``weights``: ``$FEATPIPE_XRV_CACHE`` or its own cache dir."""
    import torchxrayvision as xrv

    url = _urls()[weights]["weights_url"]
    default = getattr(xrv.utils, "get_cache_dir", lambda: os.path.join("~", ".torchxrayvision", "models_data"))
    folder = os.environ.get(CACHE_ENV) or default()  # get_cache_dir: torchxrayvision >= 1.2.1; the same folder
    return Path(folder).expanduser() / os.path.basename(url), url


def resolve_default(spec: BackboneSpec) -> tuple[str, str, str]:
    """(kind, source: the weights name (portable), identity ``sha256:<hex>`` of the file) of the spec's
    torchxrayvision weights; downloaded with torchxrayvision's own downloader only when online."""
    path, url = weights_path(spec.pretrained)
    how = f"download {url} into {path.parent} (or set {CACHE_ENV} to a folder holding {path.name}), or pass --weights PATH"
    if not path.is_file():
        if hubcache.offline():
            raise WeightsError(f"torchxrayvision weights {spec.pretrained} not found at {path} (offline): {how}")
        import torchxrayvision as xrv

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            xrv.utils.download(url, str(path))
        except Exception as exc:
            raise WeightsError(f"torchxrayvision weights {spec.pretrained} could not be had "
                               f"({type(exc).__name__}): {how}") from None
    return "xrv", spec.pretrained, f"sha256:{file_sha256(path)}"


def _find(module: str, name: str):
    """The global a torchxrayvision file may name, or UnpicklingError (see the module docstring)."""
    import torch

    module = {"__builtin__": "builtins"}.get(module, module)  # protocol-2 pickles name Python 2's module
    if (module, name) in _FUNCTIONS:
        return getattr(importlib.import_module(module), name)
    if module == "torch" and name.endswith("Storage"):
        return getattr(torch, name)
    if module.startswith(("torch.nn.modules.", "torchxrayvision.")) or module == "torchxrayvision":
        obj = getattr(importlib.import_module(module), name, None)
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
            return obj
    raise pickle.UnpicklingError(f"{module}.{name}")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return _find(module, name)


_RESTRICTED = types.SimpleNamespace(Unpickler=_Unpickler, load=lambda f, **kw: _Unpickler(f, **kw).load(),
                                    __name__="featpipe_restricted_pickle")


def read_model_file(path: str | Path) -> dict:
    """The state dict of a torchxrayvision weights file (a whole pickled model, or a state dict), read with the
    restricted unpickler; a file naming any other global is a one-line WeightsError."""
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_RESTRICTED)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"weights file {path} names {exc}, which featpipe does not unpickle (only torch.nn and "
                           "torchxrayvision modules and tensors); pass a .safetensors or plain state dict") from None
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"cannot read weights file {path} ({reason[:200]})") from None
    if isinstance(obj, torch.nn.Module):
        for mod in obj.modules():  # models pickled by old torch versions (as torchxrayvision's own loader does)
            if not hasattr(mod, "_non_persistent_buffers_set"):
                mod._non_persistent_buffers_set = set()
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise WeightsError(f"weights file {path} holds neither a model nor a state dict of tensors")
    return obj


def load(spec: BackboneSpec, kind: str, source: str, fit, read):
    """The DenseNet with its torchxrayvision weights (``kind`` xrv) or the weights file ``source`` (a
    torchxrayvision file or a state dict), strictly fitted."""
    path = weights_path(spec.pretrained)[0] if kind == "xrv" else Path(source)
    if path.suffix == ".safetensors":
        return None  # featpipe's plain loader
    net = make_net()
    fit(net, read_model_file(path))
    return net
