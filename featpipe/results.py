"""The results table ``results/runs.csv`` and what is derived from it.

One row per (dataset, backbone, weights, layer, head, head_params, shots, seed): writing a row whose
key is already there **replaces** it (a re-run never duplicates). Writes take a lock file beside the
table, go to a temporary file and are renamed into place, so a crash or a concurrent writer (the
fine-tuning stage writes rows with ``head = "finetune:<strategy>"``) never leaves a half-written table.

``results/metrics.json`` (for ``dvc metrics show``) is always recomputed from the whole table:
per configuration, each metric's mean/std/95% interval/min/max/spread across seeds and the
clinical-grade flag. Per-run ROC/PR points go to ``results/curves/<run>.json`` for the report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from featpipe.fileio import atomic_write
from featpipe.metrics import SCALAR_METRICS, SUMMARY_METRICS, clinical_grade, summarize

KEY_COLUMNS = ("dataset", "backbone", "weights", "layer", "head", "head_params", "shots", "seed")
PROVENANCE_COLUMNS = ("split_sha256", "ids_sha256", "n_classes", "n_train", "n_test")
RUNS_CSV = "runs.csv"
METRICS_JSON = "metrics.json"


def canonical_params(params: Mapping | str | None) -> str:
    """Head parameters as the canonical JSON string used in the table's key (sorted keys, no spaces)."""
    if params is None:
        return "{}"
    if isinstance(params, str):
        params = json.loads(params) if params.strip() else {}
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (tuple, set, np.ndarray)):
        return list(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def _key_frame(df: pd.DataFrame) -> pd.DataFrame:
    for k in KEY_COLUMNS:
        if k not in df.columns:
            raise ValueError(f"a results row needs the key column '{k}'")
    df = df.copy()
    for k in ("dataset", "backbone", "weights", "layer", "head"):
        df[k] = df[k].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)).astype(object)
    df["head_params"] = df["head_params"].map(canonical_params).astype(object)
    df["shots"] = df["shots"].astype(np.int64)
    df["seed"] = df["seed"].astype(np.int64)
    return df


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a+") as fh:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        yield


