"""Saved models: model sidecars, and loading a saved model with its backbone rebuilt (run names:
:mod:`featpipe.core.names`).

Sidecars: every saved model is a model file plus ``<stem>.json`` beside it, sealed (``sidecar_sha256``,
:func:`featpipe.core.fileio.seal` / ``check_seal``) by the format's writer (:mod:`featpipe.heads.io` for skops
archives, :mod:`featpipe.finetune.checkpoint` for safetensors), which also hold each format's safety checks.
:func:`kind_of`, :func:`model_file` and :func:`read_sidecar` find and read either kind.

Rebuilding: :func:`rebuild_backbone` builds a saved head's backbone from what the user asked for at
extraction (the sidecar's ``weights_request``: ``default``, ``imagenet``, a file, a folder or a hub id),
never from the resolved source (an enum name or a cache path is not a request), and refuses weights whose
identity differs from the one the head was fitted on. :func:`load_model` loads either kind as a torch
model mapping normalised images to class logits: predict, gradcam and sanity-check load through it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from featpipe.core.errors import DataError
from featpipe.core.names import FINETUNE_SUFFIX, HEAD_SUFFIX

# kind -> (model file suffix, sidecar "kind" value, newest format this featpipe reads, how to remake it)
KINDS = {"head": (HEAD_SUFFIX, "featpipe-head", 1, "featpipe fit"),
         "finetune": (FINETUNE_SUFFIX, "featpipe-finetune", 1, "featpipe finetune")}


class SavedModelError(DataError):
    """A path that is not a featpipe saved model."""


# --------------------------------------------------------------------------- sidecars


def kind_of(path: str | Path) -> str:
    """``head`` or ``finetune`` from a model path (either file of the pair)."""
    p = Path(path)
    if p.suffix == HEAD_SUFFIX or (p.suffix == ".json" and p.with_suffix(HEAD_SUFFIX).is_file()):
        return "head"
    if p.suffix in (FINETUNE_SUFFIX, ".json") or p.with_name(p.name + FINETUNE_SUFFIX).is_file():
        return "finetune"
    raise SavedModelError(f"{p}: not a featpipe model (expected a saved head {HEAD_SUFFIX} or a fine-tuned "
                          f"{FINETUNE_SUFFIX}, with its .json beside it)")


def model_file(path: str | Path, kind: Optional[str] = None) -> Path:
    """The model file of a saved model named by either file or (fine-tuned) by its stem."""
    p = Path(path)
    kind = kind or kind_of(p)
    suffix = KINDS[kind][0]
    if p.suffix in (suffix, ".json"):
        return p.with_suffix(suffix)
    return p.with_name(p.name + suffix)


def sidecar_path(path: str | Path) -> Path:
    return model_file(path).with_suffix(".json")


def read_sidecar(path: str | Path, *, kind: Optional[str] = None) -> dict:
    """The sealed sidecar of a saved model of either kind (no model file opened): the formats' readers
    (:func:`featpipe.heads.io.read_meta`, :func:`featpipe.finetune.checkpoint.read_meta`) check its seal."""
    kind = kind or kind_of(path)
    if kind == "head":
        from featpipe.heads.io import read_meta
    else:
        from featpipe.finetune.checkpoint import read_meta
    return read_meta(model_file(path, kind))


# --------------------------------------------------------------------------- rebuilding


def weights_request(meta: Mapping) -> str:
    """What was asked for when the features were made: ``weights_request`` (older sidecars: ``weights``
    when it is a request, i.e. not a resolved torchvision enum name)."""
    req = meta.get("weights_request")
    if req:
        return str(req)
    w = str(meta.get("weights") or "default")
    return "default" if "_Weights." in w else w


def rebuild_backbone(meta: Mapping, *, device: str = "cpu"):
    """The backbone a saved head was fitted on, rebuilt from the sidecar's weights request and checked
    against it (weights identity, layer, preprocessing, embedding size) before any image is read."""
    from featpipe.backbones import build, get
    from featpipe.heads.io import check_compatible

    spec = get(meta["backbone"])
    layer = spec.resolve_layer(meta.get("layer") or None)
    model = build(spec, weights=weights_request(meta), layer=layer)
    check_compatible(meta, {"backbone": spec.name, "weights_id": model.weights_id, "layer": layer or "",
                            "preprocess": spec.preprocess.to_dict(), "embedding_dim": model.embed_dim},
                     what=f"the backbone rebuilt with weights '{weights_request(meta)}'")
    return model.to(device)


@dataclass
class LoadedModel:
    """A saved model as one torch model: normalised (B, 3, H, W) -> class logits (B, C), eval mode."""

    model: Any  # torch.nn.Module
    meta: dict  # the sidecar
    kind: str  # "head" | "finetune"
    path: Path  # the model file
    pipeline: Any = None  # the fitted sklearn pipeline of a saved head (None for fine-tuned models)
    features: Any = None  # the backbone FeatureModel (a head's, or the fine-tuned network's)

    @property
    def run(self) -> str:
        return self.path.stem

    @property
    def classes(self) -> list:
        return list(self.meta.get("classes") or [])

    @property
    def threshold(self) -> Optional[float]:
        return self.meta.get("threshold") if len(self.classes) == 2 else None

    @property
    def preprocess(self) -> dict:
        pre = self.meta.get("preprocess")
        if isinstance(pre, str):
            pre = json.loads(pre)
        if not pre:
            from featpipe.backbones import get

            pre = get(self.meta["backbone"]).preprocess.to_dict()
        return dict(pre)


def load_model(path: str | Path, *, device: str = "cpu", torch_head: bool = True) -> LoadedModel:
    """Load a saved head (its backbone rebuilt by :func:`rebuild_backbone`, the head as a differentiable
    :class:`~featpipe.heads.torch_twin.TorchHead` after it) or a fine-tuned model."""
    kind = kind_of(path)
    if kind == "head":
        from featpipe.heads.io import load_head

        saved = load_head(model_file(path, kind))
        features = rebuild_backbone(saved.meta, device=device)
        model = None
        if torch_head:
            from featpipe.heads.torch_twin import FrozenWithHead, torch_head as to_torch

            model = FrozenWithHead(features, to_torch(saved.pipeline)).eval()
        return LoadedModel(model, saved.meta, kind, saved.path, saved.pipeline, features)
    from featpipe.finetune.checkpoint import load_finetuned

    net, meta = load_finetuned(path, device=device)
    return LoadedModel(net.eval(), meta, kind, model_file(path, kind), None, net.features)
