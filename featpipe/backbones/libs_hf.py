"""Hugging Face vision models by hub id or folder: ``hf:<owner>/<name>`` or ``hf:<folder>`` (a model folder with
``config.json``, weights and ``preprocessor_config.json``).

- the network is ``AutoModel`` of the config (CLIP and SigLIP: their vision tower, ``CLIPVisionModel`` /
  ``SiglipVisionModel``); the embedding is the class token (``cls``) for models that have one (ViT, DINOv2,
  DeiT, BEiT, CLIP), else the model's ``pooler_output``; ``#mean`` = mean of the patch tokens; ``#pooler``;
- the preprocessing is the model's ``preprocessor_config.json``
  (:class:`~featpipe.backbones.reference.ProcessorConfig`);
- cut points: the encoder's layers (the longest ``ModuleList`` named ``layer``/``layers``), Grad-CAM at the first
  norm of its last layer;
- weights: the folder itself, or the hub snapshot (``hf:<id>@<commit>``) from the hub cache, downloaded only
  when online (:mod:`featpipe.backbones.weights`); loaded strictly (every weight present).

The config and the image processor config of a hub id are read from the hub cache (downloaded when online) when
the name is first used; the network is built on the meta device to read its structure.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

from featpipe.backbones import hubcache
from featpipe.backbones.reference import ProcessorConfig
from featpipe.backbones.spec import BackboneSpec
from featpipe.core.errors import FeatpipeError, WeightsError

SOURCE = "hf"
PREFIX = "hf"
# model types whose embedding is the class token, and their leading non-patch tokens (registers added from config)
CLS_TOKENS = {"vit": 1, "dinov2": 1, "dinov2_with_registers": 1, "deit": 2, "beit": 1, "data2vec-vision": 1,
              "vit_mae": 1, "vit_msn": 1, "clip_vision_model": 1, "clip": 1, "ijepa": 0}
VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        raise WeightsError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path} is not a JSON object")
    return data


def _files(ref: str) -> tuple[dict, dict, str]:
    """(config, image processor config, where) of a folder or hub id."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        cfg, pre = folder / "config.json", folder / "preprocessor_config.json"
        if not cfg.is_file() or not pre.is_file():
            raise WeightsError(f"model folder {folder} needs config.json and preprocessor_config.json")
        return _read_json(cfg), _read_json(pre), str(pre)
    if ref.count("/") != 1:
        raise FeatpipeError(f"hf backbone '{ref}': name a Hugging Face hub id (owner/name) or an existing model folder")
    what = f"Hugging Face backbone hf:{ref}"
    cfg = hubcache.fetch(ref, ["config.json"], what=what)
    pre = hubcache.fetch(ref, ["preprocessor_config.json"], what=what)
    return _read_json(cfg), _read_json(pre), f"{ref} preprocessor_config.json"


def model_class(config: dict) -> str:
    """The transformers class featpipe builds for a config: a CLIP/SigLIP vision tower, else ``AutoModel``."""
    return VISION_TOWERS.get(str(config.get("model_type")), "AutoModel")


def _build(config: dict, device: str = "cpu"):
    import torch
    import transformers

    cls = model_class(config)
    cfg = transformers.AutoConfig.for_model(**config)
    if cls != "AutoModel" and hasattr(cfg, "vision_config"):
        cfg = cfg.vision_config
    with torch.device(device):
        if cls == "AutoModel":
            return transformers.AutoModel.from_config(cfg)
        return getattr(transformers, cls)(cfg)


def _encoder_layers(net) -> tuple[str, int]:
    import torch.nn as nn

    found = [(name, len(m)) for name, m in net.named_modules()
             if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers", "blocks")]
    if not found:
        return "", 0
    return max(found, key=lambda t: t[1])


def _gradcam(net, layers: str, n: int) -> str:
    import torch.nn as nn

    if not n:
        return ""
    last = f"{layers}.{n - 1}"
    for name, m in net.get_submodule(last).named_modules():
        if isinstance(m, nn.LayerNorm):
            return f"{last}.{name}"
    return last


def make_spec(ref: str, name: str) -> BackboneSpec:
    """The spec of the Hugging Face vision model ``ref`` (hub id or folder), registered as ``name``."""
    config, pre, where = _files(ref)
    net = _build(config, device="meta")
    cfg = net.config
    width = int(getattr(cfg, "hidden_size", 0) or (getattr(cfg, "hidden_sizes", None) or [0])[-1])
    if not width:
        raise FeatpipeError(f"hf backbone '{ref}': its config names no hidden_size; featpipe cannot size its embedding")
    mtype = str(getattr(cfg, "model_type", config.get("model_type")))
    cls = mtype in CLS_TOKENS
    prefix = (CLS_TOKENS.get(mtype, 0) + int(getattr(cfg, "num_register_tokens", 0) or 0)) if cls else 0
    layers, n = _encoder_layers(net)
    return BackboneSpec(
        name=name, family="hf_cls" if cls else "hf_pooler", embed_dim=width,
        reference=ProcessorConfig.of(pre, where), gradcam_layer=_gradcam(net, layers, n),
        layers=MappingProxyType({f"{layers}.{i}": width for i in range(n - 1)} if n else {}),
        default_weights=str(Path(ref).expanduser().resolve()) if Path(ref).expanduser().is_dir() else ref,
        pretrained=ref, prefix_tokens=prefix, make=lambda: _build(config))


def load(spec: BackboneSpec, kind: str, source: str, fit, read):
    """The model from a model folder (``kind`` ``hf_folder``), strictly: every weight present; None for a plain
    state dict file (featpipe's strict loader)."""
    if kind != "hf_folder":
        return None
    return hubcache.load_folder(model_class(_read_json(Path(source) / "config.json")), source, spec.name)
