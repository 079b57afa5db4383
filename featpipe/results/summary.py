"""Summaries of the results table: configurations across seeds, selection on val, ``metrics.json``.

The table itself (``runs.csv``, its key, the per-run predictions and curves files) is written by
:mod:`featpipe.evaluation.table`; everything here is derived from its rows.

``results/summary.json`` and its headline ``results/metrics.json`` (for ``dvc metrics show``: per shot count
the configuration chosen on val and its test metric) are always recomputed from the table's rows **of the
current splits file** (its sha256): rows of another split are set aside, counted under ``_provenance``,
never pooled. Per configuration in ``summary.json``: each metric's mean/std/interval/min/max/spread across seeds (test and
``val_``; :func:`featpipe.results.stats.seed_summary`), the number of degenerate runs, whether it is the
configuration chosen on val at its shot count, and the clinical-grade flag with the conditions it failed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from featpipe.core.errors import DataError
from featpipe.core.fileio import atomic_write, file_sha256
from featpipe.core.locks import build_lock
from featpipe.core.names import config_name, params_tag
from featpipe.evaluation.metrics import SUMMARY_METRICS
from featpipe.evaluation.table import KEY_COLUMNS, RUNS_CSV, key_frame, read_runs
from featpipe.results.ece_interval import ece_interval
from featpipe.results.predictions import TestPredictions
from featpipe.results.stats import Sampling, clinical_failures, n_classes_of, seed_summary, split_sizes, test_size

METRICS_JSON = "metrics.json"  # the headline numbers (dvc metrics show)
SUMMARY_JSON = "summary.json"  # every configuration's summary
LOWER_IS_BETTER = ("brier",)


def current_split(df: pd.DataFrame, split_sha256: str | None) -> tuple[pd.DataFrame, str]:
    """(rows of the split ``split_sha256``, a one-line note on the rows set aside, "" when none).

    ``split_sha256=None`` keeps every row (callers that know only their own fresh runs)."""
    if df.empty or not split_sha256 or "split_sha256" not in df.columns:
        return df, ""
    same = df["split_sha256"].fillna("").astype(str) == split_sha256
    n_other = int((~same).sum())
    if not n_other:
        return df[same], ""
    others = sorted(set(df.loc[~same, "split_sha256"].fillna("").astype(str)))
    names = ", ".join((o[:12] or "none recorded") for o in others[:3]) + (" ..." if len(others) > 3 else "")
    note = (f"{n_other} run(s) of another split set aside (split sha256 {names}; current {split_sha256[:12]}): "
            f"not pooled; re-run them or delete them from runs.csv")
    return df[same], note


def split_note(results_dir: str | Path, split_sha256: str) -> str:
    """The one line saying how many rows of ``<results_dir>/runs.csv`` belong to another split ("" if none)."""
    return current_split(read_runs(Path(results_dir) / RUNS_CSV), split_sha256)[1]


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def summarize_runs(df: pd.DataFrame, *, clinical, split_sha256: str | None = None, select_metric: str | None = None,
                   metrics: Iterable[str] = SUMMARY_METRICS, sampling: Sampling | None = None) -> dict:
    """{config name: {metric: seed_summary(...), "val_<metric>": ..., "n_seeds", "n_degenerate", "chosen_on_val",
    "clinical_grade", "clinical_failed", "head_params", "shots"}} from the rows of ``split_sha256``.

    ``chosen_on_val``: the configuration with the best mean ``val_<select_metric>`` among those with no
    degenerate run, per (dataset, shots); only that one can be clinical-grade. ``sampling``: the test-sampling
    variance from the predictions (:func:`featpipe.results.stats.seed_summary`), applied to the configurations
    chosen on val (to every one without ``select_metric``); elsewhere the test units are images.
    ``test_size`` says what the clinical flag's lower bounds rest on."""
    df, _ = current_split(df, split_sha256)
    if df.empty:
        return {}
    labels = config_labels(df).to_numpy()
    df = config_frame(df).assign(_label=labels)
    group_cols = [c for c in KEY_COLUMNS if c != "seed"]
    out: dict = {}
    groups = list(df.groupby(group_cols, sort=True, dropna=False))
    names = [config_name({**dict(zip(group_cols, key)), "fraction": _first(g, "fraction")}) for key, g in groups]
    metrics = list(metrics) + ([select_metric] if select_metric and select_metric not in metrics else [])
    frames: dict = {}
    for (key, g), name in zip(groups, names):
        row = dict(zip(group_cols, key))
        if names.count(name) > 1:
            name += f"#{params_tag([row['head_params'], row['weights_id'], row['split_sha256']])}"
        n_classes, sizes = n_classes_of(g), split_sizes(g)
        entry = {m: seed_summary(g, m, n_classes=n_classes, sizes=sizes) for m in metrics if m in g.columns}
        entry |= {f"val_{m}": seed_summary(g, f"val_{m}", n_classes=n_classes, sizes=sizes)
                  for m in metrics if f"val_{m}" in g.columns}
        entry["n_seeds"] = int(g["seed"].nunique())
        entry["n_degenerate"] = int(_flags(g).sum())
        entry["n_classes"] = n_classes
        entry["config"] = str(g["_label"].iloc[0])
        entry["shots"] = int(row["shots"])
        entry["head_params"] = row["head_params"]
        entry["capped"] = _capped(g)
        if _first(g, "fraction") is not None:  # a training-set fraction: shots is the subset's size
            entry["fraction"] = float(_first(g, "fraction"))
            entry["images_per_class"] = str(_first(g, "images_per_class") or "")
        out[name], frames[name] = entry, g
    chosen = select_best(out, select_metric) if select_metric else {}
    for name, entry in out.items():
        entry["chosen_on_val"] = name in chosen.values() if select_metric else None
        if entry["chosen_on_val"]:
            entry["selection_note"] = selection_metric(out, select_metric, entry["shots"])[1]
        if sampling is not None and entry["chosen_on_val"] is not False:
            g = frames[name]
            sizes = split_sizes(g)
            entry |= {m: seed_summary(g, m, n_classes=entry["n_classes"], sampling=sampling, sizes=sizes)
                      for m in metrics if m in g.columns}
        failed = clinical_failures(entry, n_classes=entry["n_classes"], params=clinical, chosen_on_val=entry["chosen_on_val"])
        entry["clinical_grade"] = not failed
        entry["clinical_rule"] = getattr(clinical, "rule", "featpipe")
        entry["clinical_failed"] = failed
        entry["test_size"] = test_size(entry.get("accuracy", {}))
    return out


