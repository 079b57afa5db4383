"""Internal subgroups end to end: a CSV study over the real Figure 1 radiographs with ``data.csv.metadata: [sex, age,
view]`` run through prepare, decode, extract, sweep (results/runs.csv) and report with ``report.subgroups: [sex, age_band,
view]``; the report's internal-test subgroup table equals scikit-learn on the slices of the named run's saved
predictions, and groups below ``report.min_subgroup`` are shown as "too few"."""

from __future__ import annotations

import csv
import html
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

from featpipe.cli.main import main
from featpipe.core.names import proba_column
from featpipe.evaluation.table import read_predictions, read_runs
from featpipe.results.subgroups import age_bands
from tests.conftest import FIGURE1

MIN_SUBGROUP = 3
EDGES = (0.0, 40.0, 65.0, 120.0)


def _csv(path: Path) -> None:
    """The Figure 1 CSV with a binary ``label`` built here: "covid" for finding COVID-19, "other" for every other
    row (No finding, Pneumonia, blank): 35 and 20 images, so that k = 5 leaves test images of both classes."""
    with open(FIGURE1 / "metadata.csv", newline="", encoding="cp1252") as fh:
        rows = list(csv.DictReader(fh))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, ["patientid", "label", "sex", "age", "view"])
        w.writeheader()
        for r in rows:
            w.writerow({"patientid": r["patientid"], "label": "covid" if r["finding"] == "COVID-19" else "other",
                        "sex": r["sex"], "age": r["age"], "view": r["view"]})


def _params(csv_path: Path) -> str:
    return (f"data: {{name: fig1, source: csv, path: {csv_path}, patient_regex: '^(COVID-\\d+)',\n"
            f"       csv: {{root: {FIGURE1 / 'images'}, path_col: patientid, label_col: label, "
            "metadata: [sex, age, view]}}\n"
            "split: {seeds: [0, 1], shots: [5], test_fraction: 0.4, val_fraction: 0.2}\n"
            "extract: {backbones: [tiny_cnn], device: cpu, precision: fp32}\n"
            "fit: {n_jobs: 1, heads: [logistic]}\nfinetune: {backbones: []}\n"
            f"report: {{subgroups: [sex, age_band, view], age_bands: [{', '.join(f'{e:g}' for e in EDGES)}], "
            f"min_subgroup: {MIN_SUBGROUP}, subgroup_bootstrap: 50}}\n")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    if not (FIGURE1 / "metadata.csv").is_file():
        pytest.skip("real data not found in the shared data folder beside the repo")
    root = tmp_path_factory.mktemp("subgroups")
    _csv(root / "figure1.csv")
    (root / "params.yaml").write_text(_params(root / "figure1.csv"))
    cwd = os.getcwd()
    os.chdir(root)
    os.environ["FEATPIPE_OFFLINE"] = "1"
    try:
        for cmd in (["prepare", "--no-progress"], ["decode", "--no-progress"], ["extract", "--no-progress"],
                    ["sweep"], ["report"]):
            assert main(cmd) == 0, cmd
    finally:
        os.chdir(cwd)
    return root


def _internal_rows(page: str) -> tuple[str, list[list[str]]]:
    """(the "Run:" paragraph, the cells of the internal-test group table) of the report's subgroup section."""
    start = page.index("<h2>Subgroups")
    sec = page[start:page.index("</section>", start)]
    intro = re.search(r"<p>Run: (.*?)</p>", sec, re.DOTALL).group(1)
    internal = sec[sec.index("<h3>internal test</h3>"):]
    first = internal[:internal.index("</table>")]
    rows = [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", tr, re.DOTALL)]
            for tr in re.findall(r"<tr>(.*?)</tr>", first, re.DOTALL)]
    return intro, [r for r in rows if r]


def test_internal_subgroup_table_equals_sklearn_on_the_saved_predictions(study):
    page = (study / "reports/report.html").read_text()
    intro, rows = _internal_rows(page)
    seed = int(re.search(r"seed (\d+)", intro).group(1))
    runs = read_runs(study / "results/runs.csv")
    run = runs[(runs["head"] == "logistic") & (runs["seed"] == seed) & (runs["shots"] == 5)]
    assert len(run) == 1
    run = run.iloc[0]
    pred = read_predictions(study / "results", [run["run_id"]])
    pred = pred[pred["split"] == "test"]
    man = pd.read_csv(study / "data/manifest.csv", dtype=str, keep_default_na=False).set_index("id")
    assert {"sex", "age", "view"} <= set(man.columns)
    ids = pred["id"].astype(str)
    groups = {"sex": man.loc[ids, "sex"].replace("", "unknown").to_numpy(),
              "age_band": np.asarray(age_bands(man.loc[ids, "age"], EDGES)),
              "view": man.loc[ids, "view"].replace("", "unknown").to_numpy()}
    y = pred["label"].to_numpy()
    p = pred[proba_column("other")].to_numpy(float)  # classes sorted: covid, other (the positive class)
    yhat = (p >= run["threshold"]).astype(int)
    expected = {(a, v) for a, g in groups.items() for v in set(g)}
    assert {(r[0], r[1]) for r in rows} == expected
    too_few = scored = 0
    for attribute, group, n, prevalence, auroc, acc, sens, spec in rows:
        m = groups[attribute] == group
        assert int(n) == m.sum() and float(prevalence) == pytest.approx(y[m].mean(), abs=5e-4)
        if m.sum() < MIN_SUBGROUP:
            assert auroc == "too few" and acc == sens == spec == ""
            too_few += 1
            continue
        scored += 1
        lead = lambda cell: float(cell.split(" ")[0])
        assert lead(acc) == pytest.approx(accuracy_score(y[m], yhat[m]), abs=5e-4)
        if len(set(y[m])) == 2:
            assert lead(auroc) == pytest.approx(roc_auc_score(y[m], p[m]), abs=5e-4)
            assert lead(sens) == pytest.approx(recall_score(y[m], yhat[m], pos_label=1), abs=5e-4)
            assert lead(spec) == pytest.approx(recall_score(y[m], yhat[m], pos_label=0), abs=5e-4)
        else:
            assert auroc == "–"  # one class in the group: no AUROC
    assert too_few >= 1 and scored >= 3
