"""Saving a head fitted in a notebook (the Python API's :func:`save`) as ``featpipe fit`` saves one: a skops
archive plus its sealed sidecar (:func:`featpipe.heads.io.save_head`), recording the backbone the features
came from, so that :func:`featpipe.saved.load.load_model` (and ``featpipe predict`` / ``gradcam``)
rebuild that backbone, check it and apply the head to images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from featpipe.core.errors import DataError
from featpipe.core.names import HEAD_SUFFIX
from featpipe.core.versions import __version__
from featpipe.heads.io import MATCH_KEYS, save_head
from featpipe.heads.registry import spec_for


def _provenance(source) -> dict:
    """The feature provenance of a Backbone (``provenance()``), a FeatureSet (``attrs``) or a mapping."""
    if hasattr(source, "provenance"):
        return dict(source.provenance())
    attrs = dict(getattr(source, "attrs", source))
    missing = [k for k in MATCH_KEYS if k not in attrs]
    if missing:
        raise DataError(f"the features' provenance lacks {', '.join(missing)}: pass the Backbone the features "
                        "were made with, or the FeatureSet from load_features")
    return attrs


def save(head, path: str | Path, *, features, classes: Sequence[str], threshold: float | None = None,
         extra: Mapping | None = None) -> Path:
    """Save fitted ``head`` (a pipeline from ``make_head`` fitted on embeddings) to ``path`` (``.skops``, the
    ``.json`` sidecar beside it); returns the ``.skops`` path.

    ``features``: where the embeddings came from, a ``Backbone`` (``create_backbone``; embeddings from
    ``embed``), a ``FeatureSet`` (``load_features``) or its attrs. ``classes``: the names of the label
    values 0..C-1 in order; ``threshold``: binary decision threshold on p(classes[1]) (None: the most
    probable class); ``extra``: more sidecar fields (e.g. ``dataset``, or ``weights_request`` when features
    from a cache were extracted with other than the default weights: the backbone is rebuilt from it)."""
    path = Path(path)
    if path.suffix != HEAD_SUFFIX:
        raise DataError(f"{path}: a saved head's file name must end in {HEAD_SUFFIX}")
    fitted = getattr(head, "classes_", None)
    if fitted is None:
        raise DataError("the head is not fitted: call head.fit(X, y) first")
    if len(fitted) != len(classes):
        raise DataError(f"the head was fitted on {len(fitted)} classes, {len(classes)} class names given")
    import sklearn

    a = _provenance(features)
    meta = {"classes": [str(c) for c in classes], "backbone": a["backbone"], "weights": a.get("weights", "default"),
            "weights_request": a.get("weights_request") or "default",
            "weights_id": a["weights_id"], "layer": a.get("layer") or "", "preprocess": a["preprocess"],
            "embedding_dim": int(a["embedding_dim"]), "precision": a.get("precision"),
            "head": spec_for(head[-1]).name, "threshold": None if threshold is None else float(threshold),
            "featpipe_version": __version__, "sklearn_version": sklearn.__version__, **dict(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_head(path, head, meta)
