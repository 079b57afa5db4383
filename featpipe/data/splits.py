"""One split file that every stage reads: train / val / test and nested k-shot subsets per seed.

Images are grouped before anything is drawn: two images share a group when they share a patient id or
their bytes (sha256), so neither a patient nor a duplicated file ever straddles train, val and test.
A data set's own test split is kept; val comes from the data set when it is big enough, otherwise it is
drawn from train. Draws are stratified by class and grouped, from ``numpy.random.default_rng(seed)``.

k-shot subsets: for one seed, each class's train groups are put in a random order and their images dealt
round-robin (one image per patient while patients last); the k-shot subset is the first k images, so the
5-shot subset is inside the 10-shot subset (nested), and learning curves compare like with like. With
``split.shot_unit: patient`` a shot is a patient (a group): each class's groups are put in a random order and the
k-shot subset is every image of that class of the first k groups (MedFMC's definition; nested the same way).

``split.val_policy: matched`` also draws, per seed and k, a val subset of k images per class (``valshot``,
nested the same way, from val only, with its own random stream): fitting then chooses thresholds, models
and early-stopping epochs on it (:meth:`Splits.val_for`), as a user with k labelled images per class would.

A multi-label task (``labels``: ``data.csv.labels``) draws its k-shot (and matched val) sets per label instead,
greedily, at least k positives and k negatives per label (:mod:`featpipe.data.multilabel`), and records the label
matrix, the policy and the achieved counts under ``multilabel``.

Byte-identical images (same sha256) carrying different labels (a multi-label task: label vectors) are excluded from every split and listed
under ``excluded`` with the reason, unless ``keep_conflicting`` is set (``data.keep_conflicting``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError
from featpipe.core.fileio import atomic_write
from featpipe.data import fractions, multilabel
from featpipe.params.config import SplitParams

FORMAT = 1


@dataclass(frozen=True)
class Splits:
    dataset: str
    classes: list[str]
    manifest_sha256: str
    train: list[str]
    val: list[str]
    test: list[str]
    fewshot: dict[int, dict[int, list[str]]]
    sha256: str  # of the split file's bytes: the "split hash" in every result row
    raw: dict

    @property
    def val_policy(self) -> str:
        return str(self.raw.get("params", {}).get("val_policy", "full"))

    def capped(self, k: int) -> str:
        """How the ``k``-shot subsets were capped to the class size (``split.shots_policy: cap``):
        ``"normal=150"`` (each short class and the images it has, all used), "" when every class has k.
        Multi-label: ``"Edema: positives 3"`` per short label."""
        if self.labels:
            short = self.raw["multilabel"].get("capped", {}).get(str(int(k)), {})
            return "; ".join(f"{n}: {why}" for n, why in short.items())
        return capped_text(self.raw.get("capped", {}).get(str(int(k)), {}))

    @property
    def labels(self) -> list[str]:
        """The labels of a multi-label task (``multilabel.labels``); [] for a single-label one."""
        return list(self.raw.get("multilabel", {}).get("labels", []))

    def label_matrix(self, ids) -> np.ndarray:
        """(len(ids), L) int8 labels of a multi-label task: 1, 0, or -1 (unknown: ignored for that label)."""
        m = self.raw["multilabel"]["matrix"]
        try:
            return np.array([multilabel.decode(m[str(i)]) for i in ids], dtype=np.int8).reshape(len(ids), len(self.labels))
        except KeyError as exc:
            raise DataError(f"image {exc.args[0]!r} has no labels in the splits file: rerun 'featpipe prepare'") from None

    def achieved(self, seed: int, k: int) -> dict:
        """{label: [positives, negatives]} of the multi-label k-shot set of (seed, k)."""
        return dict(self.raw["multilabel"]["achieved"][str(seed)][str(k)])

    def subset_keys(self) -> list[int]:
        """The keys of the subsets every seed has (k shots, or a fraction's subset size), ascending."""
        keys = [set(per_k) for per_k in self.fewshot.values()]
        return sorted(set.intersection(*keys)) if keys else []

    def fraction(self, k: int) -> float | None:
        """The training-set fraction of the subsets keyed ``k`` (``split.fractions``); None for k shots."""
        p = self.raw.get("fractions", {}).get(str(int(k)))
        return float(p["fraction"]) if p else None

    def images_per_class(self, k: int) -> str:
        """Images per class of a fraction's subsets (``"normal=30 pneumonia=70"``); "" for k shots."""
        p = self.raw.get("fractions", {}).get(str(int(k)))
        return fractions.images_text(p["per_class"]) if p else ""

    def val_for(self, seed: int, k: int) -> list[str]:
        """The val ids that thresholds, model selection and early stopping use for (seed, k): the whole
        val split under ``val_policy: full``, the nested k-per-class val subset under ``matched``."""
        if self.val_policy != "matched":
            return self.val
        try:
            return list(self.raw["valshot"][str(seed)][str(k)])
        except KeyError:
            raise DataError(f"no matched val subset for seed {seed}, k={k} in the splits file: "
                            "rerun 'featpipe prepare'") from None

    def shots(self, seed: int, k: int) -> list[str]:
        try:
            return self.fewshot[seed][k]
        except KeyError:
            seeds = sorted(self.fewshot)
            ks = sorted(self.fewshot[seeds[0]]) if seeds else []
            raise DataError(f"no {k}-shot subset for seed {seed} in the splits file (seeds {seeds}, shots {ks}): "
                            f"add them to split.seeds / split.shots and rerun 'featpipe prepare'") from None


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def groups_of(manifest: pd.DataFrame) -> np.ndarray:
    """Group number per row: rows sharing a patient id or a sha256 are one group."""
    uf = _UnionFind(len(manifest))
    for col in ("patient_id", "sha256"):
        first: dict[str, int] = {}
        for i, key in enumerate(manifest[col].tolist()):
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    return np.array([uf.find(i) for i in range(len(manifest))])


def _draw(rows: np.ndarray, frac: float, labels: np.ndarray, groups: np.ndarray, n_classes: int,
          rng: np.random.Generator) -> np.ndarray:
    """Rows (a subset of ``rows``) of whole groups holding about ``frac`` of each class's images."""
    if frac <= 0 or len(rows) == 0:
        return np.array([], dtype=int)
    by_group: dict[int, list[int]] = {}
    for r in rows:
        by_group.setdefault(int(groups[r]), []).append(int(r))
    stratum: dict[int, list[int]] = {c: [] for c in range(n_classes)}
    for g in sorted(by_group):
        counts = np.bincount(labels[by_group[g]], minlength=n_classes)
        stratum[int(np.argmax(counts))].append(g)  # majority class; ties go to the lower class index
    chosen: list[int] = []
    for c in range(n_classes):
        gs = stratum[c]
        n = sum(len(by_group[g]) for g in gs)
        target = int(round(frac * n))
        if target == 0 and len(gs) >= 2:
            target = 1
        taken = 0
        for j in rng.permutation(len(gs)):
            if taken >= target:
                break
            chosen.extend(by_group[gs[j]])
            taken += len(by_group[gs[j]])
    return np.array(sorted(chosen), dtype=int)


def _fewshot(train_rows: np.ndarray, labels: np.ndarray, groups: np.ndarray, ids: np.ndarray, classes: Sequence[str],
             params: SplitParams) -> tuple[dict, dict, dict]:
    fewshot: dict[str, dict[str, list[str]]] = {}
    capped: dict[str, dict[str, int]] = {}
    unit = "patients" if params.shot_unit == "patient" else "images"
    counts = {c: _units(train_rows[labels[train_rows] == c], groups, params.shot_unit) for c in range(len(classes))}
    for k in params.shots:
        if k < 1:
            raise DataError(f"bad value for 'split.shots': {k} (shots are {unit} per class, at least 1)")
        short = {classes[c]: n for c, n in counts.items() if n < k}
        if short and params.shots_policy == "error":
            name, n = next(iter(short.items()))
            raise DataError(f"{k}-shot subsets need {k} training {unit} of class '{name}', which has {n}: "
                            f"lower split.shots or set split.shots_policy=cap")
        if short:
            capped[str(k)] = short
    planned = fractions.plan(params.fractions, counts, classes) if params.fractions else {}
    for seed in params.seeds:
        rng = np.random.default_rng(seed)
        if params.shot_unit == "patient":  # k patients per class with all their images (no fractions: refused)
            fewshot[str(seed)] = _subsets(train_rows, labels, groups, ids, len(classes), rng, params)
            continue
        order = _deal(train_rows, labels, groups, ids, len(classes), rng)
        fewshot[str(seed)] = {str(k): sorted(x for o in order for x in o[:k]) for k in params.shots}
        fewshot[str(seed)] |= fractions.subsets(order, planned, classes)
    return fewshot, capped, planned


def capped_text(short: dict) -> str:
    """``{"normal": 150}`` -> ``"normal=150"``: the classes a k-shot subset holds fewer than k images of."""
    return " ".join(f"{c}={int(n)}" for c, n in short.items())


def capping_lines(capped: dict) -> list[str]:
    """One line per capped shot count (the splits' ``capped``), as prepare and the report state it."""
    return [f"{k}-shot subsets capped to the class size: {', '.join(f'{c} has {n} training images (all used)' for c, n in short.items())}; "
            f"runs at k={k} are labelled 'capped {capped_text(short)}'" for k, short in sorted(capped.items(), key=lambda x: int(x[0]))]


def _units(rows: np.ndarray, groups: np.ndarray, shot_unit: str) -> int:
    """How many shots ``rows`` (one class's) can give: images, or patients (groups) with ``shot_unit: patient``."""
    return int(len(np.unique(groups[rows]))) if shot_unit == "patient" else int(len(rows))


def _subsets(rows_in: np.ndarray, labels: np.ndarray, groups: np.ndarray, ids: np.ndarray, n_classes: int,
             rng: np.random.Generator, params: SplitParams) -> dict[str, list[str]]:
    """{k: ids} for every k of ``split.shots``: the first k images (``shot_unit: image``) or every image of the
    first k groups (``patient``) of each class's dealing order; nested in k."""
    if params.shot_unit == "patient":
        order = _deal_groups(rows_in, labels, groups, ids, n_classes, rng)
        return {str(k): sorted(x for o in order for g in o[:k] for x in g) for k in params.shots}
    order = _deal(rows_in, labels, groups, ids, n_classes, rng)
    return {str(k): sorted(x for o in order for x in o[:k]) for k in params.shots}


def _deal_groups(rows_in: np.ndarray, labels: np.ndarray, groups: np.ndarray, ids: np.ndarray, n_classes: int,
                 rng: np.random.Generator) -> list[list[list[str]]]:
    """Per class, its groups (patients) of ``rows_in`` in a random order, each as the ids of its class's images."""
    order: list[list[list[str]]] = []
    for c in range(n_classes):
        by_group: dict[int, list[str]] = {}
        for r in rows_in[labels[rows_in] == c]:
            by_group.setdefault(int(groups[r]), []).append(str(ids[r]))
        keys = sorted(by_group)
        order.append([sorted(by_group[keys[j]]) for j in rng.permutation(len(keys))])
    return order


def _deal(rows_in: np.ndarray, labels: np.ndarray, groups: np.ndarray, ids: np.ndarray, n_classes: int,
          rng: np.random.Generator) -> list[list[str]]:
    """Per class, the ids of ``rows_in`` in dealing order: groups shuffled, one image per group per round."""
    order: list[list[str]] = []
    for c in range(n_classes):
        rows = rows_in[labels[rows_in] == c]
        by_group: dict[int, list[int]] = {}
        for r in rows:
            by_group.setdefault(int(groups[r]), []).append(int(r))
        keys = sorted(by_group)
        decks = [[by_group[keys[j]][i] for i in rng.permutation(len(by_group[keys[j]]))] for j in rng.permutation(len(keys))]
        dealt = [deck[i] for i in range(max((len(d) for d in decks), default=0)) for deck in decks if i < len(deck)]
        order.append([str(ids[r]) for r in dealt])
    return order


VAL_STREAM = 0x76616C  # "val": the matched val subsets draw from default_rng([seed, VAL_STREAM])


def _valshot(val_rows: np.ndarray, labels: np.ndarray, groups: np.ndarray, ids: np.ndarray, n_classes: int,
             params: SplitParams) -> dict:
    """{seed: {k: ids}}: k val images (or patients, ``shot_unit: patient``) per class (all of a class when it has
    fewer), nested in k."""
    return {str(seed): _subsets(val_rows, labels, groups, ids, n_classes, np.random.default_rng([seed, VAL_STREAM]),
                                params) for seed in params.seeds}


def conflicting_rows(manifest: pd.DataFrame, labels: Sequence[str] = ()) -> dict[int, str]:
    """{row: reason} for byte-identical images whose labels disagree (every copy is excluded); a multi-label task
    (``labels``) compares the whole label vector."""
    out = {}
    key = (manifest[[multilabel.column(n) for n in labels]].astype(str).apply(
        lambda r: " ".join(f"{n}={v or '?'}" for n, v in zip(labels, r)), axis=1) if labels else manifest["label_name"])
    for digest, grp in manifest.assign(_key=key.to_numpy()).groupby("sha256", sort=True):
        names = sorted(set(grp["_key"].astype(str)))
        if len(names) > 1:
            for r in np.flatnonzero(manifest["sha256"].to_numpy() == digest):
                out[int(r)] = f"identical file with conflicting labels ({', '.join(names)})"
    return out


def make_splits(manifest: pd.DataFrame, classes: Sequence[str], params: SplitParams, *, dataset: str,
                manifest_sha256: str, keep_conflicting: bool = False, labels: Sequence[str] = (),
                label_policy: dict | None = None) -> dict:
    """The split file's content (a plain dict); a pure function of its inputs. ``labels`` (a multi-label task,
    :mod:`featpipe.data.multilabel`): the k-shot (and matched val) sets are drawn per label, and the
    ``multilabel`` section carries the labels, their policy, counts, label matrix and achieved k-shot counts."""
    if not 0 <= params.test_fraction < 1 or not 0 <= params.val_fraction < 1:
        raise DataError("split.test_fraction and split.val_fraction must be in [0, 1)")
    names = list(labels)
    ids = manifest["id"].to_numpy(dtype=str)
    labels = manifest["label"].to_numpy(dtype=int)
    source = manifest["source_split"].to_numpy(dtype=str)
    groups = groups_of(manifest)
    n_classes = len(classes)
    rng = np.random.default_rng(params.seed)
    conflicts = {} if keep_conflicting else conflicting_rows(manifest, names)
    everything = np.setdiff1d(np.arange(len(manifest)), np.array(sorted(conflicts), dtype=int))
    how = {}

    if (source == "test").any():
        test_rows, how["test"] = np.intersect1d(np.flatnonzero(source == "test"), everything), "source"
    else:
        test_rows, how["test"] = _draw(everything, params.test_fraction, labels, groups, n_classes, rng), "drawn"
    val_src = np.intersect1d(np.flatnonzero(source == "val"), everything)
    val_counts = np.bincount(labels[val_src], minlength=n_classes)
    if len(val_src) and val_counts.min() >= params.min_source_val_per_class:
        val_rows, how["val"] = val_src, "source"
    else:
        how["val"] = "drawn" if not len(val_src) else f"drawn (source val merged into train: {len(val_src)} images, fewer than {params.min_source_val_per_class} per class)"
        pool = np.setdiff1d(everything, test_rows)
        val_rows = _draw(pool, params.val_fraction, labels, groups, n_classes, rng)
    train_rows = np.setdiff1d(everything, np.union1d(test_rows, val_rows))

    excluded = [{"id": str(ids[r]), "from": "all", "reason": why} for r, why in conflicts.items()]
    test_groups, val_groups = set(groups[test_rows].tolist()), set(groups[val_rows].tolist())
    for name, rows, banned, where in (("val", val_rows, test_groups, "test"), ("train", train_rows, test_groups, "test"),
                                      ("train", train_rows, val_groups, "val")):
        bad = [r for r in rows if groups[r] in banned]
        for r in bad:
            excluded.append({"id": str(ids[r]), "from": name, "reason": f"same patient or identical file in {where}"})
        if name == "val":
            val_rows = np.setdiff1d(val_rows, bad)
        else:
            train_rows = np.setdiff1d(train_rows, bad)

    parts = {"train": train_rows, "val": val_rows, "test": test_rows}
    if names:
        if params.fractions:
            raise DataError("split.fractions is not available for multi-label tasks yet: use split.shots")
        fewshot, extra = multilabel.split_section(manifest, names, label_policy or {}, parts, groups, ids, params,
                                                  val_stream=VAL_STREAM)
        capped, planned = {}, {}
    else:
        fewshot, capped, planned = _fewshot(train_rows, labels, groups, ids, classes, params)
        extra = {"valshot": _valshot(val_rows, labels, groups, ids, n_classes, params)} if params.val_policy == "matched" else {}
    return {
        "format": FORMAT, "dataset": dataset, "classes": list(classes), "manifest_sha256": manifest_sha256,
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()},
        "source": how,
        "counts": {p: {classes[c]: int((labels[r] == c).sum()) for c in range(n_classes)} for p, r in parts.items()},
        "patients": {p: int(manifest["patient_id"].iloc[r].nunique()) for p, r in parts.items()},
        **{p: sorted(str(i) for i in ids[r]) for p, r in parts.items()},
        "fewshot": fewshot, "capped": capped, **({"fractions": planned} if planned else {}), "excluded": sorted(excluded, key=lambda e: (e["id"], e["from"])),
        "keep_conflicting": bool(keep_conflicting), **extra,
    }


