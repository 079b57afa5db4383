"""Files to files: a saved model + test images -> Grad-CAM PNGs, grid and index under ``<out>/<run>/``.

:func:`explain_model` loads the model (:func:`featpipe.saved.load.load_model`, in fp32 on the CPU), classifies
every test image of the splits (or the images given by path) with the run's own decision rule (binary: ``p(classes[1]) >=``
the threshold chosen on val and stored with the model), picks a balanced set of outcomes
(:mod:`featpipe.explain.select`), computes Grad-CAM for each picked image's predicted class and renders
them (:mod:`featpipe.explain.render`). Pixels are prepared as extraction prepares them: the decoded
image in the backbone's decoded form, size and filter (from the decoded-image cache, made current through
:func:`featpipe.backbones.modelinput.ensure_decoded`), centre-cropped to the input size, normalised with the backbone's mean and std.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from featpipe.backbones.modelinput import centre_crop, decode_files, ensure_decoded, normalise, same_channels
from featpipe.backbones.spec import Preprocess
from featpipe.core.errors import ConfigError, DataError
from featpipe.core.fileio import atomic_write
from featpipe.core.log import notice
from featpipe.core.names import short_part
from featpipe.data.manifest import read_manifest
from featpipe.data.splits import load_splits
from featpipe.decoded.cache import DecodedImages, DecodeOptions
from featpipe.evaluation.metrics import predict_labels
from featpipe.params.config import Params
from featpipe.explain.gradcam import feature_model, gradcam, layer_grid, logits
from featpipe.explain.labels import explain_labels
from featpipe.explain.render import Example, slug, write_run
from featpipe.explain.sanity import sanity_check
from featpipe.imaging.base import ImageRejected
from featpipe.imaging.decode import content_sha256
from featpipe.explain.select import outcome_cells, select_examples
from featpipe.finetune.strategies import STRATEGIES
from featpipe.predict import image_files
from featpipe.saved.load import LoadedModel, load_model
from featpipe.saved.models import read_sidecar


@dataclass(frozen=True)
class ImageSet:
    ids: list[str]
    pixels: np.ndarray  # uint8 (N, S, S, C) at the model's input size
    labels: Optional[np.ndarray]  # int64 (N,) or None (images given by path)
    rejects: tuple = ()  # ({"path", "reason"}, ...): files that could not be decoded, skipped


def to_input(pixels: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """uint8 (N, S, S, C) at input size (already cropped) -> normalised float (N, 3, S, S)."""
    return normalise(pixels, preprocess)


def test_images(preprocess: Preprocess, *, manifest: str | Path, splits: str | Path, cache_dir: str | Path = "cache",
                dataset: Optional[str] = None, options=None) -> ImageSet:
    """Every test image of ``splits`` with its label, at the model's input size."""
    for p in (manifest, splits):
        if not Path(p).is_file():
            raise DataError(f"{p} not found: run 'featpipe prepare' first (or pass --images)")
    sp = load_splits(splits)
    if dataset and sp.dataset != dataset:
        raise DataError(f"the model was trained on data set '{dataset}' but {splits} is for '{sp.dataset}'")
    m = read_manifest(manifest).set_index("id", drop=False)
    ids = [i for i in sp.test if i in m.index]
    if len(ids) != len(sp.test):
        raise DataError(f"{len(sp.test) - len(ids)} test ids of {splits} are not in {manifest}: re-run 'featpipe prepare'")
    if not ids:
        raise DataError(f"{splits} has no test images")
    rows = m.loc[ids]
    rejects: list = []
    try:
        with DecodedImages(_decoded_cache(m, preprocess, cache_dir=cache_dir, dataset=sp.dataset,
                                          options=options)) as r:
            pixels = np.asarray(r.read(r.require(rows)))
    except DataError:  # a test image changed or no longer decodes since prepare: skipped and named, cache untouched
        rows, rejects = _unchanged(rows)
        ok, decoded, bad = decode_files(rows["path"].astype(str).tolist(), preprocess.decoding)
        rejects += bad
        if not ok:
            raise DataError(f"none of the {len(ids)} test images could be decoded (first: {rejects[0]['path']}: "
                            f"{rejects[0]['reason']}); re-run 'featpipe prepare'") from None
        rows = rows[rows["path"].astype(str).isin(set(ok))]
        ids = rows["id"].astype(str).tolist()
        pixels = same_channels(decoded)
    return ImageSet(ids, centre_crop(pixels, preprocess), rows["label"].to_numpy(dtype=np.int64), tuple(rejects))


