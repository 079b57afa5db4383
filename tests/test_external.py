"""External validation: fit on the balanced PneumoniaMNIST file, score every saved head on the real Figure 1
radiographs (a second data set prepared under its own name), rows, metrics against scikit-learn, the report section;
the overlap check and the label map."""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

from featpipe.cli.main import main
from featpipe.core.errors import DataError
from featpipe.core.names import proba_column
from featpipe.data.external import check_outside_study, read_external
from featpipe.data.manifest import read_manifest
from featpipe.evaluation.table import read_predictions, read_runs
from featpipe.params.config import load_params
from featpipe.report.build import ReportInputs, build_report
from featpipe.results import predictions
from featpipe.results.stats import seed_summary
from featpipe.saved.external import side_by_side
from tests.conftest import FIGURE1, PNEUMONIAMNIST, copy_project, write_image

LABEL_MAP = {"COVID-19": "pneumonia", "Pneumonia": "pneumonia", "No finding": "normal"}


def _params(label_map: dict) -> str:
    lm = ", ".join(f"'{k}': {v}" for k, v in label_map.items())
    return (f"data: {{name: pmnist, source: npz, path: {PNEUMONIAMNIST}, class_names: [normal, pneumonia]}}\n"
            "split: {seeds: [0, 1], shots: [5]}\n"
            "extract: {backbones: [tiny_cnn], device: cpu, precision: fp32}\n"
            "fit: {n_jobs: 1, heads: [logistic]}\n"
            "finetune: {backbones: [tiny_cnn], strategies: [head], shots: [5], seeds: [0], epochs: 2, device: cpu}\n"
            "report: {subgroups: [sex, age_band, view], min_subgroup: 5, subgroup_bootstrap: 50}\n"
            "evaluate:\n  external:\n    - name: figure1\n      source: csv\n"
            f"      path: {FIGURE1 / 'metadata.csv'}\n"
            f"      csv: {{root: {FIGURE1 / 'images'}, path_col: patientid, label_col: finding, metadata: [sex, age, view]}}\n"
            f"      label_map: {{{lm}}}\n")


def _expected_labels() -> dict[str, str]:
    """Image stem -> study class, read straight from the Figure 1 CSV (findings the map names)."""
    with open(FIGURE1 / "metadata.csv", newline="", encoding="cp1252") as fh:
        return {r["patientid"]: LABEL_MAP[r["finding"]] for r in csv.DictReader(fh) if r["finding"] in LABEL_MAP}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    if not (PNEUMONIAMNIST.is_file() and (FIGURE1 / "metadata.csv").is_file()):
        pytest.skip("real data not found in the shared data folder beside the repo")
    root = tmp_path_factory.mktemp("external")
    (root / "params.yaml").write_text(_params(LABEL_MAP))
    cwd = os.getcwd()
    os.chdir(root)
    os.environ["FEATPIPE_OFFLINE"] = "1"
    try:
        assert main(["prepare", "--no-progress"]) == 0
        assert main(["prepare", "--external", "figure1", "--no-progress"]) == 0
        assert main(["extract", "--no-progress"]) == 0
        assert main(["sweep"]) == 0
        assert main(["finetune", "--quiet"]) == 0
        assert main(["evaluate-external"]) == 0
    finally:
        os.chdir(cwd)
    return root


