"""Run identity: every file name and display name of a run comes from here.

- :func:`backbone_label` ``<backbone>[@<layer>][+<weights tag>]``: the backbone part of every name;
- :func:`cache_name` the feature cache ``<backbone>[@<layer>][+<weights tag>].h5``;
- :func:`head_model_path` a saved head ``<label>-<head>-k<k>-s<seed>-<dataset>-<params hash>.skops``;
- :func:`finetune_run_name` a fine-tuning run ``<dataset>-<backbone>[@<layer>]-<strategy>-k<k>-s<seed>``;
- :func:`finetune_model_stem` its model and training-curve files: the run name, ``-<hash of its identity>``;
- :func:`config_name` a configuration in the results table ``<dataset>/<label>/<head>/k<k>[/s<seed>]``;
- :func:`params_tag` the 8-hex hash of a configuration's head parameters (:func:`canonical_params`);
- :func:`run_name` the run's name of a saved model file (either file of the pair);
- :func:`short_part` any text (a class name, an image id) as a short file-name part: long ones end in a hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Mapping, Optional

HEAD_SUFFIX = ".skops"
FINETUNE_SUFFIX = ".safetensors"


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
    label = _safe(backbone_label(backbone, layer=layer, weights_tag=weights_tag))  # hf:owner/name: one file
    return Path(models_dir) / f"{label}-{head}-k{int(shots)}-s{int(seed)}-{dataset}-{params_tag(head_params)}{HEAD_SUFFIX}"


def finetune_run_name(dataset: str, backbone: str, strategy: str, shots: int, seed: int,
                      layer: Optional[str] = None) -> str:
    return _safe(f"{dataset}-{backbone_label(backbone, layer=layer)}-{strategy}-k{int(shots)}-s{int(seed)}")


def short_part(text: str, limit: int = 60) -> str:
    """``text`` as one file-name part: characters outside ``[A-Za-z0-9._-]`` become ``_``; longer than
    ``limit``, it is cut and ends in ``-<8 hex of sha256(text)>`` (distinct texts keep distinct names)."""
    part = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_.") or "x"
    if len(part) <= limit:
        return part
    return part[:limit - 9] + "-" + hashlib.sha256(str(text).encode()).hexdigest()[:8]


def finetune_model_stem(run: str, identity: Mapping) -> str:
    """``<run name>-<8-hex hash of identity>``: the stem of a fine-tuned model's files (``identity``: every
    setting that changes the model, so two configurations never share a file)."""
    return f"{run}-{params_tag(dict(identity))}"


def config_name(row: Mapping, *, with_seed: bool = False) -> str:
    """Readable, file-name-safe name of a configuration: ``dataset/backbone[@layer][+weights]/head/kK[/sS]``."""
    weights = row.get("weights")
    back = backbone_label(str(row["backbone"]), layer=row.get("layer") or None,
                          weights_tag=weights if weights and weights != "default" else None)
    name = f"{row['dataset']}/{back}/{row['head']}/k{int(row['shots'])}"
    return name + (f"/s{int(row['seed'])}" if with_seed else "")


def run_name(path: str | Path) -> str:
    """The run's name of a saved model: its model file's stem, from either file of the pair (``.skops``,
    ``.safetensors`` or ``.json``) or from a fine-tuned model's stem itself."""
    p = Path(path)
    return p.stem if p.suffix in (HEAD_SUFFIX, FINETUNE_SUFFIX, ".json") else p.name
