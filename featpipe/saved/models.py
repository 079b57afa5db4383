"""Run identity and saved models: the one place that names runs, writes and reads model sidecars, and
rebuilds a saved model's backbone.

Names (every file name and display name of a run comes from here):

- :func:`backbone_label` ``<backbone>[@<layer>][+<weights tag>]``: the backbone part of every name;
- :func:`cache_name` the feature cache ``<backbone>[@<layer>][+<weights tag>].h5``;
- :func:`head_model_path` a saved head ``<label>-<head>-k<k>-s<seed>-<dataset>-<params hash>.skops``;
- :func:`finetune_run_name` a fine-tuning run ``<dataset>-<backbone>[@<layer>]-<strategy>-k<k>-s<seed>``;
- :func:`config_name` a configuration in the results table ``<dataset>/<label>/<head>/k<k>[/s<seed>]``;
- :func:`params_tag` the 8-hex hash of a configuration's head parameters.

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

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from featpipe.core.errors import DataError

HEAD_SUFFIX = ".skops"
FINETUNE_SUFFIX = ".safetensors"
# kind -> (model file suffix, sidecar "kind" value, newest format this featpipe reads, how to remake it)
KINDS = {"head": (HEAD_SUFFIX, "featpipe-head", 1, "featpipe fit"),
         "finetune": (FINETUNE_SUFFIX, "featpipe-finetune", 1, "featpipe finetune")}


class SavedModelError(DataError):
    """A path that is not a featpipe saved model."""


# --------------------------------------------------------------------------- names


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+=-]", "_", name)


def backbone_label(backbone: str, *, layer: Optional[str] = None, weights_tag: Optional[str] = None) -> str:
    """``<backbone>[@<layer>][+<weights tag>]`` (no tag for the backbone's default weights)."""
    return backbone + (f"@{layer}" if layer else "") + (f"+{weights_tag}" if weights_tag else "")


def cache_name(backbone: str, *, layer: Optional[str] = None, weights_tag: Optional[str] = None) -> str:
    """The feature cache file of a (backbone, layer, weights): ``<backbone>[@<layer>][+<tag>].h5``."""
    return _safe(backbone_label(backbone, layer=layer, weights_tag=weights_tag)) + ".h5"


def _jsonable(x):
    if hasattr(x, "item") and not hasattr(x, "__len__"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (tuple, set)):
        return list(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def canonical_params(params: Mapping | str | None) -> str:
    """Head parameters as canonical JSON (sorted keys, no spaces): the results key's ``head_params``."""
    if params is None:
        return "{}"
    if isinstance(params, str):
        params = json.loads(params) if params.strip() else {}
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=_jsonable)


def params_tag(head_params: Mapping | str | None) -> str:
    return hashlib.sha256(canonical_params(head_params).encode()).hexdigest()[:8]


def head_model_path(models_dir: str | Path, *, backbone: str, layer: Optional[str], weights_tag: Optional[str],
                    head: str, shots: int, seed: int, dataset: str, head_params: Mapping) -> Path:
    label = backbone_label(backbone, layer=layer, weights_tag=weights_tag)
    return Path(models_dir) / f"{label}-{head}-k{int(shots)}-s{int(seed)}-{dataset}-{params_tag(head_params)}{HEAD_SUFFIX}"


def finetune_run_name(dataset: str, backbone: str, strategy: str, shots: int, seed: int,
                      layer: Optional[str] = None) -> str:
    return f"{dataset}-{backbone_label(backbone, layer=layer)}-{strategy}-k{int(shots)}-s{int(seed)}"


def config_name(row: Mapping, *, with_seed: bool = False) -> str:
    """Readable, file-name-safe name of a configuration: ``dataset/backbone[@layer][+weights]/head/kK[/sS]``."""
    weights = row.get("weights")
    back = backbone_label(str(row["backbone"]), layer=row.get("layer") or None,
                          weights_tag=weights if weights and weights != "default" else None)
    name = f"{row['dataset']}/{back}/{row['head']}/k{int(row['shots'])}"
    return name + (f"/s{int(row['seed'])}" if with_seed else "")


def run_name(path: str | Path) -> str:
    """The run's name of a saved model: its file's stem (either file of the pair)."""
    return model_file(path).stem


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
    from featpipe.backbones.model import build
    from featpipe.backbones.registry import get
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
            from featpipe.backbones.registry import get

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