def test_every_saved_model_has_an_external_row(project):
    internal = read_runs(project / "results/runs.csv")
    external = read_runs(project / "results/external/figure1/runs.csv")
    assert set(internal["test_set"]) == {"internal"}
    assert len(external) == len(internal) == 3  # logistic x k=5 x seeds 0, 1; fine-tuned head k=5 seed 0
    assert sorted(external["head"]) == ["finetune:head", "logistic", "logistic"]
    assert set(external["test_set"]) == {"external:figure1"}
    assert not set(external["run_id"]) & set(internal["run_id"])
    keys = ["backbone", "head", "shots", "seed", "split_sha256", "weights_id"]
    pd.testing.assert_frame_equal(internal[keys].sort_values(keys).reset_index(drop=True),
                                  external[keys].sort_values(keys).reset_index(drop=True))
    expected = _expected_labels()
    assert (external["n_test"] == len(expected)).all()
    man = pd.read_csv(project / "data/external/figure1/manifest.csv", dtype=str, keep_default_na=False)
    assert {Path(i).stem: c for i, c in zip(man["id"], man["label_name"])} == expected
    assert {"sex", "age", "view"} <= set(man.columns)
    # the thresholds are the runs' own (val-chosen on the study's val split)
    merged = internal.merge(external, on=keys, suffixes=("_int", "_ext"))
    np.testing.assert_array_equal(merged["threshold_int"], merged["threshold_ext"])
    # the command's side-by-side lines: mean over seeds per configuration, internal then external
    line = next(x for x in side_by_side(internal, external, "figure1") if "/logistic" in x)
    means = [float(v) for v in re.findall(r"(\d\.\d{3}) \[", line)]
    logi = lambda t: t[t["head"] == "logistic"]
    assert means == [round(seed_summary(logi(internal), "auroc")["mean"], 3),
                     round(seed_summary(logi(external), "auroc")["mean"], 3),
                     round(seed_summary(logi(internal), "accuracy")["mean"], 3),
                     round(seed_summary(logi(external), "accuracy")["mean"], 3)]


