"""featpipe: frozen-feature extraction plus classical few-shot heads for medical images.

The Python API (see the README's "Python API" section and ``docs/api_example.py``)::

    import featpipe

    backbone = featpipe.create_backbone("tiny_cnn")          # model + its preprocessing
    X = featpipe.embed(backbone, ["a.png", pil_image, array])  # (N, D) numpy
    runs, predictions = featpipe.evaluate_fewshot(X, labels, train=..., val=..., test=..., heads=["logistic"])

Every name below is imported on first use from the module that owns it, so ``import featpipe`` itself
loads no torch (nor anything else heavy).
"""

from importlib import import_module

from featpipe.core.versions import __version__  # noqa: F401

# public name -> "module:attribute" (the owner of each function; imported lazily by __getattr__)
_API = {
    "list_backbones": "featpipe.backbones.create:list_backbones",
    "create_backbone": "featpipe.backbones.create:create_backbone",
    "register_network": "featpipe.backbones.custom:register_network",
    "NetworkParams": "featpipe.params.config:NetworkParams",
    "Backbone": "featpipe.backbones.create:Backbone",
    "embed": "featpipe.features.embed:embed",
    "load_features": "featpipe.features.cache:read_features",
    "load_splits": "featpipe.data.splits:load_splits",
    "make_head": "featpipe.heads.make:make_head",
    "evaluate_fewshot": "featpipe.fewshot.evaluate:evaluate_fewshot",
    "read_predictions": "featpipe.evaluation.table:read_predictions",
    "summarize": "featpipe.results.frames:summarize",
    "compare": "featpipe.results.frames:compare",
    "save": "featpipe.saved.store:save",
    "load_model": "featpipe.saved.load:load_model",
    "predict_images": "featpipe.saved.inference:predict_images",
    "predict_proba": "featpipe.saved.inference:predict_proba",
    "explain_images": "featpipe.explain.images:explain_images",
    "FeatpipeError": "featpipe.core.errors:FeatpipeError",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'featpipe' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(import_module(module), attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