def read_runs(path: str | Path) -> pd.DataFrame:
    """The table (empty frame with the key columns when it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(KEY_COLUMNS))
    df = pd.read_csv(path, dtype={k: str for k in ("dataset", "backbone", "weights", "layer", "head", "head_params")},
                     keep_default_na=True)
    for k in ("dataset", "backbone", "weights", "layer", "head"):
        if k in df.columns:
            df[k] = df[k].fillna("").astype(object)
    return df


def _order(columns: Iterable[str]) -> list[str]:
    cols = list(dict.fromkeys(columns))
    first = [c for c in (*KEY_COLUMNS, *PROVENANCE_COLUMNS, *SCALAR_METRICS) if c in cols]
    last = [c for c in ("model_path",) if c in cols]
    middle = [c for c in cols if c not in first and c not in last]
    return first + middle + last


def upsert_runs(path: str | Path, rows: Iterable[Mapping]) -> pd.DataFrame:
    """Insert ``rows`` into the table at ``path``, replacing rows with the same key; returns the table.

    A row is a mapping with at least :data:`KEY_COLUMNS` (``layer`` may be None/"" and
    ``head_params`` a dict), usually also :data:`PROVENANCE_COLUMNS`, the metrics of
    :func:`featpipe.metrics.score` (scalars only) and ``model_path``.
    """
    path = Path(path)
    new = pd.DataFrame([dict(r) for r in rows])
    if new.empty:
        return read_runs(path)
    new = _key_frame(new)
    if new.duplicated(list(KEY_COLUMNS)).any():
        raise ValueError("two rows with the same key in one write")
    with _locked(path):
        old = read_runs(path)
        if len(old):
            old = _key_frame(old)
            df = pd.concat([old, new], ignore_index=True)
        else:
            df = new
        df = df.drop_duplicates(list(KEY_COLUMNS), keep="last")
        df = df.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)
        df = df[_order(df.columns)]
        atomic_write(path, df.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
    return df


def config_name(row: Mapping, *, with_seed: bool = False) -> str:
    """Readable, file-name-safe name of a configuration: ``dataset/backbone[@layer][+weights]/head/kK[/sS]``."""
    back = str(row["backbone"])
    if row.get("layer"):
        back += f"@{row['layer']}"
    if row.get("weights") and row["weights"] not in ("default",):
        back += f"+{row['weights']}"
    name = f"{row['dataset']}/{back}/{row['head']}/k{int(row['shots'])}"
    return name + (f"/s{int(row['seed'])}" if with_seed else "")


def params_tag(head_params: Mapping | str | None) -> str:
    return hashlib.sha256(canonical_params(head_params).encode()).hexdigest()[:8]


def write_curves(curves_dir: str | Path, row: Mapping, data: Mapping) -> Path:
    """ROC/PR points of one run as ``<curves_dir>/<config>-s<seed>-<paramshash>.json``."""
    d = Path(curves_dir)
    d.mkdir(parents=True, exist_ok=True)
    stem = config_name(row, with_seed=True).replace("/", "-").replace(":", "_")
    path = d / f"{stem}-{params_tag(row.get('head_params'))}.json"
    atomic_write(path, json.dumps({"config": config_name(row), "seed": int(row["seed"]), "curves": data}))
    return path


def summarize_runs(df: pd.DataFrame, *, clinical, metrics: Iterable[str] = SUMMARY_METRICS) -> dict:
    """{config name: {metric: summarize(...), "n_seeds", "clinical_grade", "head_params"}} from the table."""
    if df.empty:
        return {}
    df = _key_frame(df)
    group_cols = [c for c in KEY_COLUMNS if c != "seed"]
    out: dict = {}
    groups = list(df.groupby(group_cols, sort=True, dropna=False))
    names = [config_name(dict(zip(group_cols, key))) for key, _ in groups]
    for (key, g), name in zip(groups, names):
        row = dict(zip(group_cols, key))
        if names.count(name) > 1:
            name += f"#{params_tag(row['head_params'])}"
        entry = {m: summarize(g[m].astype(float)) for m in metrics if m in g.columns}
        if "n_classes" in g.columns and g["n_classes"].notna().any():
            n_classes = int(g["n_classes"].dropna().iloc[0])
        else:
            n_classes = 2 if ("sensitivity" in g.columns and g["sensitivity"].notna().any()) else 3
        entry["n_seeds"] = int(g["seed"].nunique())
        entry["clinical_grade"] = clinical_grade(entry, n_classes=n_classes, params=clinical)
        entry["head_params"] = row["head_params"]
        out[name] = entry
    return out


def write_metrics_json(results_dir: str | Path, *, clinical) -> Path:
    """Recompute ``<results_dir>/metrics.json`` from ``<results_dir>/runs.csv`` (NaN written as null)."""
    d = Path(results_dir)
    summary = summarize_runs(read_runs(d / RUNS_CSV), clinical=clinical)

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    d.mkdir(parents=True, exist_ok=True)
    path = d / METRICS_JSON
    atomic_write(path, json.dumps(clean(summary), indent=1, sort_keys=True))
    return path


def format_summary(summary: Mapping[str, Mapping]) -> str:
    """Plain-text tables (one per configuration): metric, mean, std, 95% CI, min, max, spread."""
    lines = []
    for name, entry in summary.items():
        lines.append(f"{name}  ({entry.get('n_seeds', '?')} seeds; clinical-grade: "
                     f"{'yes' if entry.get('clinical_grade') else 'no'})")
        lines.append(f"  {'metric':<18}{'mean':>8}{'std':>8}   {'95% CI':<17}{'min':>8}{'max':>8}{'spread':>8}")
        for metric, s in entry.items():
            if not isinstance(s, Mapping) or "mean" not in s or s.get("n", 0) == 0:
                continue
            ci = "-" if not math.isfinite(s["ci_low"]) else f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
            std = "-" if not math.isfinite(s["std"]) else f"{s['std']:.3f}"
            lines.append(f"  {metric:<18}{s['mean']:>8.3f}{std:>8}   {ci:<17}{s['min']:>8.3f}{s['max']:>8.3f}"
                         f"{s['spread']:>8.3f}")
    return "\n".join(lines)
