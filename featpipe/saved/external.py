"""Every saved model of the study scored on an external test set (``featpipe evaluate-external``).

The runs are the rows of the study's results table (current split) that saved a model (``model_path``): frozen heads
and fine-tuned networks alike. Each is loaded by :func:`featpipe.saved.load.load_model` (a head's backbone rebuilt
and checked against its sidecar), the external images (``data/external/<name>/manifest.csv``, labels mapped to the
study's classes) are read from the decoded caches ``prepare --external`` filled in ``cache/<name>/`` where they hold
exactly what ``predict``'s decode would give (same decoder settings, every row's sha256), else decoded as ``predict``
decodes them, and each run is scored with its own val-chosen threshold
by :func:`featpipe.evaluation.record.record_external`: the same metrics as its internal row, in a row of its own
(``test_set = external:<name>``) in ``results/external/<name>/runs.csv`` with its predictions beside it. A
multi-label run (its per-label heads, or its network) is scored per label against the set's ``y[<label>]`` columns
at its val-chosen ``threshold[<label>]`` (:func:`featpipe.evaluation.multilabel.record_multilabel_external`). Heads on
the same backbone, weights, layer and precision share one embedding pass. A run whose model file is missing is
named in the result (never silently dropped); rows without a saved model (``fit.save_models: false``, zero-shot)
are counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from featpipe.backbones.modelinput import decode_files
from featpipe.core.errors import CacheError, DataError
from featpipe.core.log import notice
from featpipe.data.external import EXTERNAL_DIR, check_outside_study, read_external
from featpipe.data.manifest import read_manifest
from featpipe.data.multilabel import manifest_matrix
from featpipe.data.splits import load_splits
from featpipe.decoded.cache import (
    DecodedImages,
    decoded_path,
    decoder_settings,
    settings_mismatch,
)
from featpipe.evaluation.multilabel import record_multilabel_external
from featpipe.evaluation.record import Outputs, record_external
from featpipe.evaluation.table import EXTERNAL_RESULTS, RUNS_CSV, external_test_set, read_runs, write_records
from featpipe.heads.io import load_head
from featpipe.imaging.base import DEFAULT_DRAFT, as_resize
from featpipe.results.stats import seed_summary
from featpipe.results.summary import config_labels, current_split
from featpipe.saved.load import head_proba, load_model
from featpipe.saved.models import kind_of

@dataclass
class ExternalResult:
    name: str
    table: pd.DataFrame  # results/external/<name>/runs.csv
    n_images: int
    unsaved: int = 0  # study rows without a saved model (not scored)
    missing: list = field(default_factory=list)  # model files named by rows but not found
    internal: pd.DataFrame | None = None  # the study's rows of the scored runs (for the side-by-side lines)
    sources: dict = field(default_factory=dict)  # decoded form -> "files" or the decoded cache it was read from

    def lines(self) -> list[str]:
        out = [f"external set '{self.name}': {len(self.table)} run(s) scored on {self.n_images} images"]
        out += side_by_side(self.internal, self.table, self.name) if self.internal is not None else []
        for form, src in sorted(self.sources.items()):
            out.append(f"  images at {form}: " + ("decoded from their files" if src == "files" else f"read from {src}"))
        if self.unsaved:
            out.append(f"  {self.unsaved} run(s) saved no model (fit.save_models: false, zero-shot): not scored")
        if self.missing:
            out.append(f"  {len(self.missing)} model file(s) not found, not scored, e.g. {self.missing[0]}")
        return out


def side_by_side(internal: pd.DataFrame, external: pd.DataFrame, name: str, metrics=("auroc", "accuracy")) -> list[str]:
    """One line per configuration and shot count: mean [95% interval] over seeds (:func:`seed_summary`, image units)
    of ``metrics`` on the internal test split and on the external set."""
    if internal.empty or external.empty:
        return []
    both = pd.concat([internal.copy().assign(_set="internal"), external.copy().assign(_set=name)], ignore_index=True)
    both["_config"] = config_labels(both).to_numpy()
    head = "  ".join(f"{m + ' ' + s:>28s}" for m in metrics for s in ("internal", name[:19]))
    note = ("  mean over seeds [95% interval: seeds + test sampling, on each test set's own images, as the internal "
            "summary tables]")
    out = [note, f"  {'configuration':40s} {'k':>4s}  {head}"]
    for (config, k), g in both.groupby(["_config", "shots"], sort=True):
        cells = []
        for m in metrics:
            for s in ("internal", name):
                v = seed_summary(g[g["_set"] == s], m)
                lo, hi = v["ci_low"], v["ci_high"]
                iv = f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else ""
                cells.append(f"{v['mean']:.3f}{iv}".rjust(28))
        out.append(f"  {config[:40]:40s} {int(k):4d}  " + "  ".join(cells))
    return out


class _Images:
    """The external images decoded once per decoded form, and embedded once per (backbone, weights, layer,
    precision).

    A decoded form is read from ``<cache_dir>/<name>/decoded-<form>.h5`` when ``prepare --external`` filled it with
    the decoder settings a fresh decode would use (:func:`~featpipe.decoded.cache.decoder_settings` at the default
    draft setting, as ``predict`` decodes) and it holds every external image with its sha256: the same pixels,
    without decoding the files again. Otherwise (no cache, other settings, stale or damaged rows) the files are
    decoded. ``sources`` records where each form came from (file or cache path)."""

    def __init__(self, manifest: pd.DataFrame, max_pixels: int | None, cache_dir: str | Path | None = None,
                 dataset: str = ""):
        self.manifest, self.max_pixels = manifest, max_pixels
        self.cache_dir, self.dataset = cache_dir, dataset
        self._pixels: dict[str, list | np.ndarray] = {}
        self._emb: dict[tuple, np.ndarray] = {}
        self.sources: dict[str, str] = {}

    def _cached(self, decoding) -> np.ndarray | None:
        if self.cache_dir is None:
            return None
        path = decoded_path(self.cache_dir, self.dataset, decoding)
        if not path.is_file():
            return None
        with DecodedImages(path) as cache:
            try:
                if settings_mismatch(cache.attrs, decoder_settings(decoding, DEFAULT_DRAFT)) is not None:
                    return None
                pixels = cache.read(cache.require(self.manifest))
            except CacheError as exc:
                notice(f"{exc}; decoding the external images from their files instead")
                return None
        self.sources[as_resize(decoding).label] = str(path)
        return pixels

    def pixels(self, decoding) -> list | np.ndarray:
        key = repr(decoding)
        if key not in self._pixels:
            pixels = self._cached(decoding)
            if pixels is None:
                _, pixels, bad = decode_files(list(self.manifest["path"]), decoding, max_pixels=self.max_pixels)
                if bad:
                    raise DataError(f"external image {bad[0]['path']} no longer decodes ({bad[0]['reason']}): rerun "
                                    "'featpipe prepare --external'")
                self.sources[as_resize(decoding).label] = "files"
            self._pixels[key] = pixels
        return self._pixels[key]

    def embeddings(self, path: Path, meta: dict, batch_size: int, device: str) -> np.ndarray:
        key = tuple(str(meta.get(k)) for k in ("backbone", "weights_request", "weights_id", "layer", "precision"))
        if key not in self._emb:
            model = load_model(path, device=device)
            self._emb[key] = model.embed(self.pixels(model.decoding), batch_size=batch_size)
        return self._emb[key]


def _proba(path: Path, images: _Images, batch_size: int, device: str) -> np.ndarray:
    if kind_of(path) == "head":
        saved = load_head(path)
        return head_proba(saved.pipeline, saved.meta, images.embeddings(path, saved.meta, batch_size, device))
    model = load_model(path, device=device)
    return model.predict_proba(images.pixels(model.decoding), batch_size=batch_size)


def model_files(model_path: str) -> list[str]:
    """The files of a row's ``model_path``: one, or a multi-label run's per-label heads ("; "-joined)."""
    return [f for f in str(model_path).split("; ") if f]


def _label_proba(row: dict, labels: list, images: _Images, batch_size: int, device: str) -> np.ndarray:
    """(N, L) probabilities of a multi-label run: each label's binary head (its sidecar's ``label``) fills its
    column, NaN where the label has no head; a multi-label network gives every column."""
    files = model_files(row["model_path"])
    if len(files) == 1 and kind_of(Path(files[0])) != "head":
        return np.asarray(_proba(Path(files[0]), images, batch_size, device), dtype=float)
    P = np.full((len(images.manifest), len(labels)), np.nan)
    for f in files:
        P[:, labels.index(load_head(Path(f)).meta["label"])] = _proba(Path(f), images, batch_size, device)[:, 1]
    return P


def evaluate_external(name: str, *, splits_path: str | Path, manifest_path: str | Path, runs_path: str | Path,
                      out_base: str | Path = EXTERNAL_RESULTS, external_base: str | Path = EXTERNAL_DIR,
                      device: str = "cpu", batch_size: int = 32, max_pixels: int | None = None,
                      cache_dir: str | Path | None = "cache") -> ExternalResult:
    """Score every saved model of ``runs_path`` (current split) on the prepared external set ``name``; rows,
    predictions and curves go to ``<out_base>/<name>/``. The images are read from the decoded caches
    ``prepare --external`` filled in ``<cache_dir>/<name>/`` where they match (:class:`_Images`; None: always
    decoded from the files)."""
    splits = load_splits(splits_path)
    ext = read_external(name, splits.classes, base=external_base)
    check_outside_study(read_manifest(manifest_path), ext, name)
    runs, _ = current_split(read_runs(runs_path), splits.sha256)
    saved = runs[runs.get("model_path", pd.Series("", index=runs.index)).fillna("").astype(str) != ""]
    missing = [p for p in saved["model_path"] if not all(Path(f).exists() for f in model_files(p))]
    images = _Images(ext, max_pixels, cache_dir, name)
    labels = ext["label"].to_numpy(dtype=np.int64)
    records = []
    for row in saved.to_dict("records"):
        if row["model_path"] in missing:
            continue
        if splits.labels:  # a multi-label run: one binary head per label, or one network with a sigmoid per label
            test = (list(ext["id"]), manifest_matrix(ext, splits.labels), _label_proba(row, splits.labels, images,
                                                                                      batch_size, device))
            records.append(record_multilabel_external(row, labels=splits.labels, test=test,
                                                      test_set=external_test_set(name)))
            continue
        proba = _proba(Path(row["model_path"]), images, batch_size, device)
        test = Outputs(list(ext["id"]), labels, proba)
        records.append(record_external(row, classes=splits.classes, test=test, test_set=external_test_set(name)))
    out = Path(out_base) / name
    out.mkdir(parents=True, exist_ok=True)
    table = write_records(out, records) if records else read_runs(out / RUNS_CSV)
    return ExternalResult(name, table, len(ext), unsaved=len(runs) - len(saved), missing=missing,
                          internal=saved[~saved["model_path"].isin(missing)], sources=dict(images.sources))