def test_external_metrics_equal_sklearn_on_saved_predictions(project):
    external = read_runs(project / "results/external/figure1/runs.csv")
    pred = read_predictions(project / "results/external/figure1", external["run_id"])
    assert set(pred["split"]) == {"test"}
    for row in external.to_dict("records"):
        g = pred[pred["run_id"] == row["run_id"]]
        y, p = g["label"].to_numpy(), g[proba_column("pneumonia")].to_numpy()
        yhat = (p >= row["threshold"]).astype(int)
        assert len(g) == row["n_test"]
        assert row["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert row["accuracy"] == pytest.approx(accuracy_score(y, yhat), abs=1e-12)
        assert row["sensitivity"] == pytest.approx(recall_score(y, yhat, pos_label=1), abs=1e-12)
        assert row["specificity"] == pytest.approx(recall_score(y, yhat, pos_label=0), abs=1e-12)


def test_external_predictions_are_the_saved_models_outputs(project, monkeypatch):
    """Each external row's predictions are what `featpipe predict` gives with its run's saved model (a head and a
    fine-tuned network)."""
    from featpipe.predict import predict

    monkeypatch.chdir(project)
    internal = read_runs(project / "results/runs.csv")
    external = read_runs(project / "results/external/figure1/runs.csv")
    keys = ["head", "shots", "seed"]
    for row in external.merge(internal[keys + ["model_path"]], on=keys, suffixes=("_x", "")).to_dict("records"):
        if row["head"] == "logistic" and row["seed"] == 1:
            continue
        got = read_predictions(project / "results/external/figure1", [row["run_id"]])
        files = sorted(str(FIGURE1 / "images" / i) for i in got["id"])
        ref = predict(row["model_path"], files).table
        ref["id"] = [Path(f).name for f in ref["path"]]
        both = got.merge(ref, on="id", suffixes=("", "_ref"))
        assert len(both) == len(got) == len(files)
        col = proba_column("pneumonia")
        np.testing.assert_allclose(both[col], both[col + "_ref"], atol=1e-6)


def _section(page: str, title: str) -> str:
    start = page.index(f"<h2>{title}")
    return page[start:page.index("</section>", start)]


def test_report_shows_internal_and_external_side_by_side(project, monkeypatch):
    monkeypatch.chdir(project)
    params = load_params("params.yaml")
    out = build_report(ReportInputs(manifest=Path("data/manifest.csv"), splits=Path("data/splits.json"),
                                    results=Path("results"), out=Path("reports/report.html")), params)
    page = out.read_text()
    ext = _section(page, "External validation")
    assert "<th>internal test</th>" in ext and "<th>external:figure1</th>" in ext
    external = read_runs(project / "results/external/figure1/runs.csv")
    row = re.search(r"<td>5</td><td>([^<]*)</td><td>auroc</td><td>([^<]*)</td><td>([^<]*)</td>", ext)
    assert row is not None
    chosen = external[[h in row.group(1) for h in external["head"]]]  # the configuration chosen on internal val
    assert len(chosen) == (2 if "logistic" in row.group(1) else 1)
    assert row.group(3).startswith(f"{seed_summary(chosen, 'auroc')['mean']:.3f}")
    assert f"(n={len(_expected_labels())})" in row.group(3) and "(n=468)" in row.group(2)
    # one interval method on both sides, the best-configuration table's (seeds + test patients): seed_summary with
    # each test set's own test-sampling variance, patients resampled from its own predictions and manifest
    internal = read_runs(project / "results/runs.csv")
    chosen_int = internal[internal["head"].isin(chosen["head"])]
    classes = ["normal", "pneumonia"]
    sampling = {"int": predictions.TestPredictions(Path("results"), read_manifest("data/manifest.csv"), classes).sampling,
                "ext": predictions.TestPredictions(Path("results/external/figure1"), read_external("figure1", classes),
                                                   classes).sampling}
    for m in ("auroc", "accuracy", "sensitivity", "specificity"):
        cells = re.search(rf"<td>5</td><td>[^<]*</td><td>{m}</td><td>([^<]*)</td><td>([^<]*)</td>", ext)
        for cell, runs, side in ((cells.group(1), chosen_int, "int"), (cells.group(2), chosen, "ext")):
            s = seed_summary(runs, m, sampling=sampling[side])
            assert cell.startswith(f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"), (m, side, cell)
    assert "the same 95% interval (seeds and test patients)" in ext
    assert "95% interval (seeds + test patients)" in _section(page, "Best configuration")
    sub = _section(page, "Subgroups")
    assert "external:figure1" in sub and "too few" in sub
    assert "the manifest has no column &#x27;sex&#x27;" in sub  # PneumoniaMNIST carries no metadata: said, not scored


def test_evaluate_external_reads_the_cache_prepare_filled(project, tmp_path, monkeypatch, capsys):
    """`prepare --external` filled cache/figure1/: `evaluate-external` reads it (no file is decoded again, the cache
    file is not rewritten), and its scores equal those of a run that decodes the files."""
    import featpipe.saved.external as saved_external

    root = copy_project(project, tmp_path, monkeypatch)
    caches = sorted(Path("cache/figure1").glob("decoded-*.h5"))
    assert caches
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in caches}

    def no_decode(*a, **k):
        raise AssertionError("external images decoded again")

    monkeypatch.setattr(saved_external, "decode_files", no_decode)
    capsys.readouterr()
    assert main(["evaluate-external", "--out", "results/ext_cached"]) == 0
    out = capsys.readouterr().out
    assert all(f"read from {p}" in out for p in caches) and "decoded from their files" not in out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in caches} == before
    monkeypatch.undo()
    monkeypatch.chdir(root)
    assert main(["evaluate-external", "--out", "results/ext_files", "--cache-dir", "no-cache-here"]) == 0
    assert "decoded from their files" in capsys.readouterr().out
    cached, files = (read_runs(root / f"results/{d}/figure1/runs.csv") for d in ("ext_cached", "ext_files"))
    cols = ["run_id", "auroc", "accuracy", "sensitivity", "specificity", "brier", "threshold"]
    pd.testing.assert_frame_equal(cached[cols].sort_values("run_id").reset_index(drop=True),
                                  files[cols].sort_values("run_id").reset_index(drop=True))
    pc, pf = (read_predictions(root / f"results/{d}/figure1", cached["run_id"]) for d in ("ext_cached", "ext_files"))
    col = proba_column("pneumonia")
    key = ["run_id", "id"]
    np.testing.assert_array_equal(pc.sort_values(key)[col].to_numpy(), pf.sort_values(key)[col].to_numpy())


