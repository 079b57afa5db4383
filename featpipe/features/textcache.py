"""Text embeddings cached like image embeddings: valid by content, provenance beside them.

``<cache_dir>/text/<backbone>-<key>.npz`` holds the unit text embeddings of a list of prompts, the model's
logit scale and bias, and a JSON ``provenance`` record: backbone, weights identity, the pinned tokenizer
settings, the model class, the prompts themselves and featpipe's version. ``key`` is the sha256 of that record
(without the version), so other prompts, weights or tokenizer settings are another file, never a stale reuse;
a file whose provenance does not match its name is recomputed. Written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from featpipe.backbones.text import TextEmbeddings, embed_prompts, text_spec
from featpipe.backbones.weights import resolve
from featpipe.core.fileio import atomic_write
from featpipe.core.versions import __version__


def provenance(backbone: str, prompts: Sequence[str], *, weights: str = "default") -> dict:
    spec = text_spec(backbone)
    return {"backbone": spec.name, "weights_id": resolve(spec, weights).identity,
            "model_class": spec.text.hf_class or spec.text.library, "tokenizer": spec.text.provenance(), "features": spec.features, "prompts": list(prompts)}


def text_cache_path(cache_dir: str | Path, prov: dict) -> Path:
    key = hashlib.sha256(json.dumps(prov, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "text" / f"{prov['backbone']}-{key}.npz"


def cached_text_embeddings(cache_dir: str | Path, backbone: str, prompts: Sequence[str], *,
                           weights: str = "default") -> tuple[TextEmbeddings, Path, bool]:
    """(embeddings, file, read from the cache?) of ``prompts``: read when a file of the same provenance exists,
    else computed by the text tower and written."""
    prov = provenance(backbone, prompts, weights=weights)
    path = text_cache_path(cache_dir, prov)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["provenance"]))
            if {k: v for k, v in stored.items() if k != "featpipe_version"} == prov:
                return (TextEmbeddings(tuple(prompts), z["embeddings"], float(z["logit_scale"]), float(z["logit_bias"]),
                                       prov["weights_id"]), path, True)
    te = embed_prompts(backbone, prompts, weights=weights)
    buf = io.BytesIO()
    np.savez(buf, embeddings=te.embeddings, logit_scale=te.logit_scale, logit_bias=te.logit_bias,
             provenance=json.dumps(prov | {"featpipe_version": __version__}, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())
    return te, path, False
