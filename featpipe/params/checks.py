"""Value checks of the parameters, run by :func:`featpipe.params.config.load_params` after the types: ranges,
finite numbers, lists that must not be empty, and names that become parts of file paths.

Each failure is a one-line :class:`~featpipe.core.errors.ConfigError` naming the key, the value and what is
allowed (exit code 2), before any work starts. The rules are data (the tables below): a new numeric
parameter gets its range by adding its key to one of them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterator

from featpipe.core.errors import ConfigError

POSITIVE = (  # > 0
    "data.max_image_pixels", "data.medmnist_size", "fit.max_classes", "data.synthetic.images_per_class", "data.synthetic.size",
    "data.synthetic.images_per_patient", "decode.workers", "extract.batch_size", "heads.logistic.C",
    "heads.logistic.max_iter", "heads.svc.C", "heads.mlp.hidden", "heads.mlp.epochs", "heads.mlp.lr", "heads.mlp.tol",
    "heads.mlp.n_iter_no_change", "heads.prototype.temperature", "finetune.lr", "finetune.batch_size",
    "finetune.epochs", "finetune.eval_batch_size", "finetune.crop_scale_min", "clinical.min_seeds",
    "gradcam.per_outcome", "gradcam.sanity_layers", "engine.fit_cpus", "engine.finetune_cpus", "engine.decode_cpus",
    "engine.embed_cpus", "engine.num_cpus", "report.min_subgroup",
)
NON_NEGATIVE = (  # >= 0
    "split.seed", "split.min_source_val_per_class", "data.synthetic.seed", "heads.mlp.weight_decay",
    "finetune.weight_decay", "finetune.patience", "finetune.backbone_lr_factor", "finetune.rotation_degrees",
    "finetune.brightness", "finetune.contrast", "finetune.threads", "fit.bootstrap", "compare.bootstrap",
    "compare.seed", "gradcam.seed", "report.subgroup_bootstrap", "engine.embed_gpus", "engine.finetune_gpus", "engine.actors",
    "engine.pool_min_seconds",
)
AT_MOST_ONE = (  # in [0, 1]
    "clinical.min_accuracy_binary", "clinical.min_accuracy_multiclass", "clinical.max_std", "clinical.min_auroc",
    "clinical.min_sensitivity", "clinical.min_specificity", "finetune.crop_scale_min",
)
BELOW_ONE = ("split.test_fraction", "split.val_fraction", "heads.mlp.dropout")  # in [0, 1)
AT_LEAST_TWO = ("data.synthetic.classes", "heads.cv_folds")
NON_EMPTY = (
    "split.seeds", "compare.metrics", "heads.logistic.C_grid", "heads.svc.C_grid", "heads.svc.gamma_grid",
)  # extract.backbones / fit.heads / finetune.* may be empty: a branch the study leaves out (checked in _cross)
POSITIVE_ITEMS = ("split.shots", "fit.shots", "finetune.shots", "heads.logistic.C_grid", "heads.svc.C_grid")
NON_NEGATIVE_ITEMS = ("split.seeds", "fit.seeds", "finetune.seeds")

# a name that becomes a folder or a file-name part (cache/<name>/, models/finetune/<name>/, ...)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAMES = ("data.name",)


def get(params: Any, key: str) -> Any:
    node = params
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _numbers(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every number in the params tree (tuple items as ``key[i]``)."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from _numbers(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(node, tuple):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{prefix}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield prefix, node


def _bad(key: str, value: Any, want: str) -> ConfigError:
    return ConfigError(f"bad value for '{key}': {value!r} ({want})")


def check(params: Any) -> None:
    """Every rule above, in table order; the first failure raised."""
    for key, v in _numbers(params, ""):
        if isinstance(v, float) and not math.isfinite(v):
            raise _bad(key, v, "expected a finite number")
    rules = ((POSITIVE, lambda v: v > 0, "must be greater than 0"),
             (NON_NEGATIVE, lambda v: v >= 0, "must be 0 or more"),
             (AT_MOST_ONE, lambda v: 0 <= v <= 1, "must be between 0 and 1"),
             (BELOW_ONE, lambda v: 0 <= v < 1, "must be at least 0 and below 1"),
             (AT_LEAST_TWO, lambda v: v >= 2, "must be 2 or more"))
    for keys, ok, want in rules:
        for key in keys:
            v = get(params, key)
            if v is not None and not ok(v):
                raise _bad(key, v, want)
    for key in NON_EMPTY:
        if not get(params, key):
            raise _bad(key, list(get(params, key)), "must list at least one value")
    for keys, ok, want in ((POSITIVE_ITEMS, lambda v: v > 0, "every value must be greater than 0"),
                           (NON_NEGATIVE_ITEMS, lambda v: v >= 0, "every value must be 0 or more")):
        for key in keys:
            bad = [v for v in get(params, key) if not ok(v)]
            if bad:
                raise _bad(key, list(get(params, key)), f"{want}; {bad[0]!r} is not")
    _cross(params)
    for key in NAMES:
        check_name(get(params, key), key)
    _external(params)


def _external(params: Any) -> None:
    """evaluate.external: names safe in paths, unique and not the study's; report.age_bands increasing."""
    names = [e.name for e in params.evaluate.external]
    for i, name in enumerate(names):
        check_name(name, f"evaluate.external[{i}].name")
        if name == params.data.name or names.count(name) > 1:
            raise _bad(f"evaluate.external[{i}].name", name, "must differ from data.name and from the other "
                                                             "external sets (it names their cache folder)")
    edges = list(params.report.age_bands)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise _bad("report.age_bands", edges, "at least two edges, strictly increasing")