def label_images(data: ImageSet, splits: str | Path, label: str) -> ImageSet:
    """The test images of a multi-label task's per-label head (sidecar ``label``): labelled 1 / 0 for ``label``
    (its column of the splits' label matrix), the images where it is unknown left out."""
    sp = load_splits(splits)
    if label not in sp.labels:
        raise DataError(f"the model is the head of label {label!r}, which {splits} does not have: re-run 'featpipe prepare'")
    y = sp.label_matrix(data.ids)[:, sp.labels.index(label)].astype(np.int64)
    keep = np.flatnonzero(y >= 0)
    return ImageSet([data.ids[i] for i in keep], data.pixels[keep], y[keep], data.rejects)


def _unchanged(rows):
    """(the rows whose image still has the manifest's sha256, a reject entry for each one that changed)."""
    keep, rejects = [], []
    for path, sha in zip(rows["path"].astype(str), rows["sha256"].astype(str)):
        try:
            same = content_sha256(path) == sha
        except ImageRejected:
            same = True  # missing or unreadable: the decode below names it with its reason
        keep.append(same)
        if not same:
            rejects.append({"path": path, "reason": "changed since prepare"})
    return rows[np.asarray(keep, dtype=bool)], rejects


def _decoded_cache(manifest, preprocess: Preprocess, *, cache_dir, dataset: str, options) -> Path:
    """The decoded cache of the model's decoded form (size and filter), made current for the manifest (decoding only what
    it lacks, as every stage does through :func:`featpipe.backbones.modelinput.ensure_decoded`)."""
    res = ensure_decoded(manifest.reset_index(drop=True), [preprocess], cache_dir=cache_dir, dataset=dataset,
                         options=options or DecodeOptions(progress=False))
    return res.paths[preprocess.decoding]


def path_images(paths: Sequence[str | Path], preprocess: Preprocess, *, max_pixels: int | None = None) -> ImageSet:
    """Images given by path (no labels), at the model's input size."""
    refs, rejects = image_files(paths)
    ok, decoded, bad = decode_files(refs, preprocess.decoding, max_pixels=max_pixels)
    rejects += bad
    if not ok:
        first = f" (first: {rejects[0]['path']}: {rejects[0]['reason']})" if rejects else ""
        raise DataError(f"none of the given images could be decoded{first}")
    return ImageSet(ok, centre_crop(same_channels(decoded), preprocess), None, tuple(rejects))


def probabilities(model, x: torch.Tensor, *, batch_size: int = 32, runtime=None) -> np.ndarray:
    return torch.softmax(logits(model, x, batch_size=batch_size, runtime=runtime).double(), dim=1).numpy()


def predicted(proba: np.ndarray, threshold: Optional[float]) -> np.ndarray:
    n = proba.shape[1]
    return predict_labels(proba, n_classes=n, threshold=threshold if n == 2 else None)


@dataclass
class Prepared:
    """A loaded model, its images, the run's predictions and the picked examples."""

    ex: LoadedModel  # the model (fp32, on the CPU); ex.torch_module() is what Grad-CAM explains
    data: ImageSet
    x: torch.Tensor
    proba: np.ndarray
    pred: np.ndarray
    pick: list[int]
    outcomes: np.ndarray


def prepare(model_path: str | Path, *, manifest, splits, cache_dir, images, per_outcome: int, seed: int,
            max_pixels: int | None = None, decode=None) -> Prepared:
    """Load the model and its images, classify them and pick the examples to explain."""
    ex = load_model(model_path, precision="fp32")
    if images:
        data = path_images(images, ex.preprocess, max_pixels=max_pixels)
    else:
        data = test_images(ex.preprocess, manifest=manifest, splits=splits, cache_dir=cache_dir,
                           dataset=ex.meta.get("dataset"), options=decode)
        if ex.meta.get("label"):  # one label's head of a multi-label task: outcomes against that label
            data = label_images(data, splits, ex.meta["label"])
    x = to_input(data.pixels, ex.preprocess)
    proba = probabilities(ex.torch_module(), x, runtime=ex.runtime)
    if proba.shape[1] != len(ex.classes):
        raise DataError(f"{model_path} gives {proba.shape[1]} scores for {len(ex.classes)} classes")
    pred = predicted(proba, ex.threshold)
    if data.labels is not None:
        pick = select_examples(data.labels, pred, classes=ex.classes, per_cell=per_outcome, seed=seed)
        outcomes = outcome_cells(data.labels, pred, ex.classes)
    else:
        pick, outcomes = list(range(len(data.ids))), np.array([""] * len(data.ids))
    if not pick:
        raise DataError("no images to explain")
    return Prepared(ex, data, x, proba, pred, pick, outcomes)


