"""``featpipe report``: one self-contained offline HTML page (images, chart data and scripts inlined) plus the
plots as PNG files. The page is a list of :class:`~featpipe.report.html.Section` (summary first); a new section
is one more entry in :func:`build_report`'s list.

Everything is derived from files earlier stages wrote: the manifest, splits and rejects, the results
table and per-run curve files, fine-tuning training curves, Grad-CAM grids and the feature caches'
provenance attributes. Nothing is recomputed from images.
"""

from __future__ import annotations

import base64
import html
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import yaml

from featpipe.core.errors import ConfigError, DataError
from featpipe.core.fileio import atomic_write
from featpipe.core.locks import clean_leftovers
from featpipe.core.names import proba_column
from featpipe.core.versions import versions as core_versions
from featpipe.data.manifest import read_manifest
from featpipe.data.fractions import fraction_lines
from featpipe.data.splits import capping_lines, load_splits
from featpipe.evaluation.metrics import curves
from featpipe.evaluation.table import read_predictions, read_runs
from featpipe.params.config import Params, to_dict
from featpipe.report import comparisons, interactive, overview, plots, selection
from featpipe.report.calibration import calibration_section
from featpipe.report.external import external_section
from featpipe.report.html import Section, folded, page, table
from featpipe.report.subgroups import subgroup_section
from featpipe.report.multilabel import label_curves, multilabel_section
from featpipe.report.textprior import textprior_section
from featpipe.results.predictions import TestPredictions
from featpipe.results.summary import check_metrics_json, current_split

CURVE_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "auroc", "auprc")


@dataclass
class ReportInputs:
    manifest: Path
    splits: Path
    results: Path
    out: Path
    rejects: Optional[Path] = None
    cache_dir: Optional[Path] = None
    gradcam_dir: Optional[Path] = None
    splits_sha: str = ""
    external_dir: Path = Path("data/external")  # prepared external test sets (evaluate.external)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _fmt(x, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def _dataset_section(inp: ReportInputs, splits: dict) -> str:
    classes = splits["classes"]
    rows = [[part, sum(splits["counts"][part].values()), *[splits["counts"][part].get(c, 0) for c in classes],
             splits["patients"][part]] for part in ("train", "val", "test")]
    out = [table(["split", "images", *classes, "patients"], rows)]
    out += [f"<p class=\"note\"><b>{html.escape(line)}</b>.</p>"
            for line in capping_lines(splits.get("capped", {})) + fraction_lines(splits.get("fractions", {}))]
    rejects = pd.read_csv(inp.rejects) if inp.rejects and inp.rejects.is_file() else pd.DataFrame(columns=["reason"])
    if len(rejects):
        counts = rejects["reason"].value_counts()
        out.append(f"<p>{len(rejects)} files rejected (see <code>{html.escape(str(inp.rejects))}</code>):</p>")
        out.append(table(["reason", "files"], [[r, n] for r, n in counts.items()]))
    else:
        out.append("<p>No file was rejected.</p>")
    if splits.get("excluded"):
        out.append(f"<p>{len(splits['excluded'])} images were left out of train/val because their patient or an identical "
                   f"file is in a later split.</p>")
    src = splits.get("source", {})
    out.append(f"<p>Test split: {html.escape(str(src.get('test', '?')))}; val split: {html.escape(str(src.get('val', '?')))}. "
               f"Split hash (sha256 of the splits file): <code>{html.escape(inp.splits_sha)}</code>; manifest sha256 "
               f"<code>{html.escape(splits['manifest_sha256'])}</code>.</p>")
    return "".join(out)


def _shot_unit_note(splits: dict) -> str:
    """What one shot is (``split.shot_unit`` as recorded in splits.json; files without it: images)."""
    if splits.get("params", {}).get("shot_unit", "image") == "patient":
        return ("<p>Shots count <b>patients</b>: a k-shot row was fitted on k patients per class with all their images "
                "of that class (<code>split.shot_unit: patient</code>, MedFMC's definition; <code>n_train</code> in "
                "runs.csv gives the images).</p>")
    return ("<p>Shots count <b>images</b>: k images per class, one per patient while patients last "
            "(<code>split.shot_unit: image</code>).</p>")


