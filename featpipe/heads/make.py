"""Heads from keyword arguments (the Python API's :func:`make_head`): no ``Params`` object needed.

Keywords are the keys of ``params.yaml``'s ``heads`` section: the shared ones (``scaler``, ``l2_normalize``,
``cv_folds``, ``cv_scoring``) and the head's own (``heads.<name>.*``, e.g. ``C``, ``kernel``). They are
validated by the same code as ``params.yaml`` (:func:`featpipe.params.config.build`), so an unknown keyword
or a value of the wrong type is the same one-line :class:`~featpipe.core.errors.ConfigError` the parameter
file gives (``unknown parameter 'heads.svc.foo' (known in heads.svc: ...)``).
"""

from __future__ import annotations

import dataclasses

from featpipe.heads.registry import get
from featpipe.heads.registry import make_head as head_pipeline
from featpipe.params.config import HeadsParams, build


def head_settings(name: str, **kwargs):
    """The ``heads`` parameters (:class:`featpipe.params.config.HeadsParams`) with ``kwargs`` set for head
    ``name``: shared keys go to the shared settings, every other key to the ``heads.<name>`` section."""
    get(name)  # an unknown head is a one-line error naming the known ones
    sections = {f.name for f in dataclasses.fields(HeadsParams) if dataclasses.is_dataclass(f.type)
                or f.default_factory is not dataclasses.MISSING}
    shared = {f.name for f in dataclasses.fields(HeadsParams)} - sections
    raw: dict = {k: v for k, v in kwargs.items() if k in shared}
    own = {k: v for k, v in kwargs.items() if k not in shared}
    if own:
        raw[name] = own
    return build(HeadsParams, raw, "heads")


def make_head(name: str, *, seed: int = 0, **kwargs):
    """The unfitted scikit-learn ``Pipeline`` of head ``name`` (standardiser -> [L2] -> classifier) with
    ``kwargs`` as its settings; ``seed`` drives its cross-validation folds and initialisation.

    ``head.fit(X, y)`` standardises on the ``X`` it is given (the ``kshot`` scaler);
    :func:`featpipe.fewshot.evaluate.evaluate_fewshot` applies the ``scaler`` setting as ``fit`` does."""
    return head_pipeline(name, head_settings(name, **kwargs), seed=seed)
