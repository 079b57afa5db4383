"""Splits from train / val / test ids given in memory (the Python API's few-shot evaluation without a
``splits.json``): the k-shot subsets are drawn by :func:`featpipe.data.splits.make_splits`, as ``prepare``
draws them (nested in k, one image per patient per round, ``numpy.random.default_rng(seed)``), so the same
ids, labels, patients and seeds give the same subsets as a prepared data set with that split."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError
from featpipe.data.splits import Splits, make_splits
from featpipe.params.config import SplitParams


def _parts(train, val, test) -> dict[str, list[str]]:
    parts = {"train": [str(i) for i in train], "val": [str(i) for i in (() if val is None else val)],
             "test": [str(i) for i in test]}
    seen: dict[str, str] = {}
    for name, ids in parts.items():
        if len(set(ids)) != len(ids):
            raise DataError(f"{name} names an id more than once")
        for i in ids:
            other = seen.setdefault(i, name)
            if other != name:
                raise DataError(f"id {i!r} is in both {other} and {name}: train, val and test must not overlap")
    return parts


def splits_from_ids(ids: Sequence[str], labels: Sequence[int], classes: Sequence[str], *, train, test, val=None,
                    patients: Sequence[str] | None = None, seeds: Sequence[int], shots: Sequence[int],
                    val_policy: str = "full", dataset: str = "memory") -> Splits:
    """A :class:`~featpipe.data.splits.Splits` of the given train / val / test ids (``val`` may be empty: the
    threshold is then 0.5) with k-shot subsets for ``seeds`` x ``shots``. ``ids``/``labels``/``patients``
    describe every image (``patients`` default: each image its own patient); a patient in two of
    train / val / test, an unknown id, or a class with fewer than k training images is a one-line DataError."""
    parts = _parts(train, val, test)
    if not parts["train"] or not parts["test"]:
        raise DataError("few-shot evaluation needs train and test ids")
    pos = {str(k): i for i, k in enumerate(ids)}
    rows, source = [], []
    for name, part in parts.items():
        for i in part:
            if i not in pos:
                raise DataError(f"{name} id {i!r} is not among the features' ids")
            rows.append(pos[i])
            source.append(name)
    rows = np.asarray(rows, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)[rows]
    manifest = pd.DataFrame({
        "id": [str(ids[r]) for r in rows], "path": "", "label": lab, "label_name": [classes[c] for c in lab],
        "patient_id": [str(patients[r]) for r in rows] if patients is not None else [str(ids[r]) for r in rows],
        "source_split": source, "sha256": [f"id:{ids[r]}" for r in rows]})
    msha = hashlib.sha256(manifest.to_csv(index=False, lineterminator="\n").encode()).hexdigest()
    params = SplitParams(test_fraction=0.0, val_fraction=0.0, min_source_val_per_class=0, seeds=tuple(seeds),
                         shots=tuple(shots), val_policy=val_policy)
    obj = make_splits(manifest, classes, params, dataset=dataset, manifest_sha256=msha, keep_conflicting=True)
    if obj["excluded"]:
        e = obj["excluded"][0]
        raise DataError(f"image {e['id']!r} cannot be in {e['from']}: {e['reason']} (give each patient's images "
                        "to one of train, val and test)")
    data = (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
    fewshot = {int(s): {int(k): list(v) for k, v in per_k.items()} for s, per_k in obj["fewshot"].items()}
    return Splits(dataset, list(classes), msha, list(obj["train"]), list(obj["val"]), list(obj["test"]), fewshot,
                  hashlib.sha256(data).hexdigest(), obj)