def _training_curves(results: Path) -> dict[str, list[dict]]:
    """Fine-tuning loss curves (``<results>/**/training/*.json``), seed-0 runs, grouped by strategy."""
    out: dict[str, list[dict]] = {}
    for f in sorted(results.rglob("training/*.json")):
        try:
            d = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if d.get("seed", 0) != 0 or not d.get("epochs"):
            continue
        ep = d["epochs"]
        out.setdefault(d.get("strategy", "?"), []).append({
            "label": f"{d.get('backbone')} k={d.get('shots')}", "epoch": [e["epoch"] for e in ep],
            "train_loss": [e.get("train_loss") for e in ep], "val_loss": [e.get("val_loss") for e in ep]})
    return out


def _provenance(inp: ReportInputs, params: Params) -> str:
    libs = {"torch": "torch", "torchvision": "torchvision", "transformers": "transformers", "scikit-learn": "sklearn",
            "numpy": "numpy", "h5py": "h5py", "grad-cam": "pytorch_grad_cam", "dvc": "dvc"}  # shown name: module
    found = core_versions(*libs.values())
    versions = [["featpipe", found["featpipe_version"]], ["python", platform.python_version()]]
    versions += [[pkg, found[f"{mod}_version"] or "not installed"] for pkg, mod in libs.items()]
    out = ["<h3>Software</h3>", table(["package", "version"], versions)]
    caches = sorted(inp.cache_dir.rglob("*.h5")) if inp.cache_dir and inp.cache_dir.is_dir() else []
    rows = []
    for f in caches:
        try:
            import h5py

            with h5py.File(f, "r") as h:
                a = dict(h.attrs)
                if "backbone" not in a:
                    continue
                rows.append([f.name, a.get("backbone"), a.get("weights_id", a.get("weights")), a.get("layer") or "–",
                             a.get("embedding_dim"), a.get("precision"), a.get("device"), a.get("torch_version")])
        except OSError:
            continue
    if rows:
        out += ["<h3>Feature caches</h3>", table(["file", "backbone", "weights", "layer", "dim", "precision", "device", "torch"], rows)]
    out += ["<h3>Parameters</h3>", f"<pre>{html.escape(yaml.safe_dump(to_dict(params), sort_keys=False))}</pre>"]
    return "".join(out)


def _scope(runs: pd.DataFrame, s, set_aside: str) -> str:
    policy = s.val_policy
    return (f"<p>Every number below comes from the {len(runs)} runs of the current splits file "
            f"(<code>{html.escape(s.sha256[:12])}</code>). Thresholds, model selection and early stopping used "
            + ("<b>the whole val split</b> (<code>split.val_policy: full</code>): a k-shot row used more labelled "
               "images than k per class (the table below gives each row's count); "
               "<code>split.val_policy: matched</code> keeps to the k-shot budget" if policy != "matched" else
               "<b>a val subset of k images per class</b> per seed and k (<code>split.val_policy: matched</code>, the "
               "true few-shot setting: 2k labelled images per class in all)") + ".</p>"
            + _shot_unit_note(s.raw)
            + (f"<p class=\"note\">{html.escape(set_aside)}.</p>" if set_aside else ""))


def _load_runs(inp: ReportInputs, s, metric: str) -> tuple[pd.DataFrame, str]:
    """The runs of the current split (one-line errors: none, or no column for ``report.metric``) and the note on
    rows set aside."""
    runs, set_aside = current_split(read_runs(inp.results / "runs.csv"), s.sha256)
    if runs.empty:
        raise DataError(f"{inp.results / 'runs.csv'} has no results of the current split {s.sha256[:12]}: "
                        "run 'featpipe sweep' or 'featpipe fit' first" + (f" ({set_aside})" if set_aside else ""))
    runs = runs.reset_index(drop=True)
    runs["layer"] = runs["layer"].fillna("")
    if metric not in runs.columns or f"val_{metric}" not in runs.columns:
        raise ConfigError(f"report.metric {metric!r}: runs.csv has no column {metric!r} and val_{metric} (a per-class "
                          f"metric names one of the classes {', '.join(s.classes)}; tables written before featpipe "
                          "recorded val per-class scores need their runs re-run)")
    return runs, set_aside


