"""The per-head sections of ``heads`` in ``params.yaml`` (``heads.svc``, ``heads.logistic``, ...): one frozen
dataclass per registered head (:mod:`featpipe.heads.registry`), with its defaults.

:data:`SECTIONS` is the one list of them: :mod:`featpipe.params.config` builds ``HeadsParams`` from it, and
each head module names its own class here as its ``params``. A test checks that the registered heads and
these sections are the same set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class KnnParams:
    k: int = 20  # used when the k-shot set is too small for cross-validation (capped by the training images)
    k_grid: tuple[int, ...] = (10, 20, 100, 200)  # DINOv2's kNN grid; each capped by the training images
    temperature: float = 0.07  # vote weight = exp(cosine similarity / temperature) (DINOv2's 0.07)


@dataclass(frozen=True)
class TextlogisticParams:
    C: float = 1.0  # weight of the k-shot loss against the pull towards the text weights (sum loss * C + |W - W0|^2 / 2)
    max_iter: int = 1000


@dataclass(frozen=True)
class LogisticParams:
    C: float = 1.0  # used when the k-shot set is too small for cross-validation
    C_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    class_weight: Literal["balanced"] | None = "balanced"
    max_iter: int = 2000


@dataclass(frozen=True)
class MlpParams:
    hidden: int = 512
    dropout: float = 0.3
    epochs: int = 200  # at most; stops earlier when the training loss stops improving (tol, n_iter_no_change)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    tol: float = 1e-4
    n_iter_no_change: int = 10
    span: bool = True  # train the first layer within the span of the k-shot embeddings (fast); false = full D x hidden


@dataclass(frozen=True)
class PrototypeParams:
    metric: Literal["cosine"] = "cosine"
    temperature: float = 0.1  # probabilities = softmax(cosine similarity / temperature)


@dataclass(frozen=True)
class SvcParams:
    kernel: Literal["linear", "rbf"] = "rbf"
    C: float = 1.0  # used when the k-shot set is too small for cross-validation
    gamma: float | str = "scale"  # likewise; "scale" = 1 / (D * var(X)), "auto" = 1 / D, or a number
    C_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    gamma_grid: tuple[float | str, ...] = ("scale",)  # rbf only
    class_weight: Literal["balanced"] | None = "balanced"


# head name -> its section (the order of the fields of HeadsParams)
SECTIONS: dict[str, type] = {"knn": KnnParams, "logistic": LogisticParams, "mlp": MlpParams,
                             "prototype": PrototypeParams, "svc": SvcParams, "textlogistic": TextlogisticParams}