def explain_model(model_path: str | Path, *, out_dir: str | Path = "reports/gradcam",
                  manifest: str | Path = "data/manifest.csv", splits: str | Path = "data/splits.json",
                  cache_dir: str | Path = "cache", images: Optional[Sequence[str]] = None, per_outcome: int = 2,
                  seed: int = 0, layer: Optional[str] = None, max_pixels: Optional[int] = None,
                  decode=None) -> dict:
    """Render Grad-CAM for one saved model; returns the index written to ``<out_dir>/<run>/index.json``. A
    multi-label model: Grad-CAM per label (:func:`featpipe.explain.labels.explain_labels`)."""
    if _multilabel(model_path, images):
        ex = load_model(model_path, precision="fp32")
        data = test_images(ex.preprocess, manifest=manifest, splits=splits, cache_dir=cache_dir,
                           dataset=ex.meta.get("dataset"), options=decode)
        return explain_labels(ex, data, to_input(data.pixels, ex.preprocess), splits=splits, out_dir=out_dir,
                              per_outcome=per_outcome, seed=seed, layer=layer, model_path=model_path)
    p = prepare(model_path, manifest=manifest, splits=splits, cache_dir=cache_dir, images=images,
                per_outcome=per_outcome, seed=seed, max_pixels=max_pixels, decode=decode)
    ex, data, pick, pred, proba = p.ex, p.data, p.pick, p.pred, p.proba
    idx = np.asarray(pick)
    model = ex.torch_module()
    maps = gradcam(model, p.x[idx], pred[idx].tolist(), layer=layer, runtime=ex.runtime)
    cls = ex.classes
    examples = [Example(id=data.ids[i], outcome=str(p.outcomes[i]),
                        true=cls[data.labels[i]] if data.labels is not None else "", pred=cls[pred[i]],
                        p_pred=float(proba[i, pred[i]]),
                        p_true=float(proba[i, data.labels[i]]) if data.labels is not None else float("nan"),
                        target=cls[pred[i]]) for i in pick]
    fm = feature_model(model)
    cells = dict(zip(*np.unique(p.outcomes, return_counts=True))) if data.labels is not None else {}
    grid = layer_grid(model, p.x[:1], layer=layer, runtime=ex.runtime)
    info = {"model": str(model_path), "kind": ex.kind, "backbone": fm.spec.name,
            "layer": layer or fm.gradcam_layer, "grid": list(grid),
            "input_size": int(ex.preprocess.input_size), "classes": cls, "threshold": ex.threshold,
            "per_outcome": per_outcome, "seed": seed, "n_images": int(len(data.ids)),
            "outcomes": {str(k): int(v) for k, v in cells.items()}, "rejects": list(data.rejects)}
    return write_run(out_dir, ex.run, [data.pixels[i] for i in pick], maps, examples, info=info)


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
    result = sanity_check(p.ex.torch_module(), p.x[idx], targets=p.pred[idx].tolist(), layers=layers,
                          threshold=threshold, seed=seed, gradcam_layer=layer, runtime=p.ex.runtime)
    body = {"run": p.ex.run, "model": str(model_path), "ids": [p.data.ids[i] for i in p.pick], **asdict(result)}
    atomic_write(Path(out_dir) / slug(p.ex.run) / "sanity.json", json.dumps(body, indent=1))
    return p.ex.run, result


def _multilabel(model_path: str | Path, images) -> bool:
    """Whether ``model_path`` is a multi-label network (its sidecar's ``task``; not one label's head, which is a
    binary head); images given by path have no
    labels to pick per-label outcomes from: one line."""
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
