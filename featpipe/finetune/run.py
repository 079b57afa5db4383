"""One fine-tuning run, files to files: splits + manifest + decoded cache -> row, curves, checkpoint.

A run uses exactly the splits' ids: the k-shot subset ``fewshot[seed][k]`` to train, the val ids of the
split's ``val_policy`` (the whole val split, or the matched k-per-class subset) for early stopping and the
decision threshold (chosen on val only, as for the frozen heads), ``test`` to score. ``scratch`` starts
from random weights drawn from the run's seed (``weights_id`` ``random:seed<n>``).
Its row in ``results/runs.csv`` is made by :func:`featpipe.evaluation.record.record_run`, as the heads'
rows are: ``head = "finetune:<strategy>"`` and the same provenance columns (split sha256, k-shot ids sha256, n_train, n_test), so one table and one learning
curve hold both. Per run it also writes:

- ``<results>/training/<run>.json``: loss and val metrics per epoch, best epoch (the training curve);
- ``<results>/predictions/*.fpruns``: test ROC/PR points and
  per-image val and test probabilities (:func:`featpipe.evaluation.table.write_records`);
- ``<models>/finetune/<dataset>/<run>.safetensors`` + ``.json`` (when ``save_models``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from featpipe.backbones import registry
from featpipe.backbones.modelinput import decode_key, ensure_decoded
from featpipe.core.errors import ConfigError, DataError
from featpipe.core.fileio import atomic_write, file_sha256
from featpipe.core.names import canonical_params, finetune_model_stem, finetune_run_name, weights_name
from featpipe.core.runtime import Runtime
from featpipe.core.versions import versions
from featpipe.data.manifest import read_manifest
from featpipe.data.splits import load_splits
from featpipe.decoded.cache import DecodeOptions
from featpipe.engine.base import Executor
from featpipe.engine.local import LocalExecutor
from featpipe.data.multilabel import kshot_text
from featpipe.evaluation.metrics import score
from featpipe.evaluation.multilabel import label_scores, macro_row, record_multilabel, unfit_reason
from featpipe.evaluation.record import Outputs, check_disjoint, record_run
from featpipe.evaluation.table import write_records
from featpipe.finetune.checkpoint import build_model, save_finetuned
from featpipe.finetune.data import CachedImages, ImageSource, Labeled, Prep
from featpipe.finetune.loop import TrainConfig, predict_proba, train
from featpipe.finetune.strategies import STRATEGIES, describe, effective_strategy, make_optimizer, param_groups
from featpipe.params.config import to_dict

TRAINING_DIR = "training"


@dataclass(frozen=True)
class Job:
    backbone: str
    strategy: str
    shots: int
    seed: int
    layer: str | None = None
    arm: str | None = None  # a finetune.arms name: its settings apply (FinetuneParams.arm)

    def name(self, dataset: str) -> str:
        return finetune_run_name(dataset, self.backbone, self.strategy, self.shots, self.seed, layer=self.layer,
                                 arm=self.arm)

    @property
    def head(self) -> str:
        """The results row's ``head``: ``finetune:<strategy>`` or, for an arm, ``finetune:<strategy>:<arm>``."""
        return f"finetune:{self.strategy}" + (f":{self.arm}" if self.arm else "")


@dataclass(frozen=True)
class Paths:
    manifest: Path = Path("data/manifest.csv")
    splits: Path = Path("data/splits.json")
    cache_dir: Path = Path("cache")
    results: Path = Path("results")
    models: Path = Path("models")


def grid(p) -> list[Job]:
    """Every (backbone, strategy, shots, seed) of ``params.finetune``; ``layer`` goes to truncated only (the
    arms' runs: :func:`arm_jobs`)."""
    for s in p.strategies:
        if s not in STRATEGIES:
            raise ConfigError(f"unknown strategy {s!r} in finetune.strategies (choose from {', '.join(STRATEGIES)})")
    if "truncated" in p.strategies and not p.layer:
        raise ConfigError("finetune.strategies has 'truncated' but finetune.layer is not set")
    return [Job(b, s, int(k), int(seed), p.layer if s == "truncated" else None)
            for b in p.backbones for s in p.strategies for k in p.shots for seed in p.seeds]


