"""open_clip image towers by name: ``open_clip:hf-hub:<org>/<repo>`` (a repository holding ``open_clip_config.json``
and ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``), ``open_clip:<architecture>/<tag>`` (a
built-in config and pretrained tag, ``open_clip:ViT-B-32/laion2b_s34b_b79k``; ViT towers), and the named member
``biomedclip``.

- the network is the model's image tower alone (``model.visual``, built by open_clip's ``_build_vision_tower``
  from the config's ``vision_cfg``: no text tower, so no text model or tokenizer is needed); the embedding is
  ``image_embeds`` (= ``model.encode_image(x)``, unnormalised) or, for a timm tower, ``#pooler`` (the trunk's
  pooled output before the projection);
- the preprocessing is the transform ``open_clip.create_model_and_transforms`` returns for it
  (:class:`~featpipe.backbones.reference.OpenClipTransform`: ``preprocess_cfg`` on open_clip's defaults);
- default weights: the repository's checkpoint from the hub cache (:mod:`featpipe.backbones.hubcache`), read
  with ``torch.load(weights_only=True)`` or safetensors; its ``visual.`` keys are the tower's (the family drops
  the rest); identity ``hf:<repo>@<commit>``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import MappingProxyType

from featpipe.backbones import hubcache
from featpipe.backbones.reference import OpenClipTransform
from featpipe.backbones.spec import BackboneSpec, TextTower
from featpipe.core.errors import FeatpipeError, WeightsError
from featpipe.core.optional import require

SOURCE = "open_clip"
PREFIX = "open_clip"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's own preference

# microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 open_clip_config.json as published: a timm ViT-B/16 trunk
# (class token), a linear projection to 512; the text tower (zero-shot only: load_text_model) is PubMedBERT.
BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


# BiomedCLIP's tokenizer as open_clip's HFTokenizer runs it for this config (context_length 256, whitespace clean)
BIOMEDCLIP_TEXT = TextTower(hf_class="", padding="max_length", max_length=256, truncation=True, library="open_clip",
                            image_features="image_embeds", clean="whitespace")


def _require() -> None:
    require("open_clip", "2.24", extra="open_clip", why="open_clip: backbones and biomedclip", dist="open_clip_torch")


def visual(model_cfg: dict, device: str = "cpu"):
    """The image tower open_clip builds for ``model_cfg`` (random weights)."""
    import torch
    from open_clip.model import _build_vision_tower

    try:
        with torch.device(device):
            return _build_vision_tower(int(model_cfg["embed_dim"]), dict(model_cfg["vision_cfg"]),
                                       quick_gelu=bool(model_cfg.get("quick_gelu", False)), cast_dtype=None)
    except RuntimeError as exc:
        if device == "meta" and "meta" in str(exc):  # older timm cannot build on the meta device
            return visual(model_cfg)
        raise


def _preprocess_cfg(config: dict, tower) -> dict:
    """``preprocess_cfg`` as ``create_model`` settles it: open_clip's defaults, the config's entries, the tower's
    image size."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = merge_preprocess_dict(asdict(PreprocessCfg()), config.get("preprocess_cfg", {}))
    if getattr(tower, "image_size", None) is not None:
        cfg["size"] = tower.image_size
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def _blocks(tower) -> tuple[str, int, int, int]:
    """(block list module name, blocks, width, prefix tokens) of a timm or native ViT tower."""
    trunk = getattr(tower, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks"):
        return "trunk.blocks", len(trunk.blocks), int(trunk.num_features), int(getattr(trunk, "num_prefix_tokens", 1))
    tr = getattr(tower, "transformer", None)
    if tr is not None and hasattr(tr, "resblocks"):
        return "transformer.resblocks", len(tr.resblocks), int(tr.width), 1
    raise FeatpipeError(f"open_clip tower {type(tower).__name__} is not a ViT featpipe knows (timm trunk or "
                        "open_clip VisionTransformer)")


def make_spec_from(config: dict, name: str, repo: str) -> BackboneSpec:
    """The spec of the image tower an ``open_clip_config.json`` (``config``) describes, weights from ``repo``."""
    _require()
    model_cfg = config.get("model_cfg", config)
    tower = visual(model_cfg, device="meta")
    blocks, n, width, prefix = _blocks(tower)
    norm = "norm1" if blocks.startswith("trunk") else "ln_1"
    pre = OpenClipTransform(json.dumps(_preprocess_cfg(config, tower), sort_keys=True), f"hf-hub:{repo}")
    pooler = {"pooler": width} if blocks.startswith("trunk") else {}
    return BackboneSpec(
        name=name, family="open_clip", embed_dim=int(model_cfg["embed_dim"]), reference=pre,
        gradcam_layer=f"{blocks}.{n - 1}.{norm}", layers=MappingProxyType({f"{blocks}.{i}": width for i in range(n - 1)}),
        default_weights=repo, pretrained=f"hf-hub:{repo}", prefix_tokens=prefix,
        feature_dims=MappingProxyType(pooler), make=lambda: visual(model_cfg))


def _builtin(rest: str, name: str) -> BackboneSpec:
    """``open_clip:<architecture>/<pretrained tag>`` (``open_clip.list_pretrained()``): the built-in model config,
    the tag's preprocessing and ``quick_gelu``, weights from the tag's hub repository."""
    from open_clip.factory import get_model_config
    from open_clip.pretrained import get_pretrained_cfg

    arch, _, tag = rest.partition("/")
    cfg, model_cfg = get_pretrained_cfg(arch, tag), get_model_config(arch)
    if not cfg or model_cfg is None:
        raise FeatpipeError(f"unknown open_clip model '{rest}' (open_clip.list_pretrained() lists the "
                            "<architecture>/<tag> pairs)")
    if not cfg.get("hf_hub"):
        raise FeatpipeError(f"open_clip model '{rest}' has no Hugging Face hub weights; featpipe reads weights "
                            "from the hub cache (name an open_clip:hf-hub:<org>/<repo> instead)")
    if cfg.get("quick_gelu"):
        model_cfg["quick_gelu"] = True
    repo, _, file = cfg["hf_hub"].strip("/").rpartition("/") if cfg["hf_hub"].count("/") > 1 else (
        cfg["hf_hub"].strip("/"), "", "")
    pre = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    return replace(make_spec_from({"model_cfg": model_cfg, "preprocess_cfg": pre}, name, repo), pretrained=rest,
                   default_weights=repo + (f"/{file}" if file else ""))


def make_spec(rest: str, name: str) -> BackboneSpec:
    """``open_clip:hf-hub:<org>/<repo>`` (its ``open_clip_config.json`` from the hub cache, downloaded when online)
    or ``open_clip:<architecture>/<tag>`` (open_clip's built-in configs)."""
    if not rest.startswith("hf-hub:"):
        if rest.count("/") != 1:
            raise FeatpipeError(f"open_clip backbone '{rest}': name it open_clip:hf-hub:<org>/<repo> (a Hugging "
                                "Face repository with an open_clip_config.json) or open_clip:<architecture>/<tag>")
        _require()
        return _builtin(rest, name)
    if rest.count("/") != 1:
        raise FeatpipeError(f"open_clip backbone '{rest}': name it open_clip:hf-hub:<org>/<repo>")
    _require()
    repo = rest[len("hf-hub:"):]
    path = hubcache.fetch(repo, ["open_clip_config.json"], what=f"open_clip backbone {name}")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        raise WeightsError(f"{path} is not valid JSON") from None
    return make_spec_from(config, name, repo)


def _repo_files(spec: BackboneSpec) -> tuple[str, list[str]]:
    """(repository, checkpoint names in open_clip's order of preference) of the spec's default weights
    (``<org>/<repo>`` or, for a built-in tag with its own file name, ``<org>/<repo>/<file>``)."""
    parts = spec.default_weights.split("/")
    if len(parts) == 3:
        file = parts[2]
        safe = [file.rsplit(".", 1)[0] + ".safetensors"] if file.endswith((".bin", ".pth")) else []
        if file == WEIGHT_FILES[1]:
            safe = [WEIGHT_FILES[0]]
        return "/".join(parts[:2]), safe + [file]
    return spec.default_weights, list(WEIGHT_FILES)


def _hub_file(spec: BackboneSpec):
    repo, files = _repo_files(spec)
    return hubcache.fetch(repo, files, what=f"weights for {spec.name}")


def resolve_default(spec: BackboneSpec) -> tuple[str, str, str]:
    """(kind, source: the repository (portable), identity ``hf:<repo>@<commit>``) of the repository's open_clip
    checkpoint in the hub cache."""
    path = _hub_file(spec)
    repo = _repo_files(spec)[0]
    return "open_clip", spec.default_weights, f"hf:{repo}@{hubcache.commit_of(path)}"


def load(spec: BackboneSpec, kind: str, source: str, fit, read):
    """The tower with the repository's checkpoint (``kind`` open_clip; read as a plain state dict, ``visual.``
    keys kept by the family, strictly fitted); None for another file (featpipe's plain loader)."""
    if kind != "open_clip":
        return None
    net = spec.make()
    fit(net, read(_hub_file(spec)))
    return net


def load_text_model(spec: BackboneSpec, source: str):
    """(full open_clip model (image + text towers) in eval mode, tokenizer) of the repository ``source``, as
    ``open_clip.create_model("hf-hub:<repo>")`` builds it: the repository's ``open_clip_config.json``, its text
    model's ``config.json`` (``text_cfg.hf_model_name``, from the hub cache), the checkpoint strictly loaded; the
    tokenizer (Hugging Face) from the repository's own folder. The config's context length must be the one pinned
    in ``spec.text``."""
    _require()
    import open_clip
    import transformers
    from open_clip.model import CustomTextCLIP

    config_path = hubcache.fetch(source, ["open_clip_config.json"], what=f"{spec.name}'s text tower")
    try:
        model_cfg = json.loads(config_path.read_text())["model_cfg"]
    except (OSError, ValueError, KeyError):
        raise WeightsError(f"{config_path} is not an open_clip config (model_cfg)") from None
    text_cfg = dict(model_cfg.get("text_cfg", {}))
    if not text_cfg.get("hf_model_name"):
        raise WeightsError(f"{source}'s open_clip_config.json has no Hugging Face text model (text_cfg.hf_model_name)")
    if int(text_cfg.get("context_length", 0)) != spec.text.max_length:
        raise WeightsError(f"{source}'s open_clip_config.json says context_length {text_cfg.get('context_length')}, "
                           f"featpipe pins {spec.text.max_length} for {spec.name}: this is not the published model")
    bert = hubcache.fetch(text_cfg["hf_model_name"], ["config.json"], what=f"{spec.name}'s text model config")
    text_cfg.update(hf_model_name=str(bert.parent), hf_model_pretrained=False)  # built from its config, then loaded
    vision_cfg = dict(model_cfg["vision_cfg"], timm_model_pretrained=False)
    try:
        model = CustomTextCLIP(embed_dim=int(model_cfg["embed_dim"]), vision_cfg=vision_cfg, text_cfg=text_cfg,
                               quick_gelu=bool(model_cfg.get("quick_gelu", False)))
        open_clip.load_checkpoint(model, str(_hub_file(spec)), strict=True, weights_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(config_path.parent), local_files_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"cannot load {spec.name}'s text tower and tokenizer from {config_path.parent} "
                           f"({reason[:200]}): the snapshot needs the full checkpoint and its tokenizer files") from None
    return model.eval(), tokenizer