def _first(g: pd.DataFrame, col: str):
    """The first non-empty value of ``col`` in ``g`` (None when the column is absent or empty)."""
    if col not in g.columns:
        return None
    vals = [v for v in g[col] if v is not None and v == v and v != ""]
    return vals[0] if vals else None


def _capped(g: pd.DataFrame) -> str:
    """The rows' capping to the class size ("normal=150"; "" when k images of every class were used)."""
    if "capped" not in g.columns:
        return ""
    vals = [v for v in g["capped"] if isinstance(v, str) and v]  # empty cells read back as NaN
    return vals[0] if vals else ""


def config_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The table with key columns normalised for grouping runs into configurations: scratch fine-tuning's
    per-seed initialisation (``random:seed<n>``) is one configuration across seeds."""
    df = key_frame(df)
    df["weights_id"] = df["weights_id"].str.replace(r"^random:seed\d+(?=$|@)", "random:seed<run>", regex=True)
    return df


NAME_COLUMNS = ("dataset", "backbone", "weights", "layer", "head", "shots", "fraction")  # config_name's


def config_labels(df: pd.DataFrame) -> pd.Series:
    """A configuration name per row, without dataset and shots: ``backbone[@layer][+weights]/head``, plus
    ``#<hash>`` of head params and weights identity where two configurations of the table would collide."""
    f = config_frame(df)
    named = f[[c for c in NAME_COLUMNS if c in f.columns]]  # not the per-class columns (1,000+ with many classes)
    base = [config_name(r).split("/", 1)[1].rsplit("/", 1)[0] for r in named.to_dict("records")]
    ident = [params_tag([hp, w]) for hp, w in zip(f["head_params"], f["weights_id"])]
    seen: dict[str, set] = {}
    for b, i in zip(base, ident):
        seen.setdefault(b, set()).add(i)
    return pd.Series([b + (f"#{i}" if len(seen[b]) > 1 else "") for b, i in zip(base, ident)], index=df.index)


def degenerate_flags(g: pd.DataFrame) -> pd.Series:
    """The ``degenerate`` column as booleans (False where absent)."""
    return _flags(g)


