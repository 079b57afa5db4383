"""Training-set fractions (``split.fractions``): the alternative to k shots per class.

A fraction f draws, per seed, ``max(1, round(f * n_c))`` images of each class c from its ``n_c`` training
images: stratified (each class keeps its share), grouped and nested exactly as k-shot subsets are (the
same per-class dealing order of :mod:`featpipe.data.splits`: one image per patient per round, so a smaller
fraction's subset is inside a larger one's for the same seed). A subset is keyed, like a k-shot subset, by an
integer: the number of images it holds (its ``n_train``); ``splits.json`` records under ``fractions`` each
key's fraction and images per class, and every results row carries ``fraction`` and ``images_per_class``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from featpipe.core.errors import DataError


def per_class(fraction: float, counts: Mapping[int, int]) -> dict[int, int]:
    """Images per class of ``fraction`` of the training set (at least one of every class that has one)."""
    return {c: max(1, int(round(fraction * n))) if n else 0 for c, n in counts.items()}


def plan(fractions: Sequence[float], counts: Mapping[int, int], classes: Sequence[str]) -> dict[str, dict]:
    """``{"<images>": {"fraction": f, "per_class": {class: images}}}`` for each fraction, keyed by the subset's
    size; two fractions that give the same subset are one error naming them."""
    out: dict[str, dict] = {}
    for f in sorted(fractions):
        n = per_class(f, counts)
        key = str(sum(n.values()))
        if key in out:
            raise DataError(f"split.fractions {out[key]['fraction']} and {f} both give {key} training images "
                            f"({', '.join(f'{classes[c]} {k}' for c, k in n.items())}): keep one of them")
        out[key] = {"fraction": float(f), "per_class": {classes[c]: int(k) for c, k in n.items()}}
    return out


def subsets(order: Sequence[Sequence[str]], planned: Mapping[str, Mapping], classes: Sequence[str]) -> dict[str, list]:
    """``{"<images>": ids}`` for one seed from its per-class dealing order (nested in the fraction)."""
    return {key: sorted(x for c, o in enumerate(order) for x in o[:p["per_class"][classes[c]]])
            for key, p in planned.items()}


def images_text(per_class_counts: Mapping[str, int]) -> str:
    """``{"normal": 30, "pneumonia": 70}`` -> ``"normal=30 pneumonia=70"``."""
    return " ".join(f"{c}={int(n)}" for c, n in per_class_counts.items())


def fraction_lines(fractions: Mapping[str, Mapping]) -> list[str]:
    """One line per fraction (the splits' ``fractions``), as prepare and the report state them."""
    return [f"fraction {p['fraction']:g} of the training set: {key} images ({images_text(p['per_class'])}) per seed, "
            "stratified, nested" for key, p in sorted(fractions.items(), key=lambda x: int(x[0]))]
