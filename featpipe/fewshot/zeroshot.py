"""Zero-shot configurations (shots = 0): class prompts scored against the cached image embeddings.

The prompts file (``zeroshot.prompts``, YAML) holds one or more prompt **sets**; a set names every class with
its ``positive`` prompts and optionally ``negative`` ones (``"no pneumonia"``)::

    sets:
      - normal: {positive: ["a normal chest x-ray"], negative: ["a chest x-ray with pneumonia"]}
        pneumonia: {positive: ["a chest x-ray showing pneumonia"], negative: ["a normal chest x-ray"]}

Per class, the unit text embeddings of its positive prompts are averaged and re-normalised (likewise the
negative ones); an image's class logit is ``scale * (cos(image, positive) - cos(image, negative))`` (without
negatives: ``scale * cos(image, positive)``; the model's bias cancels), and its scores are the softmax over
classes. Those are scores that rank, not fitted probabilities (``calibrated = false``): the binary threshold is
chosen on the **whole val split** (nothing is labelled at k = 0, so ``val_policy`` is ``full``).

Each prompt set is one run (``seed`` = the set's index in the file), so a configuration's interval is over
prompt sets, the source of variation at k = 0. The image embedding is the features the backbone's text tower
names (``TextTower.image_features``: MedSigLIP's ``pooler``, BiomedCLIP's ``image_embeds``) from the feature
cache; its weights must be the text tower's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from featpipe.backbones.registry import get as get_backbone
from featpipe.core.errors import CacheError, ConfigError
from featpipe.core.names import canonical_params
from featpipe.data.splits import Splits
from featpipe.evaluation.record import Outputs, RunRecord, record_run
from featpipe.features.textcache import cached_text_embeddings

PromptSet = dict[str, dict[str, tuple[str, ...]]]  # class -> {"positive": (...), "negative": (...)}
# ``data`` below is a :class:`featpipe.fewshot.fit.CacheData` (the rows of one feature cache; fit.py uses this module)


def read_prompts(path: str | Path, classes: Sequence[str]) -> tuple[list[PromptSet], str]:
    """The prompt sets of ``path`` (every set names every class, at least one positive prompt each) and the
    sha256 of the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts file {path} not found: write one (see README, zero-shot) or set zeroshot.prompts")
    data = path.read_bytes()
    raw = yaml.safe_load(data) or {}
    sets = raw.get("sets") if isinstance(raw, dict) else None
    if not isinstance(sets, list) or not sets:
        raise ConfigError(f"{path}: expected 'sets:' with a list of prompt sets (class -> positive/negative prompts)")
    out = []
    for i, s in enumerate(sets):
        if not isinstance(s, dict) or set(s) != set(classes):
            got = sorted(s) if isinstance(s, dict) else type(s).__name__
            raise ConfigError(f"{path}: prompt set {i} must name exactly the classes {list(classes)}, got {got}")
        one = {}
        for c in classes:
            entry = s[c] if isinstance(s[c], dict) else {"positive": s[c]}
            unknown = set(entry) - {"positive", "negative"}
            pos, neg = entry.get("positive") or [], entry.get("negative") or []
            if unknown or not pos or isinstance(pos, str) or isinstance(neg, str):
                raise ConfigError(f"{path}: set {i}, class '{c}': give 'positive' (a list of prompts, at least one) "
                                  "and optionally 'negative' (a list)")
            one[c] = {"positive": tuple(map(str, pos)), "negative": tuple(map(str, neg))}
        out.append(one)
    return out, hashlib.sha256(data).hexdigest()


def class_vectors(emb: dict[str, np.ndarray], prompt_set: PromptSet, classes: Sequence[str]) -> np.ndarray:
    """(C, D): per class, the unit centre of its positive prompts minus that of its negative ones (if any)."""
    def centre(prompts):
        m = np.mean([emb[p] for p in prompts], axis=0)
        return m / max(np.linalg.norm(m), 1e-12)

    return np.stack([centre(prompt_set[c]["positive"])
                     - (centre(prompt_set[c]["negative"]) if prompt_set[c]["negative"] else 0.0) for c in classes])


def class_logits(X: np.ndarray, emb: dict[str, np.ndarray], prompt_set: PromptSet, classes: Sequence[str],
                 scale: float) -> np.ndarray:
    """(N, C) logits of images ``X`` for one prompt set (``emb``: prompt -> unit text embedding)."""
    Xn = np.asarray(X, dtype=np.float64)
    Xn = Xn / np.maximum(np.linalg.norm(Xn, axis=1, keepdims=True), 1e-12)
    return scale * Xn @ class_vectors(emb, prompt_set, classes).T


