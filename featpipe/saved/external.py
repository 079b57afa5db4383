"""Every saved model of the study scored on an external test set (``featpipe evaluate-external``).

The runs are the rows of the study's results table (current split) that saved a model (``model_path``): frozen heads
and fine-tuned networks alike. Each is loaded by :func:`featpipe.saved.load.load_model` (a head's backbone rebuilt
and checked against its sidecar), the external images (``data/external/<name>/manifest.csv``, labels mapped to the
study's classes) are decoded as ``predict`` decodes them, and each run is scored with its own val-chosen threshold
by :func:`featpipe.evaluation.record.record_external`: the same metrics as its internal row, in a row of its own
(``test_set = external:<name>``) in ``results/external/<name>/runs.csv`` with its predictions beside it. Heads on
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
from featpipe.core.errors import DataError
from featpipe.data.external import EXTERNAL_DIR, check_outside_study, read_external
from featpipe.data.manifest import read_manifest
from featpipe.data.splits import load_splits
from featpipe.evaluation.record import Outputs, record_external
from featpipe.evaluation.table import RUNS_CSV, read_runs, write_records
from featpipe.heads.io import load_head
from featpipe.results.stats import seed_summary
from featpipe.results.summary import config_labels, current_split
from featpipe.saved.load import head_proba, load_model
from featpipe.saved.models import kind_of

RESULTS_DIR = Path("results/external")


def test_set_name(name: str) -> str:
    """The ``test_set`` value of rows scored on the external set ``name``."""
    return f"external:{name}"


@dataclass
class ExternalResult:
    name: str
    table: pd.DataFrame  # results/external/<name>/runs.csv
    n_images: int
    unsaved: int = 0  # study rows without a saved model (not scored)
    missing: list = field(default_factory=list)  # model files named by rows but not found
    internal: pd.DataFrame | None = None  # the study's rows of the scored runs (for the side-by-side lines)

    def lines(self) -> list[str]:
        out = [f"external set '{self.name}': {len(self.table)} run(s) scored on {self.n_images} images"]
        out += side_by_side(self.internal, self.table, self.name) if self.internal is not None else []
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
    both = pd.concat([internal.assign(_set="internal"), external.assign(_set=name)], ignore_index=True)
    both["_config"] = config_labels(both).to_numpy()
    head = "  ".join(f"{m + ' ' + s:>28s}" for m in metrics for s in ("internal", name[:19]))
    out = [f"  {'configuration':40s} {'k':>4s}  {head}"]
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
    precision)."""

    def __init__(self, paths: list[str], max_pixels: int | None):
        self.paths, self.max_pixels = paths, max_pixels
        self._pixels: dict[str, list] = {}
        self._emb: dict[tuple, np.ndarray] = {}

    def pixels(self, decoding) -> list:
        key = repr(decoding)
        if key not in self._pixels:
            _, pixels, bad = decode_files(self.paths, decoding, max_pixels=self.max_pixels)
            if bad:
                raise DataError(f"external image {bad[0]['path']} no longer decodes ({bad[0]['reason']}): rerun "
                                "'featpipe prepare --external'")
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


def evaluate_external(name: str, *, splits_path: str | Path, manifest_path: str | Path, runs_path: str | Path,
                      out_base: str | Path = RESULTS_DIR, external_base: str | Path = EXTERNAL_DIR,
                      device: str = "cpu", batch_size: int = 32, max_pixels: int | None = None) -> ExternalResult:
    """Score every saved model of ``runs_path`` (current split) on the prepared external set ``name``; rows,
    predictions and curves go to ``<out_base>/<name>/``."""
    splits = load_splits(splits_path)
    ext = read_external(name, splits.classes, base=external_base)
    check_outside_study(read_manifest(manifest_path), ext, name)
    runs, _ = current_split(read_runs(runs_path), splits.sha256)
    saved = runs[runs.get("model_path", pd.Series("", index=runs.index)).fillna("").astype(str) != ""]
    missing = [p for p in saved["model_path"] if not Path(p).exists()]
    images = _Images(list(ext["path"]), max_pixels)
    labels = ext["label"].to_numpy(dtype=np.int64)
    records = []
    for row in saved.to_dict("records"):
        if row["model_path"] in missing:
            continue
        proba = _proba(Path(row["model_path"]), images, batch_size, device)
        test = Outputs(list(ext["id"]), labels, proba)
        records.append(record_external(row, classes=splits.classes, test=test, test_set=test_set_name(name)))
    out = Path(out_base) / name
    out.mkdir(parents=True, exist_ok=True)
    table = write_records(out, records) if records else read_runs(out / RUNS_CSV)
    return ExternalResult(name, table, len(ext), unsaved=len(runs) - len(saved), missing=missing,
                          internal=saved[~saved["model_path"].isin(missing)])