def check_splits(obj: dict, manifest: pd.DataFrame) -> None:
    """Refuse to write a split with a patient or a file on two sides, or k-shot ids outside train."""
    by_id = manifest.set_index("id")
    seen: dict[str, dict[str, str]] = {"patient_id": {}, "sha256": {}}
    for part in ("train", "val", "test"):
        if len(set(obj[part])) != len(obj[part]):
            raise DataError(f"internal error: duplicate ids in {part}")
        rows = by_id.loc[obj[part]] if obj[part] else by_id.iloc[:0]
        for col in seen:
            for key in set(rows[col].tolist()):
                other = seen[col].setdefault(key, part)
                if other != part:
                    what = "patient" if col == "patient_id" else "identical file"
                    raise DataError(f"internal error: {what} {key} is in both {other} and {part}; splits not written")
    train = set(obj["train"])
    for seed, per_k in obj["fewshot"].items():
        prev: set[str] = set()
        for k in sorted(per_k, key=int):
            cur = set(per_k[k])
            if not cur <= train or not prev <= cur:
                raise DataError(f"internal error: {k}-shot subset of seed {seed} is not nested inside train")
            prev = cur
    val = set(obj["val"])
    for seed, per_k in obj.get("valshot", {}).items():
        prev = set()
        for k in sorted(per_k, key=int):
            cur = set(per_k[k])
            if not cur <= val or not prev <= cur:
                raise DataError(f"internal error: matched val subset k={k} of seed {seed} is not nested inside val")
            prev = cur


