"""The head registry: one :class:`HeadSpec` per head module, the one list of heads.

A head is one module of :mod:`featpipe.heads` (``svc.py``, ``logistic.py``, ``mlp.py``, ``prototype.py``,
``knn.py``, ``textlogistic.py``) that holds its scikit-learn estimator and factory, which of its settings name a configuration, and ends with
``HEAD = dict(...)`` (the fields of :class:`HeadSpec`). Its parameters dataclass (the ``heads.<name>`` section
of ``params.yaml``) lives in :mod:`featpipe.params.heads`, its torch twin for Grad-CAM in
:data:`featpipe.heads.torch_twin.TWINS`. Adding a head is its module, one entry in :data:`_MODULES` below, its
params section and its twin (tests check that the three lists agree). The CLI's choices, the factories, the
saved models' trusted types, Grad-CAM and the tests read :data:`REGISTRY`.

Every head is an UNFITTED ``Pipeline``: ``StandardScaler`` -> optional L2 ``Normalizer`` -> classifier
(:func:`featpipe.heads.base.build_pipeline`). Every classifier follows scikit-learn conventions (no logic in
``__init__``, ``fit`` returns ``self``, fitted attributes end in ``_``, no global random state) and has
``predict_proba`` (columns in ``classes_`` order) and ``decision_function``.

Hyper-parameter choice happens inside ``fit``, on the k-shot training set only: when every class has at
least ``heads.cv_folds`` images, C (and gamma for an RBF SVC, k for kNN) is chosen by grid search over a seeded
``StratifiedKFold`` (scoring ``heads.cv_scoring``; ties go to the first candidate in grid order, i.e. the
smaller C): :func:`~featpipe.heads.base.grid_cv` makes exactly ``GridSearchCV``'s choice without its per-fit
overhead; otherwise the documented default ``heads.<head>.C`` (and ``gamma``) is used. The scaler sees the
whole k-shot set before the CV (an unsupervised step; the test and val splits are never seen).

Speed without changing the answer: with n k-shot images of dimension D >> n, the SVC's CV and final fit run on
the n x n kernel matrix computed by BLAS (``kernel="precomputed"``); the binary logistic head is solved exactly by
Newton's method on the n x n Gram matrix (:mod:`featpipe.heads.newton`, warm starts along the C grid), the
multiclass one by lbfgs on the n-dimensional coordinates of the images in the span of the training embeddings.
An L2-penalised linear model's weights lie in that span (representer theorem), so these give the same solution
as fitting on the raw D-dim vectors. ``benchmarks/bench_heads.py`` times each head before / after a change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

from featpipe.core.errors import ConfigError
from featpipe.heads import knn, logistic, mlp, prototype, svc, textlogistic


@dataclass(frozen=True)
class HeadSpec:
    name: str
    params: type  # frozen dataclass: the heads.<name> section of params.yaml (featpipe.params.heads)
    estimator: type  # the classifier class (a skops-trusted type of saved heads)
    factory: Callable  # (HeadsParams, *, seed) -> unfitted Pipeline
    naming: Optional[Callable[[dict], dict]] = None  # own settings -> those that name a configuration
    cross_validated: bool = False  # heads.cv_folds / heads.cv_scoring name its configurations too
    also_explains: tuple = ()  # bare scikit-learn classes its torch twin also converts
    calibrated: bool = True  # predict_proba is a fitted probability (logistic, MLP); False: a monotone score
    text_prior: bool = False  # fitted towards weights from the class prompts' text embeddings (set as ``prior``)


_MODULES = (knn, logistic, mlp, prototype, svc, textlogistic)  # the head modules; the package's other modules are shared code

REGISTRY: dict[str, HeadSpec] = dict(sorted((m.HEAD["name"], HeadSpec(**m.HEAD)) for m in _MODULES))
HEADS: dict[str, Callable] = {name: spec.factory for name, spec in REGISTRY.items()}
# Every class a saved head may contain beyond scikit-learn/numpy (the skops trusted-types list).
HEAD_CLASSES = tuple(spec.estimator for spec in REGISTRY.values())


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> HeadSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown head '{name}' (known: {', '.join(REGISTRY)})") from None


def make_head(name: str, params, *, seed: int = 0):
    """The unfitted pipeline of head ``name`` (``seed`` drives its CV folds / initialisation)."""
    return get(name).factory(params, seed=seed)


def head_params(name: str, params) -> dict:
    """The settings that define head ``name`` (its results-table key): shared ones plus its own section."""
    spec = get(name)
    own = dataclasses.asdict(getattr(params, name))
    if spec.naming is not None:
        own = spec.naming(own)
    shared = {"scaler": params.scaler, "l2_normalize": params.l2_normalize}
    if spec.cross_validated:
        shared |= {"cv_folds": params.cv_folds, "cv_scoring": params.cv_scoring}
    if params.calibrate != "none":  # named only when on: rows and saved heads of the default keep their names
        shared["calibrate"] = params.calibrate
    return shared | own


def spec_for(clf) -> HeadSpec:
    """The head whose estimator (or bare scikit-learn class it explains) ``clf`` is."""
    for spec in REGISTRY.values():
        if isinstance(clf, (spec.estimator, *spec.also_explains)):
            return spec
    raise ConfigError(f"no registered head for a {type(clf).__name__} (known: {', '.join(REGISTRY)})")