def _flags(g: pd.DataFrame) -> pd.Series:
    if "degenerate" not in g.columns:
        return pd.Series(False, index=g.index)
    return g["degenerate"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0")).astype(bool)


FALLBACK_METRIC = "accuracy"  # defined on any val split, whatever classes it lacks


def _val_mean(e: Mapping, metric: str) -> float:
    v = e.get(f"val_{metric}", {}).get("mean", math.nan) if isinstance(e, Mapping) else math.nan
    return v if isinstance(v, float) and math.isfinite(v) else math.nan


def select_best(summary: Mapping[str, Mapping], metric: str) -> dict[int, str]:
    """{shots: config name} chosen on **val**: best mean ``val_<metric>`` among configurations with no
    degenerate run (ties: first name). At a shot count where ``val_<metric>`` is undefined for every such
    configuration (e.g. AUROC with a class missing from val), the choice falls back to ``val_accuracy``
    (:func:`selection_metric` gives the line that says so). Shots where no configuration qualifies are left out."""
    best: dict[int, tuple[float, str]] = {}
    ok = {n: e for n, e in summary.items() if isinstance(e, Mapping) and "shots" in e and not e.get("n_degenerate", 0)}
    for k in sorted({int(e["shots"]) for e in ok.values()}):
        m = selection_metric(ok, metric, k)[0]
        for name in sorted(n for n, e in ok.items() if int(e["shots"]) == k):
            v = _val_mean(ok[name], m)
            if math.isfinite(v) and (k not in best or _better(m, v, best[k][0])):
                best[k] = (v, name)
    return {k: n for k, (_, n) in sorted(best.items())}


def selection_metric(summary: Mapping[str, Mapping], metric: str, shots: int) -> tuple[str, str]:
    """(metric the choice at ``shots`` uses, "" or the line saying it fell back to val accuracy)."""
    at_k = [e for e in summary.values()
            if isinstance(e, Mapping) and e.get("shots") == shots and not e.get("n_degenerate", 0)]
    if metric == FALLBACK_METRIC or any(math.isfinite(_val_mean(e, metric)) for e in at_k):
        return metric, ""
    return FALLBACK_METRIC, (f"k = {shots}: val_{metric} is undefined for every configuration (a class is missing "
                             f"from val); chosen on val_{FALLBACK_METRIC} instead")


def write_metrics_json(results_dir: str | Path, *, clinical, split_sha256: str | None = None,
                       select_metric: str | None = None) -> Path:
    """Recompute ``<results_dir>/summary.json`` (every configuration, :func:`summarize_runs`) and the small
    ``<results_dir>/metrics.json`` that ``dvc metrics show`` and ``dvc exp show`` print (:func:`headline`)
    from ``<results_dir>/runs.csv`` (rows of ``split_sha256`` only; NaN written as null). ``_provenance`` (in
    both) records the split, the selection rule, what was set aside and ``runs_sha256``, the hash of the table
    they summarise (:func:`check_metrics_json`). Done under the table's lock, so the last writer's summary is of
    the last table. Returns the path of ``metrics.json``."""
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    with build_lock(d / RUNS_CSV, what="the results table"):
        table = read_runs(d / RUNS_CSV)
        kept, note = current_split(table, split_sha256)
        summary = summarize_runs(kept, clinical=clinical, select_metric=select_metric)
        summary["_provenance"] = {"split_sha256": split_sha256, "runs": int(len(kept)),
                                  "set_aside": int(len(table) - len(kept)), "note": note,
                                  "runs_sha256": _table_sha256(d),
                                  "selection": f"best mean val_{select_metric}, reported on test" if select_metric else None}
        atomic_write(d / SUMMARY_JSON, json.dumps(_clean(summary), indent=1, sort_keys=True))
        path = d / METRICS_JSON
        head = headline(summary, select_metric) | {"_provenance": summary["_provenance"]}
        _add_ece(head, summary, kept, d, select_metric)
        atomic_write(path, json.dumps(_clean(head), indent=1, sort_keys=True))
    return path


def headline(summary: Mapping[str, Mapping], metric: str | None) -> dict:
    """The few numbers of a study (``metrics.json``): per shot count ``k<k>``, the configuration chosen on val
    and its test ``metric`` (mean and 95% seed interval) and clinical-grade flag; the run and configuration
    counts (:func:`write_metrics_json` adds the chosen configuration's test ECE with its interval, where it has one).
    Everything else is in ``summary.json``."""
    prov = summary.get("_provenance", {})
    entries = [e for n, e in summary.items() if not n.startswith("_")]
    out: dict = {"metric": metric, "clinical_rule": entries[0].get("clinical_rule") if entries else None,
                 "runs": prov.get("runs"), "set_aside": prov.get("set_aside"),
                 "configurations": len({e["config"] for n, e in summary.items() if not n.startswith("_")})}
    if metric:
        for k, name in select_best({n: e for n, e in summary.items() if not n.startswith("_")}, metric).items():
            e, s = summary[name], summary[name].get(metric, {})
            key = _key(e, k)
            out[key] = {"chosen": e["config"], metric: s.get("mean"), "ci_low": s.get("ci_low"),
                            "ci_high": s.get("ci_high"), "seeds": e.get("n_seeds"), "clinical_grade": e.get("clinical_grade")}
            if e.get("capped"):
                out[key]["capped"] = e["capped"]
            if e.get("fraction") is not None:
                out[key]["images"] = int(k)
    return out


def _key(e: Mapping, k: int) -> str:
    return f"f{e['fraction']:g}" if e.get("fraction") is not None else f"k{k}"


def _add_ece(head: dict, summary: Mapping, runs: pd.DataFrame, results_dir: Path, metric: str | None) -> None:
    """``head[k<k>]["ece"]``: the chosen configuration's mean test ECE with its bootstrap interval and seeds
    (:func:`featpipe.results.ece_interval.ece_interval`, test units = images: no manifest here) where its runs have
    calibrated outputs and kept test predictions; ``head["ece_interval"]``: the interval's method and units, once."""
    if not metric or runs.empty or "ece" not in runs.columns or "run_id" not in runs.columns:
        return
    classes = [c[3:-1] for c in runs.columns if c.startswith("f1[")]
    preds = TestPredictions(results_dir, pd.DataFrame({"id": [], "patient_id": []}), classes)
    labels, shots = config_labels(runs).to_numpy(), runs["shots"].astype(int).to_numpy()
    entries = {n: e for n, e in summary.items() if not n.startswith("_")}
    for k, name in select_best(entries, metric).items():
        rows = runs[(labels == entries[name]["config"]) & (shots == k)]
        if pd.to_numeric(rows["ece"], errors="coerce").notna().all() and _key(entries[name], k) in head:
            got = ece_interval(preds, rows["run_id"].astype(str).tolist())
            if got:  # how the interval was made, once for the file (one column in `dvc metrics show`, not one per k)
                head["ece_interval"] = {"method": got.pop("method"), "units": got.pop("units")}
                head[_key(entries[name], k)]["ece"] = got


def _clean(v):
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _table_sha256(results_dir: Path) -> str | None:
    table = results_dir / RUNS_CSV
    return file_sha256(table) if table.is_file() else None


def check_metrics_json(results_dir: str | Path) -> None:
    """One-line :class:`DataError` when ``<results_dir>/metrics.json`` does not summarise the ``runs.csv``
    beside it (a write of one was interrupted before the other); nothing when it does, is absent or was
    written before metrics.json recorded the table's hash."""
    d = Path(results_dir)
    path = d / METRICS_JSON
    if not path.is_file():
        return
    try:
        prov = json.loads(path.read_text(encoding="utf-8")).get("_provenance", {})
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise DataError(f"{path} is damaged: re-run 'featpipe collect' (or the stage that wrote {d / RUNS_CSV})") from None
    if isinstance(prov, dict) and "runs_sha256" in prov and prov["runs_sha256"] != _table_sha256(d):
        raise DataError(f"{path} does not summarise {d / RUNS_CSV} (written from another version of the table): "
                        f"re-run 'featpipe collect' (or the stage that wrote it)")


def degenerate_lines(rows: Iterable[Mapping], limit: int = 10) -> list[str]:
    """CLI warning lines for degenerate runs (at most ``limit``, then a count)."""
    bad = [r for r in rows if str(r.get("degenerate", "")).lower() in ("true", "1", "1.0")]
    lines = [f"warning: {config_name(r, with_seed=True)} is degenerate ({r.get('degenerate_reason', '')}): "
             "its numbers describe a constant; never chosen as best" for r in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"warning: {len(bad) - limit} more degenerate runs (column 'degenerate' in runs.csv)")
    return lines


PER_CLASS_METRICS = ("precision", "recall", "f1")


def per_class_summary(df: pd.DataFrame, summary: Mapping[str, Mapping], metric: str) -> list[dict]:
    """Per class, for the configuration chosen on val at each shot count (:func:`select_best` on ``summary``,
    made by :func:`summarize_runs` from the same rows ``df``): ``{"shots", "config", "class", "precision",
    "recall", "f1"}``, each metric a :func:`featpipe.results.stats.seed_summary` over seeds of the test
    columns ``<metric>[<class>]``."""
    chosen = select_best(summary, metric) if len(df) else {}
    if not chosen:
        return []
    labels = config_labels(df).to_numpy()
    shots = df["shots"].astype(int).to_numpy()
    classes = [c[3:-1] for c in df.columns if c.startswith("f1[")]
    out = []
    for k, name in chosen.items():
        g = df[(labels == summary[name]["config"]) & (shots == k)]
        for cls in classes:
            e = summary[name]
            subset = f"f{e['fraction']:g}" if e.get("fraction") is not None else str(k)
            out.append({"shots": k, "subset": subset, "config": e["config"], "class": cls,
                        **{m: seed_summary(g, f"{m}[{cls}]") for m in PER_CLASS_METRICS}})
    return out


def _mean_ci(s: Mapping) -> str:
    if not s or not s.get("n"):
        return "-"
    ci = f" [{s['ci_low']:.3f}, {s['ci_high']:.3f}]" if math.isfinite(s.get("ci_low", math.nan)) else ""
    return f"{s['mean']:.3f}{ci}"


def format_per_class(rows: Iterable[Mapping]) -> str:
    """One plain-text table: per shot count and class, the val-chosen configuration's test precision, recall
    and F1 (mean [95% interval] over seeds)."""
    rows = list(rows)
    if not rows:
        return ""
    lines = ["per class, configuration chosen on val at each shot count (test; mean [95% CI] over seeds):",
             f"  {'k / f':>5}  {'class':<16}{'precision':<24}{'recall':<24}{'F1':<24}configuration"]
    for r in rows:
        lines.append(f"  {r['subset']:>5}  {str(r['class'])[:15]:<16}{_mean_ci(r['precision']):<24}"
                     f"{_mean_ci(r['recall']):<24}{_mean_ci(r['f1']):<24}{r['config']}")
    return "\n".join(lines)


def format_summary(summary: Mapping[str, Mapping]) -> str:
    """Plain-text tables (one per configuration): metric, mean, std, the 95% headline interval (seed and test
    luck), min, max, spread."""
    lines = []
    for name, entry in summary.items():
        if name.startswith("_"):
            continue
        flag = f"yes, {entry.get('test_size', '')}" if entry.get("clinical_grade") else "no"
        if entry.get("clinical_failed"):
            flag += " (" + "; ".join(entry["clinical_failed"]) + ")"
        degen = f"; {entry['n_degenerate']} degenerate run(s)" if entry.get("n_degenerate") else ""
        cap = f"; capped to the class size: {entry['capped']}" if entry.get("capped") else ""
        if entry.get("fraction") is not None:
            cap += f"; {entry['shots']} training images: {entry.get('images_per_class', '')}"
        rule = "" if entry.get("clinical_rule", "featpipe") == "featpipe" else f" ({entry['clinical_rule']} rule)"
        lines.append(f"{name}  ({entry.get('n_seeds', '?')} seeds{degen}{cap}; clinical-grade{rule}: {flag})")
        if entry.get("selection_note"):
            lines.append(f"  note: {entry['selection_note']}")
        lines.append(f"  {'metric':<22}{'mean':>8}{'std':>8}   {'95% CI (both)':<17}{'seeds':<17}{'test':<17}"
                     f"{'min':>8}{'max':>8}{'spread':>8}")

        def pair(s, lo, hi):
            return "-" if not math.isfinite(s.get(lo, math.nan)) else f"[{s[lo]:.3f}, {s[hi]:.3f}]"

        for metric, s in entry.items():
            if not isinstance(s, Mapping) or "mean" not in s or s.get("n", 0) == 0:
                continue
            std = "-" if not math.isfinite(s["std"]) else f"{s['std']:.3f}"
            lines.append(f"  {metric:<22}{s['mean']:>8.3f}{std:>8}   {pair(s, 'ci_low', 'ci_high'):<17}"
                         f"{pair(s, 'seed_low', 'seed_high'):<17}{pair(s, 'test_low', 'test_high'):<17}"
                         f"{s['min']:>8.3f}{s['max']:>8.3f}{s['spread']:>8.3f}")
    return "\n".join(lines)
