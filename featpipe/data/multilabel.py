"""Multi-label tasks: several binary label columns per image (CheXpert's 14 observations, or any list).

The label cells of a CSV (``data.csv.labels``) are read with a stated policy:

- ``1`` positive, ``0`` negative;
- ``-1`` (uncertain): ``data.csv.labels_uncertain`` per label, else its ``default`` (default ``zeros``):
  ``zeros`` = negative, ``ones`` = positive, ``ignore`` = unknown (CheXpert's U-Zeros / U-Ones / U-Ignore);
- blank (not mentioned): ``data.csv.labels_blank``: ``negative`` (CheXpert's convention) or ``ignore``.

An unknown label (ignored) is left out of that label's fitting, threshold and scores, never counted as a negative.
The manifest carries one column ``y[<label>]`` per label (``1``, ``0``, or empty for unknown); its ``label_name`` is
``finding`` when any label is positive, else ``no finding`` (what the train/val/test draw stratifies on; patient
grouping is unchanged). ``splits.json`` carries the label matrix of the split's images (``multilabel.matrix``: one
string per image, ``1``/``0``/``.`` per label in ``multilabel.labels`` order), so fitting reads it with the split
hash that every row records.

**k-shot sampling** (:func:`draw_kshot`): for each k (ascending, nested: the k-shot set is inside the next one),
labels are taken from the rarest to the most common (positives in the pool); while a label has fewer than k
positives in the set, the next image of the seeded dealing order (patients shuffled, one image per patient per
round, as single-label dealing) that is positive for it is added; then the same for negatives. So every label has at
least k positives and k negatives where the pool has them (images added for one label count for the others: the
greedy convention of few-shot multi-label benchmarks, e.g. MedFMC); a label with fewer in the pool gets all it has
(capped) and the achieved counts of every (seed, k) are recorded (``multilabel.achieved``).
With ``split.shot_unit: patient`` the unit added is a patient (all its images in the pool) and counts are patients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError

CHEXPERT_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                   "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                   "Fracture", "Support Devices")
FINDING, NO_FINDING = "finding", "no finding"
UNKNOWN = -1  # an ignored label in a label matrix (int8)
CHARS = {1: "1", 0: "0", UNKNOWN: "."}


def label_names(labels: Sequence[str]) -> list[str]:
    """``data.csv.labels`` with ``chexpert`` expanded to CheXpert's 14 observations."""
    out: list[str] = []
    for n in labels:
        out += list(CHEXPERT_LABELS) if n == "chexpert" else [n]
    return list(dict.fromkeys(out))


def column(label: str) -> str:
    """The manifest column of ``label``: ``y[<label>]``."""
    return f"y[{label}]"


def policy_of(uncertain: dict, blank: str, labels: Sequence[str]) -> dict:
    """{label: {"uncertain": zeros|ones|ignore, "blank": negative|ignore}}: the stated policy, per label."""
    default = uncertain.get("default", "zeros")
    return {n: {"uncertain": uncertain.get(n, default), "blank": blank} for n in labels}


def cell(value: str | None, label: str, policy: dict) -> tuple[int, str | None]:
    """One CSV cell -> (1 | 0 | UNKNOWN, reject reason or None) under ``policy`` (one label's)."""
    text = (value or "").strip()
    if text == "":
        return (0 if policy["blank"] == "negative" else UNKNOWN), None
    try:
        v = float(text)
    except ValueError:
        return UNKNOWN, f"bad label {text!r} in column {label} (expected 1, 0, -1 or blank)"
    if v in (0.0, 1.0):
        return int(v), None
    if v == -1:
        return {"zeros": 0, "ones": 1, "ignore": UNKNOWN}[policy["uncertain"]], None
    return UNKNOWN, f"bad label {text!r} in column {label} (expected 1, 0, -1 or blank)"


def finding_name(values: Sequence[int]) -> str:
    return FINDING if any(v == 1 for v in values) else NO_FINDING