def _text(data, classes: Sequence[str], prompts_path, cache_dir):
    """(prompt sets, prompts file sha256, TextEmbeddings of every prompt, the text cache file, prompt -> row)."""
    sets, file_sha = read_prompts(prompts_path, classes)
    every = list(dict.fromkeys(p for s in sets for c in classes for k in ("positive", "negative") for p in s[c][k]))
    te, text_file, _ = cached_text_embeddings(cache_dir, data.backbone, every, weights=data.weights_request)
    if data.attrs.get("weights_id") and te.weights_id != data.attrs.get("weights_id"):
        raise CacheError(f"{data.path} was extracted with weights {data.attrs.get('weights_id')}, the text tower is "
                         f"{te.weights_id}: re-run 'featpipe extract --backbone {data.backbone}'")
    return sets, file_sha, te, text_file, dict(zip(every, te.embeddings))


def text_prior(data, classes: Sequence[str], *, prompts_path, cache_dir, scaler, pool_rows: np.ndarray,
               l2_normalize: bool) -> np.ndarray:
    """(C, D) weights of the zero-shot classifier (class vectors averaged over the prompt sets) written for the
    head's input ``(x - mean) / scale`` of a fixed ``scaler`` (a fitted StandardScaler or "passthrough"):
    ``W0 = logit_scale / r * class_vector * scale`` with ``r`` the mean norm of the pool rows (the cosine's
    denominator, taken as constant); the rest is a constant per class (the head's free bias)."""
    if l2_normalize or scaler is None:
        raise ConfigError("the text-initialised head needs heads.scaler pool, center or none and "
                          "heads.l2_normalize false (its text weights are written for that input)")
    sets, _, te, _, emb = _text(data, classes, prompts_path, cache_dir)
    vec = np.mean([class_vectors(emb, s, classes) for s in sets], axis=0)
    scale = np.ones(vec.shape[1]) if isinstance(scaler, str) or scaler.scale_ is None else scaler.scale_
    r = float(np.mean(np.linalg.norm(np.asarray(pool_rows, dtype=np.float64), axis=1)))
    return te.logit_scale / max(r, 1e-12) * vec * scale


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def zeroshot_runs(data, splits: Splits, *, prompts_path: str | Path, cache_dir: str | Path,
                  with_curves: bool = True) -> list[RunRecord]:
    """One run per prompt set of ``prompts_path`` on the val and test images of ``data`` (a feature cache of a
    backbone with a text tower, the image features its text tower names)."""
    spec = get_backbone(data.backbone)
    want = spec.text.image_features
    if data.attrs.get("features", spec.features) != want or data.layer:
        raise CacheError(f"{data.path} holds {data.layer or data.attrs.get('features')} features: zero-shot needs "
                         f"the image embedding ('{spec.name.split('#')[0]}', final layer, {want} features)")
    classes = list(splits.classes)
    sets, file_sha, te, text_file, emb = _text(data, classes, prompts_path, cache_dir)
    hp = {"prompts_sha256": file_sha, "prompt_sets": len(sets), "text_cache": text_file.name}
    rows = np.r_[data.val, data.test]
    records = []
    for i, s in enumerate(sets):
        proba = _softmax(class_logits(data.X[rows], emb, s, classes, te.logit_scale))
        key = {"dataset": splits.dataset, "backbone": data.backbone, "weights": data.weights,
               "weights_id": data.attrs.get("weights_id", ""), "layer": data.layer, "head": "zeroshot",
               "head_params": canonical_params(hp), "shots": 0, "seed": i, "split_sha256": splits.sha256}
        own = {"features": data.attrs.get("features", ""), "cv_used": False, "chosen_params": canonical_params({}),
               "prompts": json.dumps(s, sort_keys=True, separators=(",", ":"))}
        records.append(record_run(key, classes=classes, train_ids=[],
                                  val=Outputs(list(splits.val), data.y[data.val], proba[: data.val.size]),
                                  test=Outputs(list(splits.test), data.y[data.test], proba[data.val.size:]),
                                  val_policy="full", manifest_sha256=splits.manifest_sha256, columns=own,
                                  with_curves=with_curves, calibrated=False))
    return records