def model_identity(key: dict, p, *, precision: str) -> dict:
    """Everything besides the run's name that changes a fine-tuned model: the training settings
    (``head_params``), the starting weights and their identity, the precision trained in, the split and the
    optimizer. Its hash ends the model's file name (as a saved head's name ends with its params' hash)."""
    return {"head_params": canonical_params(key["head_params"]), "weights": key["weights"],
            "weights_id": key["weights_id"], "precision": precision, "split_sha256": key["split_sha256"],
            "optimizer": p.optimizer}


def arm_jobs(p, names=None) -> list[Job]:
    """Every (shots, seed) run of the arms ``names`` (default: every arm of ``p.arms``)."""
    arms = [a for a in p.arms if names is None or a.name in names]
    missing = set(names or ()) - {a.name for a in arms}
    if missing:
        raise ConfigError(f"no arm {sorted(missing)[0]!r} in finetune.arms "
                          f"(arms: {', '.join(a.name for a in p.arms) or 'none'})")
    return [Job(a.backbone, a.strategy, int(k), int(seed), a.layer if a.strategy == "truncated" else None, a.name)
            for a in arms for k in p.shots for seed in p.seeds]


def head_params(job: Job, p) -> dict:
    """The training settings that define the configuration (the row key's ``head_params``; the optimizer
    where it is not the default AdamW)."""
    out = {"lr": p.lr, "weight_decay": p.weight_decay, "batch_size": p.batch_size, "epochs": p.epochs,
           "patience": p.patience, "imbalance": p.imbalance, "augment": p.augment}
    if p.optimizer != "adamw":
        out["optimizer"] = p.optimizer
        if p.optimizer == "sgd":
            out["momentum"] = p.momentum
    if p.augment:
        out.update(crop_scale_min=p.crop_scale_min, rotation_degrees=p.rotation_degrees,
                   brightness=p.brightness, contrast=p.contrast, hflip=p.hflip)
    if job.strategy == "truncated":
        out["truncated_mode"] = p.truncated_mode
    if p.layerwise_freeze and effective_strategy(job.strategy, p.truncated_mode) == "layerwise":
        out["layerwise_freeze"] = list(p.layerwise_freeze)
    if job.strategy == "full" or (job.strategy == "truncated" and p.truncated_mode == "full"):
        out["backbone_lr_factor"] = p.backbone_lr_factor
    return out


def _val_metrics(classes):
    def f(y, proba) -> dict:
        if y.ndim == 2:  # multi-label: macro over labels (featpipe.evaluation.multilabel)
            per = {n: label_scores(y[:, j], proba[:, j], 0.5) for j, n in enumerate(classes)}
            m = macro_row(per, calibrated=True)
            return {"val_balanced_accuracy": m["balanced_accuracy"], "val_auroc": m["auroc"], "val_accuracy": m["accuracy"]}
        s = score(y, proba, classes=classes, detail=False)
        return {"val_balanced_accuracy": s["balanced_accuracy"], "val_auroc": s["auroc"], "val_accuracy": s["accuracy"]}

    return f


def decode_options(params, manifest_path=None):
    """How a missing decoded-image cache is built: exactly as ``featpipe decode`` does."""
    return DecodeOptions.from_params(params)


def image_source(paths: Paths, dataset: str, spec, manifest, ids, *, build=None,
                 progress: bool = True) -> ImageSource:
    """The decoded-image cache ``spec`` reads for ``dataset``, made current for the manifest through
    :func:`featpipe.backbones.modelinput.ensure_decoded` (valid rows reused; stale pixels are never used)."""
    opts = dataclasses.replace(build or DecodeOptions(), progress=progress)
    res = ensure_decoded(manifest, [spec], cache_dir=paths.cache_dir, dataset=dataset, options=opts)
    src = CachedImages(res.paths[decode_key(spec)])
    src.reader.require(manifest[manifest["id"].astype(str).isin(set(ids))])
    return src


@dataclass(frozen=True)
class RunData:
    """The ids (and labels) one run uses, read from the splits and the manifest."""

    splits: object
    manifest: object
    classes: list
    train: Labeled
    val: Labeled
    test: Labeled