def _figure_sections(runs: pd.DataFrame, metric: str, plots_dir: Path) -> tuple[list[Section], int]:
    """The learning curves and the seed lottery (and the middle shot count the per-seed plot shows)."""
    figs = []
    for m in CURVE_METRICS:
        if m in runs.columns and runs[m].notna().any():
            fig = plots.learning_curve(runs, m)
            if m == metric:
                _save(fig, plots_dir / "learning_curve.png")  # the fixed name dvc.yaml's plots list
                fig = plots.learning_curve(runs, m)
            figs.append(_save(fig, plots_dir / f"learning_curve_{m}.png"))
    zero = ("<p class=\"note\">At k = 0 (zero-shot) nothing is labelled: a point's runs are its <b>prompt sets</b> "
            "(zeroshot.prompts), and its interval is over prompt sets, not seeds.</p>") if (runs["shots"] == 0).any() else ""
    spread = _save(plots.lottery_spread(runs, metric), plots_dir / "lottery_spread.png")
    mid = int(min(runs["shots"].unique(), key=lambda k: abs(math.log(max(k, 0.5) / 5))))  # k = 0: zero-shot
    strip = _save(plots.seed_strip(runs, metric, mid), plots_dir / "per_seed.png")
    return [Section("Learning curves", zero + interactive.chart("curve", "curves", "".join(
                _img(f, f.stem.replace("_", " ")) for f in figs)), "curves"),
            Section("The seed lottery", "<p>Spread = best seed minus worst seed, in points of the metric. "
                    "A wide spread means the result depends on which images happened to be labelled.</p>"
                    + interactive.chart("spread", "spread", _img(spread, "lottery spread vs shots"))
                    + _img(strip, f"per-seed results at {plots.subset_words(runs, mid)}"), "lottery")], mid


