"""Files to files: a saved model + test images -> Grad-CAM PNGs, grid and index under ``<out>/<run>/``.

:func:`explain_model` loads the model (:func:`featpipe.saved.load.load_model`, in fp32 on the CPU), classifies
every test image of the splits (or the images given by path) with the run's own decision rule (binary: ``p(classes[1]) >=``
the threshold chosen on val and stored with the model), picks a balanced set of outcomes
(:mod:`featpipe.explain.select`), computes Grad-CAM for each picked image's predicted class and renders
them (:mod:`featpipe.explain.render`). Pixels are prepared as extraction prepares them: the decoded
image in the backbone's decoded form, size and filter (from the decoded-image cache, made current through
:func:`featpipe.backbones.modelinput.ensure_decoded`), centre-cropped to the input size, normalised with the backbone's mean and std.
Images are read, classified, explained and written :data:`BATCH` at a time (:mod:`featpipe.explain.sources`,
:class:`featpipe.explain.render.RunWriter`): memory is flat in the number of images; the picked images are
read again for Grad-CAM (from the decoded cache, or decoded again from their files).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from featpipe.backbones.modelinput import normalise
from featpipe.backbones.spec import Preprocess
from featpipe.core.errors import ConfigError, DataError
from featpipe.core.fileio import atomic_write
from featpipe.core.log import notice
from featpipe.core.names import short_part
from featpipe.evaluation.metrics import predict_labels
from featpipe.explain.gradcam import feature_model, gradcam, layer_grid, logits
from featpipe.explain.labels import explain_labels, label_source
from featpipe.explain.render import Example, RunWriter, slug
from featpipe.explain.sanity import sanity_check
from featpipe.explain.select import outcome_cells, select_examples
from featpipe.explain.sources import ImageSource, path_images, test_images
from featpipe.finetune.strategies import STRATEGIES
from featpipe.params.config import Params
from featpipe.saved.load import LoadedModel, load_model
from featpipe.saved.models import read_sidecar


def to_input(pixels: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """uint8 (N, S, S, C) at input size (already cropped) -> normalised float (N, 3, S, S)."""
    return normalise(pixels, preprocess)


def probabilities(model, x: torch.Tensor, *, batch_size: int = 32, runtime=None) -> np.ndarray:
    return torch.softmax(logits(model, x, batch_size=batch_size, runtime=runtime).double(), dim=1).numpy()


def predicted(proba: np.ndarray, threshold: Optional[float]) -> np.ndarray:
    n = proba.shape[1]
    return predict_labels(proba, n_classes=n, threshold=threshold if n == 2 else None)


BATCH = 32  # images read, classified and explained at a time (memory is flat in the number of images)


@dataclass
class Prepared:
    """A loaded model, its images (read on demand), the run's predictions and the picked examples; image ``i``
    (``ids[i]``) is position ``at[i]`` of ``source`` (the images that decoded, in order)."""

    ex: LoadedModel  # the model (fp32, on the CPU); ex.torch_module() is what Grad-CAM explains
    source: ImageSource
    at: np.ndarray
    proba: np.ndarray
    pred: np.ndarray
    pick: list[int]
    outcomes: np.ndarray

    @property
    def ids(self) -> list[str]:
        return [self.source.refs[i] for i in self.at]

    @property
    def labels(self) -> Optional[np.ndarray]:
        return None if self.source.labels is None else self.source.labels[self.at]

    def pixels(self, idx: Sequence[int]) -> np.ndarray:
        """uint8 (n, S, S, C) of images ``idx`` (read again: from the decoded cache, or decoded from their files)."""
        ok, px = self.source.read(self.at[np.asarray(idx, dtype=np.int64)])
        if len(ok) != len(idx):
            bad = self.source.rejects[-1]
            raise DataError(f"{bad['path']} no longer decodes ({bad['reason']}): it changed while being explained; "
                            "run the command again")
        return px

    def inputs(self, idx: Sequence[int]) -> torch.Tensor:
        """The normalised model input of images ``idx``."""
        return to_input(self.pixels(idx), self.ex.preprocess)


def _classify(ex: LoadedModel, source: ImageSource) -> tuple[np.ndarray, np.ndarray]:
    """(the positions of ``source`` that decoded, their class probabilities), a batch at a time."""
    model, ats, probas = ex.torch_module(), [], []
    for start in range(0, len(source.refs), BATCH):
        ok, px = source.read(range(start, min(start + BATCH, len(source.refs))))
        if len(ok):
            ats.append(ok)
            probas.append(probabilities(model, to_input(px, ex.preprocess), runtime=ex.runtime))
    if not ats:
        first = f" (first: {source.rejects[0]['path']}: {source.rejects[0]['reason']})" if source.rejects else ""
        what = "given images" if source.labels is None else f"{len(source.refs)} test images"
        fix = "" if source.labels is None else "; re-run 'featpipe prepare'"
        raise DataError(f"none of the {what} could be decoded{first}{fix}")
    return np.concatenate(ats), np.concatenate(probas)


def prepare(model_path: str | Path, *, manifest, splits, cache_dir, images, per_outcome: int, seed: int,
            max_pixels: int | None = None, decode=None) -> Prepared:
    """Load the model, classify its images batch by batch and pick the examples to explain."""
    ex = load_model(model_path, precision="fp32")
    if images:
        source = path_images(images, ex.preprocess, max_pixels=max_pixels)
    else:
        source = test_images(ex.preprocess, manifest=manifest, splits=splits, cache_dir=cache_dir,
                             dataset=ex.meta.get("dataset"), options=decode)
        if ex.meta.get("label"):  # one label's head of a multi-label task: outcomes against that label
            source = label_source(source, splits, ex.meta["label"])
    at, proba = _classify(ex, source)
    if proba.shape[1] != len(ex.classes):
        raise DataError(f"{model_path} gives {proba.shape[1]} scores for {len(ex.classes)} classes")
    pred = predicted(proba, ex.threshold)
    if source.labels is not None:
        labels = source.labels[at]
        pick = select_examples(labels, pred, classes=ex.classes, per_cell=per_outcome, seed=seed)
        outcomes = outcome_cells(labels, pred, ex.classes)
    else:
        pick, outcomes = list(range(len(at))), np.array([""] * len(at))
    if not pick:
        raise DataError("no images to explain")
    return Prepared(ex, source, at, proba, pred, pick, outcomes)


def _example(p: Prepared, i: int, ids: list[str], labels: Optional[np.ndarray]) -> Example:
    cls, pred, proba = p.ex.classes, p.pred, p.proba
    return Example(id=ids[i], outcome=str(p.outcomes[i]), true=cls[labels[i]] if labels is not None else "",
                   pred=cls[pred[i]], p_pred=float(proba[i, pred[i]]),
                   p_true=float(proba[i, labels[i]]) if labels is not None else float("nan"), target=cls[pred[i]])


def explain_model(model_path: str | Path, *, out_dir: str | Path = "reports/gradcam",
                  manifest: str | Path = "data/manifest.csv", splits: str | Path = "data/splits.json",
                  cache_dir: str | Path = "cache", images: Optional[Sequence[str]] = None, per_outcome: int = 2,
                  seed: int = 0, layer: Optional[str] = None, max_pixels: Optional[int] = None,
                  decode=None) -> dict:
    """Render Grad-CAM for one saved model, a batch of picked images at a time (:class:`RunWriter`: memory
    flat in the number of images); returns the index written to ``<out_dir>/<run>/index.json``. A multi-label
    network: Grad-CAM per label (:func:`featpipe.explain.labels.explain_labels`)."""
    if _multilabel(model_path, images):
        ex = load_model(model_path, precision="fp32")
        source = test_images(ex.preprocess, manifest=manifest, splits=splits, cache_dir=cache_dir,
                             dataset=ex.meta.get("dataset"), options=decode)
        return explain_labels(ex, source, splits=splits, out_dir=out_dir, per_outcome=per_outcome, seed=seed,
                              layer=layer, model_path=model_path)
    p = prepare(model_path, manifest=manifest, splits=splits, cache_dir=cache_dir, images=images,
                per_outcome=per_outcome, seed=seed, max_pixels=max_pixels, decode=decode)
    ex, ids, labels = p.ex, p.ids, p.labels
    model = ex.torch_module()
    fm = feature_model(model)
    cells = dict(zip(*np.unique(p.outcomes, return_counts=True))) if labels is not None else {}
    grid = layer_grid(model, p.inputs(p.pick[:1]), layer=layer, runtime=ex.runtime)
    size = int(ex.preprocess.input_size)
    info = {"model": str(model_path), "kind": ex.kind, "backbone": fm.spec.name,
            "layer": layer or fm.gradcam_layer, "grid": list(grid), "input_size": size, "classes": ex.classes,
            "threshold": ex.threshold, "per_outcome": per_outcome, "seed": seed, "n_images": int(len(ids)),
            "outcomes": {str(k): int(v) for k, v in cells.items()}, "rejects": list(p.source.rejects)}
    writer = RunWriter(out_dir, ex.run, ids=[ids[i] for i in p.pick], map_shape=(size, size), info=info)
    try:
        for start in range(0, len(p.pick), BATCH):
            idx = p.pick[start:start + BATCH]
            px = p.pixels(idx)
            maps = gradcam(model, to_input(px, ex.preprocess), p.pred[idx].tolist(), layer=layer, runtime=ex.runtime)
            for j, i in enumerate(idx):
                writer.add(px[j], maps[j], _example(p, i, ids, labels))
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def sanity_model(model_path: str | Path, *, out_dir: str | Path = "reports/gradcam",
                 manifest: str | Path = "data/manifest.csv", splits: str | Path = "data/splits.json",
                 cache_dir: str | Path = "cache", images: Optional[Sequence[str]] = None, per_outcome: int = 2,
                 seed: int = 0, layer: Optional[str] = None, layers: int = 4, threshold: float = 0.5, decode=None):
    """The model-randomisation check on the picked images; writes ``<out_dir>/<run>/sanity.json``.
    Returns ``(run, SanityResult)``."""
    if _multilabel(model_path, ()):
        raise DataError(f"{model_path} is a multi-label model: the randomisation check is not available for it yet")
    p = prepare(model_path, manifest=manifest, splits=splits, cache_dir=cache_dir, images=images,
                per_outcome=per_outcome, seed=seed, decode=decode)
    idx = np.asarray(p.pick)
    result = sanity_check(p.ex.torch_module(), p.inputs(idx), targets=p.pred[idx].tolist(), layers=layers,
                          threshold=threshold, seed=seed, gradcam_layer=layer, runtime=p.ex.runtime)
    ids = p.ids
    body = {"run": p.ex.run, "model": str(model_path), "ids": [ids[i] for i in p.pick], **asdict(result)}
    atomic_write(Path(out_dir) / slug(p.ex.run) / "sanity.json", json.dumps(body, indent=1))
    return p.ex.run, result


def _multilabel(model_path: str | Path, images) -> bool:
    """Whether ``model_path`` is a multi-label network (its sidecar's ``task``; not one label's head, which is a
    binary head); images given by path have no labels to pick per-label outcomes from: one line."""
    side = read_sidecar(model_path)
    if side.get("task") != "multilabel" or side.get("label"):  # one label's head is a binary head
        return False
    if images:
        raise DataError(f"{model_path} is a multi-label model: Grad-CAM per label picks TP/FP/FN test images of "
                        "each label; --images is not available for it yet")
    return True


def _names(stem: str, entry: str) -> bool:
    """Whether a model file's stem is run ``entry``: a saved head's stem starts with it, a fine-tuned model's
    ends with it before its identity hash (``<dataset>-<run>-<hash>``)."""
    bare = re.sub(r"-[0-9a-f]{8}$", "", stem)
    return stem.startswith(f"{entry}-") or bare.endswith(f"-{entry}") or entry in (stem, bare)



def _label_heads(paths: Sequence[Path]) -> bool:
    """Whether ``paths`` are the per-label heads of one multi-label run (``<stem>-<label>.skops``, one stem)."""
    stems = set()
    for p in paths:
        label = read_sidecar(p).get("label") if p.suffix == ".skops" else None
        if not label:
            return False
        stems.add(p.stem[: -len(short_part(label)) - 1])
    return len(stems) == 1


def empty_branches(params: Params) -> set[str]:
    """The branches a study leaves empty: ``fit`` (no backbone to extract or no head) and ``finetune`` (no
    backbone or no strategy). A frozen-heads-only or a fine-tuning-only study runs to its report."""
    out = set()
    if not (params.fit.backbones or params.extract.backbones) or not params.fit.heads:
        out.add("fit")
    if not params.finetune.backbones or not params.finetune.strategies:
        out.add("finetune")
    return out


def run_branch(entry: str) -> str:
    """``finetune`` for a fine-tuning run's name (``<backbone>-<strategy>-k<k>-s<seed>``, a ``.safetensors``
    file), else ``fit`` (a saved head)."""
    name = Path(entry).name
    if name.endswith(".safetensors"):
        return "finetune"
    return "finetune" if any(f"-{s}-" in f"-{name}-" for s in STRATEGIES) else "fit"


def resolve_models(entries: Sequence[str], models_dir: str | Path = "models", *,
                   skip_branches: Sequence[str] = ()) -> list[Path]:
    """Model files for ``gradcam.runs`` entries: a path, or a run name such as ``tiny_cnn-logistic-k20-s0``
    (a saved head) or ``tiny_cnn-layerwise-k10-s0`` (a fine-tuned model), found under ``models_dir``.
    An entry of a branch in ``skip_branches`` (:func:`empty_branches`) that names no model is skipped with
    a notice (its stage never ran); any other entry must name exactly one model."""
    out = []
    root = Path(models_dir)
    for entry in entries:
        p = Path(entry)
        if p.is_file():
            out.append(p)
            continue
        hits = sorted(f for f in root.rglob("*") if f.suffix in (".skops", ".safetensors")
                      and _names(f.stem, entry))
        if not hits and run_branch(entry) in skip_branches:
            notice(f"gradcam.runs entry '{entry}' skipped: this study has no {run_branch(entry)} runs")
            continue
        if len(hits) > 1 and _label_heads(hits):  # a multi-label run's heads, one per label: each rendered
            out += hits
            continue
        if len(hits) != 1:
            found = "no model" if not hits else f"{len(hits)} models ({', '.join(h.name for h in hits[:3])})"
            raise ConfigError(f"gradcam.runs entry '{entry}': {found} under {root}; give a file path or a unique run name")
        out.append(hits[0])
    return out
