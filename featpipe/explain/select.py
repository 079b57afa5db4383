"""Which test images to explain: a balanced set of outcomes, chosen reproducibly.

Binary (positive class = ``classes[1]``): up to ``per_cell`` true positives, true negatives, false
positives and false negatives. More classes: per class, up to ``per_cell`` correctly and incorrectly
classified images. Within a cell, images are drawn with ``numpy.random.default_rng(seed)``; the
result is in cell order, then in test order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def outcome_cells(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """The outcome name of each image: TP/TN/FP/FN (binary) or ``correct:<class>``/``incorrect:<class>``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(classes) == 2:
        names = np.array(["TN", "FP", "FN", "TP"])
        return names[2 * (y_true == 1) + (y_pred == 1)]
    cls = np.asarray(classes, dtype=object)[y_true]
    return np.array([f"{'correct' if t == p else 'incorrect'}:{c}" for t, p, c in zip(y_true, y_pred, cls)])


def cell_order(classes: Sequence[str]) -> list[str]:
    if len(classes) == 2:
        return ["TP", "TN", "FP", "FN"]
    return [f"{k}:{c}" for c in classes for k in ("correct", "incorrect")]


def select_examples(y_true, y_pred, *, classes: Sequence[str], per_cell: int = 2, seed: int = 0) -> list[int]:
    """Indices (into ``y_true``) of the images to explain, ``per_cell`` per outcome at most."""
    cells = outcome_cells(y_true, y_pred, classes)
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for name in cell_order(classes):
        idx = np.flatnonzero(cells == name)
        if idx.size > per_cell:
            idx = np.sort(rng.choice(idx, size=per_cell, replace=False))
        out.extend(int(i) for i in idx)
    return out