def load_run_data(job: Job, paths: Paths) -> RunData:
    """The splits' k-shot, val and test ids with their manifest labels, checked for consistency."""
    splits = load_splits(paths.splits)
    manifest = read_manifest(paths.manifest)
    if splits.manifest_sha256 and file_sha256(paths.manifest) != splits.manifest_sha256:
        raise DataError(f"{paths.splits} was made from a different {paths.manifest}: re-run 'featpipe prepare'")
    if splits.labels:  # a multi-label task: the label matrix of each part (1 / 0 / -1 unknown)
        parts = [splits.shots(job.seed, job.shots), splits.val_for(job.seed, job.shots), splits.test]
        tr, va, te = (Labeled(tuple(map(str, ids)), splits.label_matrix(ids).astype(np.int64)) for ids in parts)
        if len(va) == 0:
            raise DataError("the splits have no val images: fine-tuning needs them for early stopping")
        check_disjoint(tr.ids, va.ids, te.ids)
        return RunData(splits, manifest, list(splits.labels), tr, va, te)
    label_of = dict(zip(manifest["id"].astype(str), manifest["label"].astype(int)))
    classes = list(splits.classes)
    tr = Labeled.of(splits.shots(job.seed, job.shots), label_of)
    va = Labeled.of(splits.val_for(job.seed, job.shots), label_of)
    te = Labeled.of(splits.test, label_of)
    if len(va) == 0:
        raise DataError("the splits have no val images: fine-tuning needs them for early stopping")
    check_disjoint(tr.ids, va.ids, te.ids)
    if len(set(tr.labels.tolist())) < len(classes):
        raise DataError(f"the {job.shots}-shot subset of seed {job.seed} lacks a class; rerun 'featpipe prepare'")
    return RunData(splits, manifest, classes, tr, va, te)