def manifest_matrix(manifest: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    """(N, L) int8 of the manifest's ``y[<label>]`` columns (empty = UNKNOWN)."""
    missing = [column(n) for n in labels if column(n) not in manifest.columns]
    if missing:
        raise DataError(f"the manifest has no column {missing[0]}: rerun 'featpipe prepare'")
    out = np.full((len(manifest), len(labels)), UNKNOWN, dtype=np.int8)
    for j, n in enumerate(labels):
        v = pd.to_numeric(manifest[column(n)].astype(str).replace("", np.nan), errors="coerce")
        known = v.notna().to_numpy()
        out[known, j] = v.to_numpy()[known].astype(np.int8)
    return out


def with_columns(manifest: pd.DataFrame, records, labels: Sequence[str]) -> pd.DataFrame:
    """``manifest`` with one column ``y[<label>]`` per label after its own (``1``, ``0``, empty = unknown), from the
    source records' label vectors (``Record.labels``)."""
    by_id = {r.id: r.labels for r in records if r.labels is not None}
    out = manifest.copy()
    for j, n in enumerate(labels):
        out[column(n)] = ["" if by_id[i][j] < 0 else str(by_id[i][j]) for i in out["id"].astype(str)]
    return out


def encode(row: np.ndarray) -> str:
    return "".join(CHARS[int(v)] for v in row)


def decode(text: str) -> list[int]:
    return [1 if c == "1" else 0 if c == "0" else UNKNOWN for c in text]


def counts(Y: np.ndarray, labels: Sequence[str]) -> dict:
    """{label: [positives, negatives, unknown]} of the rows of ``Y``."""
    return {n: [int((Y[:, j] == 1).sum()), int((Y[:, j] == 0).sum()), int((Y[:, j] == UNKNOWN).sum())]
            for j, n in enumerate(labels)}


def _dealing(rows: np.ndarray, groups: np.ndarray, rng: np.random.Generator, unit: str) -> list[list[int]]:
    """The pool's units in a seeded order: patients shuffled; ``image``: one image per patient per round (each a
    unit of one row), ``patient``: each patient's rows as one unit."""
    by_group: dict[int, list[int]] = {}
    for r in rows:
        by_group.setdefault(int(groups[r]), []).append(int(r))
    keys = sorted(by_group)
    decks = [[by_group[keys[j]][i] for i in rng.permutation(len(by_group[keys[j]]))] for j in rng.permutation(len(keys))]
    if unit == "patient":
        return [sorted(d) for d in decks]
    return [[d[i]] for i in range(max((len(d) for d in decks), default=0)) for d in decks if i < len(d)]


def draw_kshot(rows: np.ndarray, Y: np.ndarray, groups: np.ndarray, ids: np.ndarray, shots: Sequence[int],
               rng: np.random.Generator, unit: str = "image") -> tuple[dict, dict]:
    """Nested greedy k-shot sets of the pool ``rows`` (see the module text): ({k: sorted ids}, {k: {label:
    [positives, negatives]}} achieved; with ``unit: patient`` the counts are of patients)."""
    units = _dealing(rows, groups, rng, unit)
    unit_y = [Y[u] for u in units]
    has = {v: np.array([[bool((uy[:, j] == v).any()) for j in range(Y.shape[1])] for uy in unit_y], dtype=bool)
           .reshape(len(units), Y.shape[1]) for v in (1, 0)}
    order = np.argsort(has[1].sum(axis=0), kind="stable")  # rarest label first
    taken = np.zeros(len(units), dtype=bool)
    have = {v: np.zeros(Y.shape[1], dtype=np.int64) for v in (1, 0)}
    out, achieved = {}, {}
    for k in sorted(set(int(k) for k in shots)):
        for v in (1, 0):
            for j in order:
                for u in np.flatnonzero(has[v][:, j] & ~taken):
                    if have[v][j] >= k:
                        break
                    taken[u] = True
                    for w in (1, 0):
                        have[w] += has[w][u]
        out[str(k)] = sorted(str(ids[r]) for u in np.flatnonzero(taken) for r in units[u])
        achieved[str(k)] = {}
        for j in range(Y.shape[1]):
            achieved[str(k)][j] = [int(have[1][j]), int(have[0][j])]
    return out, achieved


def _pool_counts(rows: np.ndarray, Y: np.ndarray, groups: np.ndarray, unit: str) -> np.ndarray:
    """(L, 2): positives and negatives the pool can give per label (images, or patients with ``unit: patient``)."""
    out = np.zeros((Y.shape[1], 2), dtype=np.int64)
    for j in range(Y.shape[1]):
        for c, v in enumerate((1, 0)):
            hit = rows[Y[rows, j] == v]
            out[j, c] = len(np.unique(groups[hit])) if unit == "patient" else len(hit)
    return out


def kshot_sets(rows: np.ndarray, Y: np.ndarray, groups: np.ndarray, ids: np.ndarray, labels: Sequence[str], *,
               shots: Sequence[int], seeds: Sequence[int], unit: str, policy: str, stream: int | None = None
               ) -> tuple[dict, dict, dict]:
    """({seed: {k: ids}}, {seed: {k: {label: [pos, neg]}}}, capped {k: {label: "positives 3, negatives 40"}}) for
    every seed; ``policy`` ``error`` (``split.shots_policy``) refuses a k that a label's pool cannot give."""
    pool = _pool_counts(rows, Y, groups, unit)
    capped: dict = {}
    for k in shots:
        short = {labels[j]: _short_text(pool[j], k) for j in range(len(labels)) if (pool[j] < k).any()}
        if short and policy == "error" and stream is None:
            name, why = next(iter(short.items()))
            raise DataError(f"{k}-shot multi-label sets need {k} positive and {k} negative training {unit}s of "
                            f"label '{name}', which has {why}: lower split.shots or set split.shots_policy=cap")
        if short:
            capped[str(k)] = short
    sets, achieved = {}, {}
    for seed in seeds:
        rng = np.random.default_rng(seed if stream is None else [seed, stream])
        s, a = draw_kshot(rows, Y, groups, ids, shots, rng, unit)
        sets[str(seed)] = s
        achieved[str(seed)] = {k: {labels[j]: v for j, v in per.items()} for k, per in a.items()}
    return sets, achieved, capped


def _short_text(pool_row: np.ndarray, k: int) -> str:
    return ", ".join(f"{n} {what}" for n, what in zip(pool_row.tolist(), ("positives", "negatives")) if n < k)


def block(manifest: pd.DataFrame, labels: Sequence[str], parts: dict, policy: dict) -> dict:
    """The splits file's ``multilabel`` section without the k-shot fields: labels, policy, per-part counts
    ``[positives, negatives, unknown]`` and the label matrix of the split's images."""
    Y = manifest_matrix(manifest, labels)
    ids = manifest["id"].to_numpy(dtype=str)
    used = np.unique(np.concatenate([np.asarray(r, dtype=int) for r in parts.values()]))
    return {"labels": list(labels), "policy": policy,
            "counts": {p: counts(Y[np.asarray(r, dtype=int)], labels) for p, r in parts.items()},
            "matrix": {str(ids[r]): encode(Y[r]) for r in used}}


def capped_lines(capped: dict) -> list[str]:
    """One line per capped k of a multi-label split, as prepare states it."""
    return [f"{k}-shot multi-label sets capped: " + "; ".join(f"{n} has {why} in train (all used)"
                                                          for n, why in short.items())
            for k, short in sorted(capped.items(), key=lambda x: int(x[0]))]


def summary_lines(section: dict) -> list[str]:
    """What prepare says about a multi-label split: the labels and policy, positives per part, capping."""
    labels, pol = section["labels"], section["policy"]
    rules = sorted({f"-1 = {p['uncertain']}, blank = {p['blank']}" for p in pol.values()})
    out = [f"multi-label task: {len(labels)} labels ({'; '.join(rules)})"]
    for part in ("train", "val", "test"):
        c = section["counts"][part]
        out.append(f"  {part:5s} positives: " + ", ".join(f"{n} {c[n][0]}" for n in labels))
    out += capped_lines(section.get("capped", {}))
    return out


def kshot_text(achieved: dict) -> str:
    """``{label: [pos, neg]}`` -> ``"Atelectasis=5/12; Edema=0/17"`` (positives/negatives in a k-shot set)."""
    return "; ".join(f"{n}={p}/{q}" for n, (p, q) in achieved.items())


def split_section(manifest: pd.DataFrame, names: list[str], policy: dict, parts: dict, groups: np.ndarray,
                  ids: np.ndarray, params, *, val_stream: int) -> tuple[dict, dict]:
    """(fewshot, extra fields) of a multi-label split (``params``: the ``split`` section): the greedy per-label
    k-shot sets of :func:`kshot_sets`, the ``multilabel`` section and, under ``val_policy: matched``, ``valshot``
    drawn the same way from val (its own random stream ``[seed, val_stream]``)."""
    Y = manifest_matrix(manifest, names)
    section = block(manifest, names, parts, policy)
    kw = dict(shots=params.shots, seeds=params.seeds, unit=params.shot_unit, policy=params.shots_policy)
    fewshot, achieved, capped = kshot_sets(parts["train"], Y, groups, ids, names, **kw)
    section |= {"achieved": achieved, "capped": capped,
                "rule": "per label, rarest first: at least k positives and k negatives (all when fewer), nested in k"}
    extra = {"multilabel": section}
    if params.val_policy == "matched":
        extra["valshot"] = kshot_sets(parts["val"], Y, groups, ids, names, **kw, stream=val_stream)[0]
    return fewshot, extra


def map_vectors(records, own: Sequence[str], label_map: dict, labels: Sequence[str], name: str) -> None:
    """An external set's label vectors (over its columns ``own``) moved onto the study's ``labels`` in place:
    column ``c`` -> ``label_map[c]`` (without a map: ``c`` when it is a study label; others are dropped); a study
    label no column maps to is UNKNOWN; ``label_name`` follows (finding / no finding). DataError when the map names
    a label the study lacks or no column maps onto a study label."""
    labels = list(labels)
    target = {}
    for j, c in enumerate(own):
        t = label_map.get(c) if label_map else (c if c in labels else None)
        if t is not None and t not in labels:
            raise DataError(f"evaluate.external[{name}].label_map maps '{c}' to '{t}', which is not a study label "
                            f"({', '.join(labels)})")
        if t is not None:
            target[labels.index(t)] = j
    if not target:
        raise DataError(f"external set '{name}': none of its label columns ({', '.join(own)}) maps onto the study's "
                        f"labels: set evaluate.external[{name}].label_map")
    for r in records:
        if r.labels is None:
            continue
        r.labels = tuple(r.labels[target[i]] if i in target else UNKNOWN for i in range(len(labels)))
        if r.reject is None:
            r.label_name = finding_name(r.labels)