def build_report(inp: ReportInputs, params: Params) -> Path:
    """Write the report page (a list of :class:`~featpipe.report.html.Section`, the summary first) and its plots."""
    s = load_splits(inp.splits)
    inp.splits_sha = s.sha256
    check_metrics_json(inp.results)
    for folder in (inp.out.parent, inp.out.parent / "plots"):
        clean_leftovers(folder)  # temporaries of a report killed before its renames, reported
    metric = params.report.metric
    runs, set_aside = _load_runs(inp, s, metric)
    plots_dir = inp.out.parent / "plots"
    preds_manifest = read_manifest(inp.manifest) if inp.manifest.is_file() else None
    preds = TestPredictions(inp.results, preds_manifest, s.classes) if preds_manifest is not None else None
    summary, chosen = selection.summarize(runs, params=params, preds=preds)
    best_html, best = selection.best_configurations(runs, summary, chosen, params=params)
    compare_html, verdicts, floors = comparisons.comparison_section(
        comparisons.read_comparisons(inp.results, runs, params), best, metric,
        comparisons.runners_up(summary, chosen, metric))
    n_configs = len({e["config"] for e in summary.values() if isinstance(e, dict) and "config" in e})
    figure_sections, mid = _figure_sections(runs, metric, plots_dir)
    sections = [
        Section("Summary", overview.summary_section(
            metric=metric, best=best, splits=s, runs=runs, params=params, n_configs=n_configs, verdicts=verdicts,
            warnings=overview.warning_lines(runs, summary, set_aside=set_aside, chosen=chosen, floors=floors)), "summary"),
        Section("Data set", _scope(runs, s, set_aside) + _dataset_section(inp, s.raw), "data"),
        Section("Configurations (the figures' legend)", "<p>Every line, column and row below is one of these "
                "configurations; a label's <code>#hash</code> tells apart configurations that differ only in head "
                "params or weights identity.</p>" + table(plots.LEGEND_HEADER, _folded_legend(runs)), "legend"),
        Section("All configurations", overview.all_configurations_section(summary, metric), "all"),
        *figure_sections,
        Section("Best configuration per shot count (chosen on val, reported on test)", best_html, "best"),
        *[Section(title, part, key) for title, part, key in (
            ("External validation: internal and external test sets side by side", external_section(
                inp.results, runs, best, params=params, classes=s.classes, internal_preds=preds,
                external_dir=inp.external_dir), "external"),
            ("Subgroups", subgroup_section(inp.results, runs, best, params=params, classes=s.classes,
                                           manifest=preds_manifest, external_dir=inp.external_dir) if preds else "",
             "subgroups")) if part],
        Section("Is A better than B? Paired comparisons", compare_html, "comparisons"),
        *([Section("Per-label results", multilabel_section(runs, s.raw, best), "labels")] if s.labels else []),
        Section("Degenerate runs", selection.degenerate_section(runs), "degenerate"),
        Section("Calibration", calibration_section(runs, inp.results, s.classes, save=_save, img=_img,
                                                   plots_dir=plots_dir), "calibration"),
        *([Section("Text prior against the plain logistic head", prior, "textprior")]
          if (prior := textprior_section(runs, metric)) else []),
        Section("ROC and precision-recall curves of the best runs", _roc_section(inp, runs, s, best, mid, plots_dir), "roc"),
    ]
    training = _training_curves(inp.results)
    if training:
        sections.append(Section("Fine-tuning training curves", "".join(
            _img(_save(plots.training_curves(curves, title=f"Fine-tuning {strategy}: loss per epoch (seed 0 runs; dashed = val)"),
                       plots_dir / f"training_{strategy}.png"), f"training curves, {strategy}")
            for strategy, curves in training.items()), "training"))
    grids = sorted(inp.gradcam_dir.rglob("grid*.png")) if inp.gradcam_dir and inp.gradcam_dir.is_dir() else []
    sections.append(Section("Grad-CAM", "".join(_img(g, f"Grad-CAM: {g.parent.name}") for g in grids)
                            or "<p>No Grad-CAM grids were rendered.</p>", "gradcam"))
    sections.append(Section("Provenance", _provenance(inp, params), "provenance"))
    _write_dvc_plot_data(runs, metric, plots_dir)
    data = interactive.data_script(interactive.chart_data(runs, CURVE_METRICS, metric))
    atomic_write(inp.out, page(params.report.title, s.dataset, sections, data=data, scripts=[interactive.SCRIPT],
                               css=interactive.CSS))
    return inp.out


def _folded_legend(runs: pd.DataFrame) -> list[list]:
    """The legend rows with long cells (head params JSON, weights identities) folded into a details element."""
    return [[*r[:4], folded(r[4]), r[5], folded(r[6])] for r in plots.legend_rows(runs)]