def write_splits(obj: dict, path: str | Path, manifest: pd.DataFrame) -> Path:
    check_splits(obj, manifest)
    return atomic_write(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def load_splits(path: str | Path, *, check: bool = True) -> Splits:
    """The splits file; one-line DataError when it is missing, not JSON, of another format, lacks a field, or
    (``check``) names a k-shot id that is not in train."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"splits file {path} not found: run 'featpipe prepare' first")
    data = path.read_bytes()
    try:
        obj = json.loads(data)
    except json.JSONDecodeError:
        raise DataError(f"{path} is not valid JSON: rerun 'featpipe prepare'") from None
    if obj.get("format") != FORMAT:
        raise DataError(f"{path} has split format {obj.get('format')!r}, expected {FORMAT}: rerun 'featpipe prepare'")
    try:
        fewshot = {int(s): {int(k): list(v) for k, v in per_k.items()} for s, per_k in obj["fewshot"].items()}
        out = Splits(obj["dataset"], list(obj["classes"]), obj["manifest_sha256"], list(obj["train"]),
                     list(obj["val"]), list(obj["test"]), fewshot, hashlib.sha256(data).hexdigest(), obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path} is damaged or edited ({type(exc).__name__}: {exc}): rerun 'featpipe prepare'") from None
    train = set(out.train) if check else None
    for s, per_k in fewshot.items() if check else ():
        for k, ids in per_k.items():
            stray = [i for i in ids if i not in train]
            if stray:
                raise DataError(f"{path}: the {k}-shot subset of seed {s} names {stray[0]!r}, which is not in train "
                                "(edited?): rerun 'featpipe prepare'")
    return out
