"""timm backbones by name: ``timm:<model name>`` (``timm:resnet18.a1_in1k``, ``timm:vit_small_patch16_224.augreg_in21k``;
without a ``.tag`` timm's default pretrained tag) resolves to a :class:`~featpipe.backbones.spec.BackboneSpec`
read from timm itself, without a code change:

- the network is ``timm.create_model(name, num_classes=0)``: its output is the model's own pooled pre-logits
  features (``pooler``; token models may also embed ``#cls`` or ``#mean``);
- the preprocessing is timm's evaluation transform of ``timm.data.resolve_model_data_config(model)``
  (:class:`~featpipe.backbones.reference.TimmTransform`);
- cut points are the model's ``feature_info`` modules (the last one is the embedding); Grad-CAM at the last
  stage (CNNs) or the first norm of the last block (ViTs);
- default weights: the model's Hugging Face hub repository (``pretrained_cfg["hf_hub_id"]``, ``model.safetensors``)
  from the hub cache (:mod:`featpipe.backbones.hubcache`; downloaded only when online), loaded by timm's own
  loader; identity ``timm:<name>@<commit>``. A local ``--weights`` file is loaded by timm's loader as well.

The spec is read on the meta device (no weights allocated); timm is imported only here, when such a name is used.
"""

from __future__ import annotations

import json
from types import MappingProxyType

from featpipe.backbones import hubcache
from featpipe.backbones.reference import TimmTransform
from featpipe.backbones.spec import BackboneSpec
from featpipe.core.errors import FeatpipeError, WeightsError
from featpipe.core.optional import require

SOURCE = "timm"
PREFIX = "timm"


def _require() -> None:
    require("timm", "1.0", extra="timm", why="timm: backbones")


def _model(name: str, *, device: str = "meta"):
    import timm
    import torch

    try:
        with torch.device(device):
            return timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Invalid pretrained tag" in str(exc):
            raise FeatpipeError(f"unknown timm model '{name}' (timm.list_models('<pattern>*', pretrained=True) "
                                "lists them)") from None
        if device == "meta" and "meta" in str(exc):  # older timm cannot build on the meta device
            return _model(name, device="cpu")
        raise


def _gradcam_layer(model, tokens: bool, info: list) -> str:
    if tokens and hasattr(model, "blocks") and len(model.blocks):
        last = f"blocks.{len(model.blocks) - 1}"
        for sub in ("norm1", "ln_1", "norm"):
            try:
                model.get_submodule(f"{last}.{sub}")
                return f"{last}.{sub}"
            except AttributeError:
                continue
        return last
    return info[-1][0] if info else ""


def make_spec(model_name: str, name: str) -> BackboneSpec:
    """The spec of timm model ``model_name`` (registered as ``name``)."""
    _require()
    from timm.data import resolve_model_data_config

    model = _model(model_name)
    cfg = resolve_model_data_config(model)
    pcfg = dict(model.pretrained_cfg or {})
    full = pcfg.get("architecture", model_name) + (f".{pcfg['tag']}" if pcfg.get("tag") else "")
    tokens = getattr(model, "num_prefix_tokens", None) is not None
    info = [(str(f["module"]), int(f["num_chs"])) for f in getattr(model, "feature_info", None) or []]
    return BackboneSpec(
        name=name, family="timm_vit" if tokens else "timm",
        embed_dim=int(getattr(model, "head_hidden_size", None) or model.num_features),
        reference=TimmTransform(json.dumps(cfg, sort_keys=True), full),
        gradcam_layer=_gradcam_layer(model, tokens, info), layers=MappingProxyType(dict(info[:-1])),
        default_weights=pcfg.get("hf_hub_id") or f"timm:{full}", pretrained=full,
        prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0) if tokens else 0,
        make=lambda: _model(full, device="cpu"))


def _hub_file(spec: BackboneSpec):
    repo = spec.default_weights
    if repo.startswith("timm:"):
        raise WeightsError(f"timm model {spec.pretrained} has no weights on the Hugging Face hub; "
                           "pass --weights FILE (a .safetensors or .pth state dict of it)")
    return hubcache.fetch(repo, ["model.safetensors", "pytorch_model.bin"], what=f"weights for {spec.name}")


def resolve_default(spec: BackboneSpec) -> tuple[str, str, str]:
    """(kind, source, identity) of the spec's default weights: its hub repository (the source recorded, portable)
    whose ``model.safetensors`` (or ``pytorch_model.bin``) is in the hub cache; identity ``timm:<name>@<commit>``."""
    path = _hub_file(spec)
    return "timm", spec.default_weights, f"timm:{spec.pretrained}@{hubcache.commit_of(path)}"


def load(spec: BackboneSpec, kind: str, source: str, fit, read):
    """The network with the default weights (``kind`` timm) or the weights file ``source``: read by featpipe (``read``: safetensors or
    ``torch.load(weights_only=True)``), loaded by timm's own pretrained loader (``pretrained_cfg_overlay``
    ``state_dict``: the model's checkpoint filter applied, the classifier dropped, strict)."""
    import timm

    state_dict = read(_hub_file(spec) if kind == "timm" else source)
    try:
        return timm.create_model(spec.pretrained, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay={"state_dict": state_dict, "custom_load": False})
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"weights {source} do not load into timm model {spec.pretrained} ({reason[:200]})") from None