def _roc_section(inp: ReportInputs, runs: pd.DataFrame, s, best: list[dict], mid: int, plots_dir: Path) -> str:
    """ROC/PR (one line per seed, from the runs' predictions files) and the confusion matrix of the
    val-chosen configuration at the largest shot count (files named ``*_best``, listed in dvc.yaml's
    plots) and at the middle shot count."""
    n_classes = len(s.classes)
    prevalence = None
    if n_classes == 2:
        test_counts = s.raw["counts"]["test"]
        prevalence = test_counts[s.classes[1]] / max(1, sum(test_counts.values()))
    figs, tables = [], []
    if not best:
        return "<p>No configuration was chosen on val.</p>"
    top = max(b["shots"] for b in best)
    for b in sorted((b for b in best if b["shots"] in (top, mid)), key=lambda b: -b["shots"]):
        tag = "best" if b["shots"] == top else f"{b['shots']}_shots"
        pred = read_predictions(inp.results, b["run_ids"])
        pred = pred[pred["split"] == "test"]
        cols = [proba_column(c) for c in s.classes]
        if not set(cols) <= set(pred.columns):  # multi-label runs (p[<label>] per label): ROC/PR per label
            per_label = label_curves(pred)
            if per_label:
                what = f"{b['config']}, {b['shots']} shots, {len(per_label)} seeds (test), per label"
                figs.append(_save(plots.roc_pr_per_class(per_label, title=what), plots_dir / f"roc_pr_labels_{tag}.png"))
                tables.append(_auroc_table(per_label, what, tag))
            continue
        per_seed = [curves(g["label"].to_numpy(), g[cols].to_numpy(float), classes=s.classes)
                    for rid in b["run_ids"] for _, g in [(rid, pred[pred["run_id"] == rid])] if len(g)]
        if not per_seed:
            continue
        title = f"{b['config']}, {b['shots']} shots, {len(per_seed)} seeds (test)"
        fig = (plots.roc_pr(per_seed, title=title, prevalence=prevalence) if n_classes <= 2
               else plots.roc_pr_per_class(per_seed, title=title))
        figs.append(_save(fig, plots_dir / f"roc_pr_{tag}.png"))
        if n_classes > 2:
            tables.append(_auroc_table(per_seed, f"{b['config']}, {b['shots']} shots", tag))
        if tag == "best":
            _write_curve_csvs(per_seed[0], plots_dir)
        sel = runs[runs["run_id"].astype(str).isin(b["run_ids"])] if "run_id" in runs.columns else runs.iloc[:0]
        cms = [json.loads(c) for c in sel.get("confusion_matrix", pd.Series(dtype=str)).dropna() if isinstance(c, str)]
        if cms:
            total = [[sum(cm[i][j] for cm in cms) for j in range(n_classes)] for i in range(n_classes)]
            figs.append(_save(plots.confusion(total, s.classes, title=f"{b['config']}, {b['shots']} shots: summed over {len(cms)} seeds"),
                              plots_dir / f"confusion_{tag}.png"))
            if tag == "best":
                _write_confusion_csv(cms[0], s.classes, plots_dir / "confusion_best.csv")
    return ("".join(_img(f, f.stem.replace("_", " ")) for f in figs) + "".join(tables)
            or "<p>No per-run predictions files found.</p>")


def _auroc_table(per_seed: list[dict], what: str, tag: str) -> str:
    """Per class: the one-vs-rest AUROC of each seed's ROC curve (:func:`plots.roc_auc`, as the panel titles),
    their mean, min and max."""
    rows = []
    for cls in dict.fromkeys(c for cur in per_seed for c in cur):
        a = [plots.roc_auc(cur[cls]["roc"]) for cur in per_seed if cls in cur]
        rows.append([cls, len(a), f"{np.mean(a):.3f}", f"{min(a):.3f}", f"{max(a):.3f}"])
    return (f"<h3>Per-class AUROC (one-vs-rest, test): {html.escape(what)}</h3>"
            + table(["class", "seeds", "AUROC (mean)", "min", "max"], rows, attrs=f' id="auroc-{tag}"'))


def _write_curve_csvs(curves: dict, plots_dir: Path) -> None:
    cls = next(iter(curves))
    roc = pd.DataFrame(curves[cls]["roc"], columns=["false_positive_rate", "true_positive_rate"])
    pr = pd.DataFrame(curves[cls]["pr"], columns=["recall", "precision"])
    atomic_write(plots_dir / "roc_best.csv", roc.to_csv(index=False, lineterminator="\n"))
    atomic_write(plots_dir / "pr_best.csv", pr.to_csv(index=False, lineterminator="\n"))


def _write_confusion_csv(cm, classes, path: Path) -> None:
    rows = [{"actual": classes[i], "predicted": classes[j]} for i in range(len(classes)) for j in range(len(classes)) for _ in range(int(cm[i][j]))]
    atomic_write(path, pd.DataFrame(rows, columns=["actual", "predicted"]).to_csv(index=False, lineterminator="\n"))


def _write_dvc_plot_data(runs: pd.DataFrame, metric: str, plots_dir: Path) -> None:
    """Tidy CSVs for ``dvc plots show``: the learning curve and the per-seed values."""
    table_ = plots.by_config(runs, metric)[["config", "shots", "mean", "ci_low", "ci_high", "spread"]]
    atomic_write(plots_dir / "learning_curve.csv", table_.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    seeds = runs.assign(config=plots.config_keys(runs).to_numpy())[["config", "shots", "seed", metric]]
    atomic_write(plots_dir / "per_seed.csv", seeds.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