def _cross(params: Any) -> None:
    """Rules between keys, and the odd ones."""
    s = params.split
    if s.val_fraction + s.test_fraction >= 1:
        raise ConfigError(f"split.val_fraction + split.test_fraction = {s.val_fraction + s.test_fraction:g}: "
                          "must be below 1 (something must be left for train)")
    if not s.shots and not s.fractions:
        raise _bad("split.shots", [], "must list at least one value (or set split.fractions)")
    frozen = bool((params.fit.backbones or params.extract.backbones) and params.fit.heads)
    tuned = bool((params.finetune.backbones and params.finetune.strategies) or params.finetune.arms)
    if not frozen and not tuned:
        raise ConfigError("nothing to run: list extract.backbones and fit.heads (frozen features + heads), "
                          "finetune.backbones and finetune.strategies (or finetune.arms), or both")
    _multilabel(params)
    if params.fit.n_jobs == 0:
        raise _bad("fit.n_jobs", 0, "1 or more processes, or joblib's negative count: -1 = every CPU, "
                                    "-2 = every CPU but one")
    for key in ("heads.svc.gamma",):
        v = get(params, key)
        if not isinstance(v, str) and v <= 0:
            raise _bad(key, v, "must be greater than 0, 'scale' or 'auto'")
        if isinstance(v, str) and v not in ("scale", "auto"):
            raise _bad(key, v, "must be a number, 'scale' or 'auto'")


def _multilabel(params: Any) -> None:
    """A multi-label task's keys (``data.csv.labels``, ``labels_uncertain``; featpipe.data.multilabel)."""
    c = params.data.csv
    if not c.labels:
        if c.labels_uncertain:
            raise ConfigError("data.csv.labels_uncertain needs data.csv.labels (the label columns of a multi-label task)")
        return
    if params.data.source != "csv":
        raise ConfigError(f"data.csv.labels (a multi-label task) needs data.source: csv, not {params.data.source!r}")
    if params.split.fractions:
        raise ConfigError("split.fractions is not available for multi-label tasks (data.csv.labels) yet: use split.shots")
    if c.task:
        raise ConfigError("data.csv.task (one binary column) and data.csv.labels (a multi-label task) are "
                          "alternatives: set one of them")
    names = [n for n in c.labels if n != "chexpert"]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"data.csv.labels names {dup!r} twice")
    for key, value in c.labels_uncertain.items():
        if key != "default" and key not in names and "chexpert" not in c.labels:
            raise ConfigError(f"data.csv.labels_uncertain.{key}: not one of data.csv.labels ({', '.join(names)}) "
                              "nor 'default'")
        if value not in ("zeros", "ones", "ignore"):
            raise ConfigError(f"bad value for 'data.csv.labels_uncertain.{key}': {value!r} (choose from zeros, ones, ignore)")
    for e in params.evaluate.external:
        if e.source != "csv" or not e.csv.labels:
            raise ConfigError(f"evaluate.external[{e.name}]: a multi-label study (data.csv.labels) needs source: csv "
                              "and csv.labels (its label columns), with label_map onto the study's labels")


def check_name(value: str, key: str) -> str:
    """``value`` when it is safe as one folder or file-name part (letters, digits, ``._-``, not starting with
    a dot, at most 64 characters): no ``/``, no ``..``, not absolute; else a one-line ConfigError."""
    if not NAME.fullmatch(str(value)):
        raise _bad(key, value, "a name used in file paths: letters, digits, '.', '_' and '-', starting with a "
                               "letter or digit, at most 64 characters")
    return value
