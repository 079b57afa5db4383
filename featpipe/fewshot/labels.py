"""One-vs-rest heads of a multi-label task: one binary head per label on the same cached features.

:func:`fit_per_label` fits a fresh head (the same head and settings as a single-label run, after the same
``heads.scaler``) for each label on the k-shot images whose label is known (1 or 0; an ignored label is left out
of that label's fit only). A label whose known k-shot images hold no positive, or no negative, gets no head: it is
returned as a named entry (``{label: "no positives in the k-shot set"}``) and scored NaN, not an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.pipeline import Pipeline

from featpipe.evaluation.multilabel import unfit_reason
from featpipe.heads.scaling import fit_pipeline


def fit_per_label(make: Callable[[], Pipeline], X: np.ndarray, Y: np.ndarray, labels: Sequence[str], *, kind: str,
                  pool: Callable[[bool], object] | None) -> tuple[list[Pipeline | None], dict[str, str]]:
    """([fitted pipeline or None per label], {label: why it has no head}) for the k-shot rows ``X`` with labels
    ``Y`` ((N, L): 1 / 0 / -1 unknown)."""
    models: list[Pipeline | None] = []
    unfit: dict[str, str] = {}
    for j, name in enumerate(labels):
        known = Y[:, j] >= 0
        y = Y[known, j].astype(np.int64)
        why = unfit_reason(y)
        if why:
            unfit[name] = why
            models.append(None)
            continue
        models.append(fit_pipeline(make(), X[known], y, kind=kind, pool=pool))
    return models, unfit