def run_job(job: Job, p, paths: Paths, *, build: dict | None = None, progress: bool = True,
            source: ImageSource | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Train, score and record one run; returns its results row (also upserted into runs.csv)."""
    job = resolve_job(job)
    p = p.arm(job.arm)  # an arm's own optimizer, lr, epochs, weights, ...
    d = load_run_data(job, paths)
    tr, va, te = d.train, d.val, d.test
    multilabel = bool(d.splits.labels)
    if multilabel and p.imbalance == "balanced_sampler":
        raise ConfigError("finetune.imbalance: balanced_sampler is for single-label tasks: use weighted_loss "
                          "(per-label positive weights) or none for a multi-label task")
    model, spec = build_model(job.backbone, job.strategy, len(d.classes), weights=p.weights, freeze=p.layerwise_freeze,
                              layer=job.layer, truncated_mode=p.truncated_mode, seed=job.seed)
    prep = Prep.from_preprocess(spec.preprocess)
    if source is None:
        source = image_source(paths, d.splits.dataset, spec, d.manifest, tr.ids + va.ids + te.ids, build=build,
                              progress=progress)
    rt = Runtime.resolve(p.device, p.precision, traits=spec.traits)
    model = rt.prepare(model, eval=False)
    opt = make_optimizer(p.optimizer, param_groups(model, job.strategy, lr=p.lr, backbone_lr_factor=p.backbone_lr_factor,
                                                   truncated_mode=p.truncated_mode),
                         weight_decay=p.weight_decay, momentum=p.momentum)
    say = log or (_say if progress else None)
    name = job.name(d.splits.dataset)
    if say:
        say(f"{name}: training on {len(tr)} images, at most {p.epochs} epochs (val {len(va)}, test {len(te)})")
    with torch_threads(p.threads):
        res = train(model, source, tr, va, optimizer=opt, cfg=TrainConfig.from_params(p), prep=prep, rt=rt,
                    seed=job.seed, n_classes=len(d.classes), val_metrics=_val_metrics(d.classes),
                    log=(lambda r: say(_epoch_line(name, r, p.epochs))) if say else None)
        pv = predict_proba(model, source, va.ids, prep=prep, rt=rt, batch_size=p.eval_batch_size, multilabel=multilabel)
        pt = predict_proba(model, source, te.ids, prep=prep, rt=rt, batch_size=p.eval_batch_size, multilabel=multilabel)
    weights, weights_id = weights_columns(model.features)
    key = {"dataset": d.splits.dataset, "backbone": job.backbone, "weights": weights, "weights_id": weights_id,
           "layer": job.layer or "", "head": job.head, "head_params": head_params(job, p),
           "shots": job.shots, "seed": job.seed, "split_sha256": d.splits.sha256}
    own = {"best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "train_seconds": round(res.seconds, 3),
           "precision": rt.precision, "device": rt.device.type, "trainable_params": describe(model)["trainable"],
           "capped": d.splits.capped(job.shots), "fraction": d.splits.fraction(job.shots),
           "images_per_class": d.splits.images_per_class(job.shots)}
    if multilabel:
        stem = finetune_model_stem(name, model_identity(key, p, precision=rt.precision))
        meta = {"family": spec.family, "layer": job.layer, "strategy": job.strategy, "arm": job.arm,
                "preprocess": spec.preprocess.to_dict(), "params": to_dict(p), "precision": rt.precision,
                **describe(model), **versions("torch", "torchvision", "transformers")}
        return _record_multilabel(key, own, d, pv, pt, paths=paths, res=res, stem=stem,
                                  save=(lambda m: save_finetuned(model, m, Path(paths.models) / "finetune"
                                                                 / d.splits.dataset / stem)) if p.save_models else None,
                                  meta=meta)
    rec = record_run(key, classes=d.classes, train_ids=tr.ids, val=Outputs(va.ids, va.labels, pv),
                     test=Outputs(te.ids, te.labels, pt), val_policy=d.splits.val_policy,
                     manifest_sha256=d.splits.manifest_sha256, columns=own)
    row = rec.row
    meta = {**rec.sidecar, "family": spec.family, "layer": job.layer, "strategy": job.strategy, "arm": job.arm,
            "preprocess": spec.preprocess.to_dict(), "params": to_dict(p), "head_params": row["head_params"],
            "ids_sha256": row["ids_sha256"], "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
            "precision": rt.precision, **describe(model), **versions("torch", "torchvision", "transformers")}
    stem = finetune_model_stem(name, model_identity(key, p, precision=rt.precision))
    if p.save_models:
        row["model_path"] = str(save_finetuned(model, meta, Path(paths.models) / "finetune" / d.splits.dataset / stem))
    write_training_curve(Path(paths.results) / TRAINING_DIR / f"{stem}.json", meta, res)
    write_records(paths.results, [rec])
    return row


def _record_multilabel(key: dict, own: dict, d: RunData, pv, pt, *, paths: Paths, res, stem: str, save, meta: dict) -> dict:
    """A multi-label fine-tuning run's row (:func:`featpipe.evaluation.multilabel.record_multilabel`): a label
    without positives or negatives in the k-shot set is named in ``unfit_labels`` and scored NaN, as for the
    frozen heads; its training curve is written and (``save``) the network with a sidecar whose ``classes`` are
    the labels, ``task: multilabel`` and the per-label val ``thresholds`` (Grad-CAM per label reads it); its
    per-image predictions (``y[<label>]``, ``p[<label>]``) go through the predictions writer."""
    unfit = {n: unfit_reason(d.train.labels[:, j]) for j, n in enumerate(d.classes)}
    unfit = {n: why for n, why in unfit.items() if why}
    for j, n in enumerate(d.classes):
        if n in unfit:
            pv[:, j], pt[:, j] = np.nan, np.nan
    own = {**own, "kshot_counts": kshot_text(d.splits.achieved(key["seed"], key["shots"]))}
    rec = record_multilabel(key, labels=d.classes, train_ids=d.train.ids, unfit=unfit,
                            val=(d.val.ids, d.val.labels, pv), test=(d.test.ids, d.test.labels, pt),
                            val_policy=d.splits.val_policy, manifest_sha256=d.splits.manifest_sha256, columns=own)
    full = {**rec.sidecar, **meta, "classes": list(d.classes), "task": "multilabel", "threshold": None,
            "head_params": rec.row["head_params"], "ids_sha256": rec.row["ids_sha256"], "best_epoch": res.best_epoch,
            "epochs_run": res.epochs_run, "unfit_labels": rec.row["unfit_labels"]}
    if save is not None:
        rec.row["model_path"] = str(save(full))
    write_training_curve(Path(paths.results) / TRAINING_DIR / f"{stem}.json", full, res)
    write_records(paths.results, [rec])
    return rec.row


@contextmanager
def torch_threads(n: int):
    """torch's CPU thread count set to ``n`` (0: unchanged) for the block, then restored."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def weights_columns(features) -> tuple[str, str]:
    """(weights, weights_id) as the frozen heads' rows write them: the weights' short portable name
    (:func:`featpipe.core.names.weights_name`) and their identity."""
    ref = getattr(features, "weights", None)
    if ref is None:
        return "unknown", "unknown"
    return weights_name(ref.source if ref.kind != "random" else "random", ref.identity), ref.identity


def resolve_job(job: Job) -> Job:
    """``job`` with its cut point under its full registered name (``denseblock2`` -> ``features.denseblock2``)."""
    if job.strategy != "truncated" or not job.layer:
        return job
    return replace(job, layer=registry.get(job.backbone).resolve_layer(job.layer))


def _say(line: str) -> None:
    print(line, flush=True)  # a plain line, flushed: progress under DVC or a pipe as it happens


def _epoch_line(name: str, r: dict, epochs: int) -> str:
    extra = f" val_auroc={r['val_auroc']:.3f}" if not math.isnan(r.get("val_auroc", math.nan)) else ""
    return (f"{name} epoch {r['epoch']}/{epochs}: train_loss={r['train_loss']:.4f} val_loss={r['val_loss']:.4f}"
            f"{extra} ({r['seconds']:.1f}s){' *' if r['best'] else ''}")




def write_training_curve(path: Path, meta: dict, res) -> Path:
    """Loss and val metrics per epoch of one run (JSON; NaN written as null)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    body = {"run": path.stem, "backbone": meta["backbone"], "strategy": meta["strategy"], "shots": meta["shots"],
            "seed": meta["seed"], "layer": meta["layer"], "best_epoch": res.best_epoch,
            "best_val_loss": clean(res.best_val_loss), "epochs_run": res.epochs_run,
            "stopped_early": res.stopped_early, "seconds": round(res.seconds, 3),
            "epochs": [{k: clean(v) for k, v in r.items()} for r in res.history]}
    return atomic_write(path, json.dumps(body, indent=1))


def run_jobs(jobs: list[Job], p, paths: Paths, *, engine: Executor | None = None, on_row: Callable | None = None,
             cpus: float = 1.0, gpus: float = 1.0, **kw) -> list[dict]:
    """Every job's row, in job order, mapped over ``engine`` (default: the local engine, one job after the other in
    this process); each job asks ``cpus`` CPUs and ``gpus`` GPUs (where the engine has GPUs). The decoded-image
    caches the jobs read are made current first, one per decoded form (size and filter), so parallel jobs never
    race to build one.
    ``on_row(job, row)`` as each row is known; ``kw`` goes to :func:`run_job` (``progress`` only where the engine
    shows its workers' output)."""
    engine = engine or LocalExecutor()
    kw["progress"] = kw.get("progress", True) and engine.interactive
    if kw.get("source") is None:
        by_form = {decode_key(j.backbone): j.backbone for j in jobs}
        build = kw.get("build")
        engine.map(functools.partial(_decoded_for, paths=paths, build=build, progress=kw["progress"]),
                   list(by_form.values()), cpus=max(1, int(getattr(build, "workers", 1))))
    done = None if on_row is None else (lambda i, row: on_row(jobs[i], row))
    return engine.map(functools.partial(_job_task, p=p, paths=paths, kw=kw), jobs, cpus=cpus, gpus=gpus,
                      on_result=done)


def _job_task(job: Job, shared, *, p, paths: Paths, kw: dict) -> dict:
    return run_job(job, p, paths, **kw)


def _decoded_for(backbone: str, shared=None, *, paths: Paths, build, progress: bool) -> None:
    """Bring the decoded-image cache a backbone's jobs read up to date (on the engine, before the jobs run)."""
    splits = load_splits(paths.splits)
    src = image_source(paths, splits.dataset, registry.get(backbone), read_manifest(paths.manifest),
                       [*splits.train, *splits.val, *splits.test], build=build, progress=progress)
    src.reader.close()