def test_unmapped_labels_are_named_rejects(project, tmp_path, monkeypatch):
    root = tmp_path / "p"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns("cache", "results", "models"))
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text(_params({"COVID-19": "pneumonia", "No finding": "normal"}))
    assert main(["prepare", "--external", "figure1", "--no-cache"]) == 0
    rej = pd.read_csv("data/external/figure1/rejects.csv")
    named = rej[rej["reason"].str.contains("label 'Pneumonia' not in evaluate.external\\[figure1\\].label_map")]
    with open(FIGURE1 / "metadata.csv", newline="", encoding="cp1252") as fh:
        assert len(named) == sum(r["finding"] == "Pneumonia" for r in csv.DictReader(fh)) == 2


def test_overlap_with_the_study_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    (tmp_path / "params.yaml").write_text(
        "data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 20, size: 32}}\n"
        "split: {seeds: [0], shots: [2], val_fraction: 0.2, test_fraction: 0.2}\n"
        "extract: {backbones: [tiny_cnn]}\nfit: {heads: [logistic]}\n"
        "evaluate: {external: [{name: other, source: folder, path: ext}]}\n")
    assert main(["prepare", "--no-cache"]) == 0
    study = sorted(Path("data/synthetic").rglob("*.png"))
    for i, f in enumerate(study[:3]):  # three study files copied under new names
        dest = Path("ext") / f.parent.name / f"copy{i}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    for c in sorted({f.parent.name for f in study}):
        for i in range(4):
            write_image(Path("ext") / c / f"new{i}.png", seed=1000 + i + 10 * len(c))
    capsys.readouterr()
    assert main(["prepare", "--external", "other", "--no-cache"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 image(s) are in the study's data (3 identical files" in err[0] and "copy0.png" in err[0]
    assert not Path("data/external/other/manifest.csv").exists()


def test_overlap_by_patient_id():
    study = pd.DataFrame({"id": ["a.png"], "sha256": ["x"], "patient_id": ["P1"]})
    ext = pd.DataFrame({"id": ["b.png", "c.png"], "sha256": ["y", "z"], "patient_id": ["P1", "P2"]})
    with pytest.raises(DataError, match=r"1 image\(s\) are in the study's data \(0 identical files, 1 study patient"):
        check_outside_study(study, ext, "other")
    check_outside_study(study, ext.iloc[1:], "other")


def test_prepare_external_depends_on_the_csv_and_its_image_folder(tmp_path, monkeypatch, figure1_dir):
    """dvc.yaml: prepare_external depends on the set's fingerprint, which fetch_external (always run) writes from
    the CSV and its image root (csv.root, a folder beside the CSV's): a changed image changes it, so DVC reruns
    prepare_external; an untouched set writes the same bytes, so it does not."""
    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    fetch, prep = stages["fetch_external"], stages["prepare_external"]
    assert fetch["foreach"] == prep["foreach"] == "${evaluate.external}" and fetch["do"]["always_changed"] is True
    sub = lambda text: text.replace("${item.name}", "fig").replace("${item.path}", "ext/meta.csv")
    stamp = sub(next(iter(fetch["do"]["outs"][0])))
    assert stamp in [sub(d) for d in prep["do"]["deps"]]
    monkeypatch.chdir(tmp_path)
    images = sorted((figure1_dir / "images").glob("*.jpg"))[:4]
    Path("imgs").mkdir()
    for f in images:
        shutil.copy(f, Path("imgs") / f.name)
    Path("ext").mkdir()
    Path("ext/meta.csv").write_text("file,label\n" + "".join(f"{f.name},{'ab'[i % 2]}\n" for i, f in enumerate(images)))
    Path("params.yaml").write_text(
        "data: {name: demo, source: synthetic, path: data/synthetic}\n"
        "evaluate: {external: [{name: fig, source: csv, path: ext/meta.csv, "
        "csv: {root: imgs, path_col: file, label_col: label}}]}\n")
    argv = shlex.split(sub(fetch["do"]["cmd"]))[1:]
    assert main(argv) == 0
    first = Path(stamp).read_bytes()
    assert main(argv) == 0 and Path(stamp).read_bytes() == first  # unchanged: prepare_external stays
    with open(Path("imgs") / images[0].name, "ab") as fh:  # one image changed, the CSV untouched
        fh.write(b"\0")
    assert main(argv) == 0 and Path(stamp).read_bytes() != first
