"""Multi-label tasks (CheXpert-style: several label columns with 1 / 0 / -1 / blank): the source and its policy,
the greedy per-label k-shot sets, one-vs-rest heads with per-label thresholds and metrics, and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featpipe.cli.main import main
from featpipe.data import multilabel
from featpipe.data.splits import load_splits

LABELS = ["Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion", "Fracture"]
# per image i: the cell of each label (cycled); Edema is rare (2 positives in all), Pleural Effusion has -1 and blanks
PATTERNS = {"Atelectasis": ["1.0", "0.0", "", "0.0"], "Cardiomegaly": ["0.0", "1.0", "-1.0", "1.0", "", "0.0"],
            "Edema": None, "Pleural Effusion": ["-1.0", "", "1.0", "0.0", "0.0"], "Fracture": [""]}  # never positive


def chexpert_multilabel(figure1_dir: Path, root: Path, n: int = 48, offset: int = 0, columns=LABELS) -> Path:
    """A CheXpert-v1.0-small-style ``train.csv`` over ``n`` real radiographs of ``../shared/data`` (from the
    ``offset``-th), two images per patient, with the label columns of :data:`LABELS` (1.0 / 0.0 / -1.0 / blank; named
    ``columns``) and the usual metadata (sex, age and view of the Figure 1 CSV)."""
    images = sorted((figure1_dir / "images").glob("*.jpg"))[offset:offset + n]
    assert len(images) == n
    meta = pd.read_csv(figure1_dir / "metadata.csv", encoding="latin-1", dtype=str, keep_default_na=False)
    meta = meta.drop_duplicates("patientid").set_index("patientid")  # the Figure 1 sex / age / view of each image
    top = root / "CheXpert-v1.0-small"
    lines = []
    for i, img in enumerate(images):
        rel = f"CheXpert-v1.0-small/train/patient{1 + (offset + i) // 2:05d}/study1/view{1 + i % 2}_frontal.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(img, root / rel)
        cells = [p[i % len(p)] if p else ("1.0" if i in (3, 20) else "") for p in PATTERNS.values()]
        key = next((k for k in (img.stem, img.stem.rstrip("abcdefgh")) if k in meta.index), None)
        m = meta.loc[key] if key else {"sex": "", "age": "", "view": ""}
        sex = {"M": "Male", "F": "Female"}.get(m["sex"], "Unknown")
        lines.append(f"{rel},{sex},{m['age']},Frontal,{m['view'].split()[0] if m['view'] else ''}," + ",".join(cells))
    (top / "train.csv").write_text("Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(columns) + "\n"
                                   + "\n".join(lines) + "\n")
    return top / "train.csv"


def _prepare_args(csv: Path, *extra: str) -> list[str]:
    return ["prepare", "--no-cache", "-S", "data.source=csv", "-S", f"data.path={csv}", "-S", "data.name=cxml",
            "-S", f"data.csv.root={csv.parent.parent}", "-S", "data.csv.path_col=Path",
            "-S", f"data.csv.labels=[{', '.join(LABELS)}]", "-S", "split.shots=[1,2,4]", "-S", "split.seeds=[0,1,2]",
            "-S", "split.shots_policy=cap", "-S", "split.val_policy=full", "-S", "split.test_fraction=0.3",
            "-S", "split.val_fraction=0.25", *extra]


def test_label_columns_are_read_with_the_stated_policy_into_manifest_and_splits(tmp_path, monkeypatch, figure1_dir,
                                                                                 capsys):
    csv = chexpert_multilabel(figure1_dir, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    pol = "data.csv.labels_uncertain={default: zeros, Cardiomegaly: ones, Pleural Effusion: ignore}"
    assert main(_prepare_args(csv, "-S", pol)) == 0
    out = capsys.readouterr().out
    assert "multi-label task: 5 labels" in out
    m = pd.read_csv("data/manifest.csv", dtype=str, keep_default_na=False)
    assert len(m) == 48 and m["patient_id"].str.match(r"^patient\d{5}$").all()
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False).set_index("Path")
    for _, row in m.iterrows():
        src = raw.loc[row["path"]]
        want = {"Atelectasis": {"1.0": "1", "0.0": "0", "": "0"}[src["Atelectasis"]],
                "Cardiomegaly": {"1.0": "1", "0.0": "0", "-1.0": "1", "": "0"}[src["Cardiomegaly"]],
                "Edema": {"1.0": "1", "": "0"}[src["Edema"]],
                "Pleural Effusion": {"1.0": "1", "0.0": "0", "-1.0": "", "": "0"}[src["Pleural Effusion"]],
                "Fracture": "0"}
        assert {n: row[f"y[{n}]"] for n in LABELS} == want
        assert row["label_name"] == ("finding" if "1" in want.values() else "no finding")
    s = load_splits("data/splits.json")
    assert s.labels == LABELS
    ids = s.train + s.val + s.test
    by_id = m.set_index("id")
    Y = s.label_matrix(ids)
    assert (Y == multilabel.manifest_matrix(by_id.loc[ids].reset_index(), LABELS)).all()
    assert len(ids) == 48 and (Y[:, 3] == -1).sum() == (raw["Pleural Effusion"] == "-1.0").sum() == 10
    pats = {p: set(by_id.loc[getattr(s, p), "patient_id"]) for p in ("train", "val", "test")}
    assert not pats["train"] & pats["test"] and not pats["train"] & pats["val"] and not pats["val"] & pats["test"]
    assert s.raw["multilabel"]["policy"]["Cardiomegaly"] == {"uncertain": "ones", "blank": "negative"}
    # blanks as unknown
    assert main(_prepare_args(csv, "-S", "data.csv.labels_blank=ignore")) == 0
    m2 = pd.read_csv("data/manifest.csv", dtype=str, keep_default_na=False).set_index("id")
    assert (m2["y[Edema]"] == "").sum() == 46  # Edema: two positives, every other cell blank


@pytest.mark.parametrize("overrides, words", [
    (["data.csv.labels_uncertain={Edema: maybe}"], "data.csv.labels_uncertain.Edema"),
    (["data.csv.labels_uncertain={Nodule: ones}"], "not one of data.csv.labels"),
    (["data.csv.task=Edema"], "alternatives"),
    (["data.csv.labels=[Atelectasis, Nodule]"], "no column 'Nodule'"),
    (["data.csv.labels_blank=zeros"], "data.csv.labels_blank"),
    (["data.source=folder"], "needs data.source: csv"),
    (["split.fractions=[0.5]", "split.shots=[]"], "split.fractions is not available for multi-label"),
    (["evaluate.external=[{name: other, source: folder, path: elsewhere}]"], "needs source: csv and csv.labels"),
])
def test_multilabel_mistakes_are_one_line(tmp_path, monkeypatch, figure1_dir, capsys, overrides, words):
    csv = chexpert_multilabel(figure1_dir, tmp_path / "data", n=8)
    monkeypatch.chdir(tmp_path)
    assert main(_prepare_args(csv, *[a for o in overrides for a in ("-S", o)])) != 0
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def _pool(n: int = 60, seed: int = 3):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, 4)) < np.array([0.5, 0.2, 0.05, 0.3])).astype(np.int8)
    Y[rng.random((n, 4)) < 0.1] = multilabel.UNKNOWN
    groups = np.arange(n) // 2
    ids = np.array([f"img{i:03d}" for i in range(n)])
    return np.arange(n), Y, groups, ids


def test_kshot_sets_hold_k_positives_and_negatives_per_label_nested_seeded_and_capped():
    rows, Y, groups, ids = _pool()
    names = ["a", "b", "rare", "d"]
    pool_pos = (Y == 1).sum(axis=0)
    sets, achieved, capped = multilabel.kshot_sets(rows, Y, groups, ids, names, shots=[1, 2, 5], seeds=[0, 1],
                                                   unit="image", policy="cap")
    at = {i: r for r, i in enumerate(ids)}
    for seed in ("0", "1"):
        prev: set = set()
        for k in ("1", "2", "5"):
            cur = set(sets[seed][k])
            assert prev <= cur  # nested
            sub = Y[[at[i] for i in cur]]
            for j, n in enumerate(names):
                pos, neg = int((sub[:, j] == 1).sum()), int((sub[:, j] == 0).sum())
                assert achieved[seed][k][n] == [pos, neg]
                assert pos >= min(int(k), pool_pos[j]) and neg >= min(int(k), int((Y[:, j] == 0).sum()))
            prev = cur
    assert sets["0"] != sets["1"]  # seeds draw different sets
    again = multilabel.kshot_sets(rows, Y, groups, ids, names, shots=[1, 2, 5], seeds=[0, 1], unit="image",
                                  policy="cap")
    assert again[0] == sets  # seeded
    assert pool_pos[2] < 5 and "rare" in capped["5"] and capped["5"]["rare"] == f"{pool_pos[2]} positives"
    with pytest.raises(Exception, match="label 'rare'.*shots_policy=cap"):
        multilabel.kshot_sets(rows, Y, groups, ids, names, shots=[5], seeds=[0], unit="image", policy="error")
    # patient unit: whole patients are added, so a patient's two images are in or out together
    psets, _, _ = multilabel.kshot_sets(rows, Y, groups, ids, names, shots=[2], seeds=[0], unit="patient", policy="cap")
    chosen = {at[i] for i in psets["0"]["2"]}
    assert all((r ^ 1) in chosen for r in chosen)


def _params(csv: Path, **extra) -> str:
    import yaml

    p = {"data": {"name": "cxml", "source": "csv", "path": str(csv),
                  "csv": {"root": str(csv.parent.parent), "path_col": "Path", "labels": LABELS,
                          "labels_uncertain": {"default": "zeros", "Pleural Effusion": "ignore"}}},
         "split": {"seeds": [0, 1, 2], "shots": [1, 4], "shots_policy": "cap", "val_policy": "full",
                   "test_fraction": 0.3, "val_fraction": 0.25},
         "extract": {"backbones": ["tiny_cnn"], "precision": "fp32", "device": "cpu", "batch_size": 16},
         "fit": {"n_jobs": 1, "heads": ["logistic", "prototype"]}}
    for section, values in extra.items():
        p[section] |= values
    return yaml.safe_dump(p, sort_keys=False)


def test_one_vs_rest_heads_give_per_label_thresholds_and_metrics_and_macro_rows(tmp_path, monkeypatch, figure1_dir):
    from featpipe.evaluation.metrics import choose_threshold
    from featpipe.features.cache import read_features

    csv = chexpert_multilabel(figure1_dir, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    Path("params.yaml").write_text(_params(csv))
    assert main(["prepare"]) == 0 and main(["extract", "--no-progress"]) == 0
    assert main(["sweep"]) == 0
    runs = pd.read_csv("results/runs.csv")
    assert len(runs) == 2 * 2 * 3 and (runs["task"] == "multilabel").all()
    s = load_splits("data/splits.json")
    fs = read_features(next(Path("cache/cxml").glob("tiny_cnn*.h5")))
    X = dict(zip(fs.ids, fs.features))
    run = runs[(runs["head"] == "logistic") & (runs["shots"] == 4) & (runs["seed"] == 1)].iloc[0]
    # refit label by label with the library's own head: the row's per-label threshold and AUROC follow
    from featpipe.heads.registry import make_head
    from featpipe.heads.scaling import fit_pipeline
    from featpipe.params.config import load_params
    from sklearn.preprocessing import StandardScaler

    params = load_params("params.yaml")
    tr, va, te = s.shots(1, 4), s.val, s.test
    pool = StandardScaler().fit(np.stack([X[i] for i in s.train]).astype(np.float64))
    Ytr, Yva, Yte = s.label_matrix(tr), s.label_matrix(va), s.label_matrix(te)
    aurocs = []
    for j, n in enumerate(LABELS):
        known = Ytr[:, j] >= 0
        if len(np.unique(Ytr[known, j])) < 2:
            assert n in run["unfit_labels"] and np.isnan(run[f"auroc[{n}]"])
            continue
        model = fit_pipeline(make_head("logistic", params.heads, seed=1), np.stack([X[i] for i in np.array(tr)[known]]),
                             Ytr[known, j], kind="pool", pool=lambda c: pool)
        pv = model.predict_proba(np.stack([X[i] for i in va]))[:, 1]
        pt = model.predict_proba(np.stack([X[i] for i in te]))[:, 1]
        kv, kt = Yva[:, j] >= 0, Yte[:, j] >= 0
        assert run[f"threshold[{n}]"] == pytest.approx(choose_threshold(Yva[kv, j], pv[kv]), abs=1e-9)
        from sklearn.metrics import roc_auc_score

        if len(np.unique(Yte[kt, j])) == 2:
            assert run[f"auroc[{n}]"] == pytest.approx(roc_auc_score(Yte[kt, j], pt[kt]), abs=1e-9)
            aurocs.append(run[f"auroc[{n}]"])
        else:
            assert n in run["test_absent"] and np.isnan(run[f"auroc[{n}]"])
    assert run["unfit_labels"] == "Fracture: no positives in the k-shot set"  # named, not a crash
    saved = {json.loads(Path(f).with_suffix(".json").read_text())["label"]: Path(f) for f in run["model_path"].split("; ")}
    assert sorted(saved) == sorted(n for n in LABELS if n != "Fracture")  # one binary head per fitted label
    from featpipe.saved.load import load_model

    for n, f in saved.items():  # each a binary head "no <label>" / "<label>" with the row's val threshold
        m = load_model(f)
        assert m.classes == [f"no {n}", n] and m.threshold == run[f"threshold[{n}]"]
    assert run["auroc"] == pytest.approx(np.mean(aurocs))
    assert run["auprc"] == pytest.approx(np.nanmean([run[f"auprc[{n}]"] for n in LABELS]))
    counts = dict(item.split("=") for item in run["kshot_counts"].split("; "))
    assert set(counts) == set(LABELS)
    assert all(int(v.split("/")[0]) >= min(4, s.raw["multilabel"]["counts"]["train"][n][0])
               for n, v in counts.items())


@pytest.mark.slow(seconds=55)
def test_a_chexpert_style_study_runs_through_dvc_repro_to_a_report_with_per_label_tables(tmp_path, monkeypatch,
                                                                                       figure1_dir):
    """Done-when of the multi-label item: a CheXpert-style CSV over real radiographs (label columns with blanks and
    -1) through ``dvc repro`` of the repository's dvc.yaml to a report with the per-label tables; the multi-label
    fine-tuned network gets Grad-CAM per label and ``predict`` calls labels at their val thresholds. The CSV carries
    the Figure 1 sex / age / view; an external set (other real radiographs and patients, its label columns named
    otherwise, mapped by label_map) and subgroups (sex, age band) appear in the same report, their numbers equal to
    scikit-learn on the saved predictions."""
    import yaml

    from tests.test_pipeline import DVC, _ran, _run
    from tests.test_study import ROOT

    csv = chexpert_multilabel(figure1_dir, tmp_path / "data", n=36)
    own = ["Atelectasis", "Cardiomegaly", "Edema", "Effusion", "Fracture"]  # the external set's column names
    ext = chexpert_multilabel(figure1_dir, tmp_path / "hospital2", n=14, offset=36, columns=own)
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    shutil.copy(ROOT / "prompts.yaml", work / "prompts.yaml")
    params = yaml.safe_load((ROOT / "params.demo.yaml").read_text())
    mine = yaml.safe_load(_params(csv))
    params["data"] |= {k: v for k, v in mine["data"].items() if k != "csv"}
    params["data"]["csv"] |= mine["data"]["csv"]
    for section in ("split", "extract", "fit"):
        params[section] |= mine[section]
    params["finetune"] |= {"backbones": ["tiny_cnn"], "strategies": ["head"], "shots": [4], "seeds": [0, 1],
                           "epochs": 2, "patience": 1, "precision": "fp32", "device": "cpu"}
    params["compare"]["bootstrap"] = 50
    params["data"]["csv"]["metadata"] = ["Sex", "Age", "AP/PA"]
    params["evaluate"] = {"external": [{"name": "hosp2", "source": "csv", "path": str(ext), "label_map": dict(zip(own, LABELS)),
                                        "csv": {"root": str(ext.parent.parent), "path_col": "Path", "labels": own,
                                                "metadata": ["Sex", "Age", "AP/PA"]}}]}
    params["report"] |= {"subgroups": ["Sex", "age_band"], "age_column": "Age", "min_subgroup": 4}
    # the multi-label fine-tuned network (Grad-CAM per label) and the logistic heads of one run (one per label)
    params["gradcam"]["runs"] = ["tiny_cnn-head-k4-s0", "tiny_cnn-logistic-k4-s0"]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run("git", "init", "-q", cwd=work)
    _run(DVC, "init", "-q", cwd=work)
    _run(DVC, "config", "core.analytics", "false", cwd=work)
    out = _run(DVC, "repro", cwd=work)
    assert {"prepare", "fit@tiny_cnn-logistic", "fit@tiny_cnn-prototype", "finetune@tiny_cnn-head", "collect",
            "compare", "gradcam", "prepare_external@0", "evaluate_external@0", "report"} <= _ran(out)
    runs = pd.read_csv("results/runs.csv")
    assert (runs["task"] == "multilabel").all() and len(runs) == 2 * 2 * 3 + 2
    ft = runs[runs["head"] == "finetune:head"]  # BCEWithLogits over the known cells, sigmoid per label
    assert len(ft) == 2 and ft["auroc[Atelectasis]"].notna().all() and ft["threshold[Cardiomegaly]"].notna().all()
    assert (ft["unfit_labels"] == "Fracture: no positives in the k-shot set").all()
    assert len(list(Path("results/finetune").rglob("training/*.json"))) == 2
    html = Path("reports/report.html").read_text()
    indexes = [json.loads(f.read_text()) for f in Path("reports/gradcam").rglob("index.json")]
    index = next(i for i in indexes if i["info"].get("task") == "multilabel")
    heads = {i["info"]["classes"][1]: i for i in indexes if i is not index}
    assert sorted(heads) == sorted(n for n in LABELS if n != "Fracture")  # one binary head per fitted label
    s = load_splits("data/splits.json")
    for name, i in heads.items():  # outcomes against that label, images where it is unknown left out
        y = dict(zip(s.test, s.label_matrix(s.test)[:, LABELS.index(name)]))
        assert all(y[r["id"]] >= 0 and (r["outcome"] in ("TP", "FN")) == (y[r["id"]] == 1) for r in i["images"])
    targets = {r["target"] for r in index["images"]}
    assert index["info"]["task"] == "multilabel" and len(targets) >= 2 and "Fracture" not in targets
    assert all(r["outcome"].split(":")[0] == r["target"] and r["outcome"].split(":")[1] in ("TP", "FP", "FN")
               for r in index["images"])
    assert "Grad-CAM: " in html
    model = next(Path("models/finetune").rglob("*tiny_cnn-head-k4-s0*.safetensors"))  # predict: labels at thresholds
    side = json.loads(model.with_suffix(".json").read_text())
    assert main(["predict", "--model", str(model), str(csv.parent), "--out", "pred.csv"]) == 0
    pred = pd.read_csv("pred.csv", keep_default_na=False)
    assert len(pred) == 36 and [c for c in pred.columns if c.startswith("p[")] == [f"p[{n}]" for n in LABELS]
    for _, r in pred.iterrows():  # probabilities are written to 6 decimals: a cell within 1e-6 of its threshold is not judged
        if all(abs(r[f"p[{n}]"] - side["thresholds"][n]) > 1e-6 for n in LABELS):
            assert r["predicted"] == "; ".join(n for n in LABELS if r[f"p[{n}]"] >= side["thresholds"][n])
    assert "Per-label results" in html
    for n in LABELS:
        assert n in html
    assert "no head in 3 of 3 seeds (no positives in the k-shot set)" in html  # Fracture: named, not a crash
    assert "Test AUROC per label of every configuration at 4 shots" in html and "(mAP)" in html
    assert Path("reports/plots/roc_pr_labels_best.png").is_file() and "roc pr labels best" in html  # ROC per label
    _external_and_subgroups_match_sklearn(html, s)


def _cells(html: str, section: str) -> list[list[str]]:
    """The table rows (cell texts) of the report section with id ``section``."""
    import re

    part = html[html.index(f'id="{section}"'):]
    part = part[: part.index("</section>")] if "</section>" in part else part
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", part, re.S)]


def _external_and_subgroups_match_sklearn(html: str, s) -> None:
    """The report's external rows (macro AUROC, AUROC per label, mean over seeds) and its subgroup table of the
    internal test split equal scikit-learn on the saved predictions files."""
    from sklearn.metrics import roc_auc_score

    from featpipe.evaluation.table import read_predictions
    from featpipe.results.subgroups import SubgroupSettings, group_labels

    ext_runs = pd.read_csv("results/external/hosp2/runs.csv")
    assert (ext_runs["test_set"] == "external:hosp2").all() and (ext_runs["n_test"] == 14).all()
    preds = read_predictions("results/external/hosp2")
    m = pd.read_csv("data/external/hosp2/manifest.csv", dtype=str, keep_default_na=False)
    for r in ext_runs.to_dict("records"):  # every row: per-label AUROC of its predictions, macro their mean
        p = preds[preds["run_id"] == r["run_id"]].set_index("id").loc[m["id"]]
        got = []
        for n, c in zip(LABELS, ["Atelectasis", "Cardiomegaly", "Edema", "Effusion", "Fracture"]):
            y = m[f"y[{n}]"].replace("", "-1").astype(int).to_numpy()  # the external column c mapped onto n
            assert (y == p[f"y[{n}]"].to_numpy()).all()
            k = (y >= 0) & np.isfinite(p[f"p[{n}]"].to_numpy())
            if len(np.unique(y[k])) == 2:
                got.append(roc_auc_score(y[k], p[f"p[{n}]"].to_numpy()[k]))
                assert r[f"auroc[{n}]"] == pytest.approx(got[-1], abs=1e-12)
        assert r["auroc"] == pytest.approx(np.mean(got), abs=1e-12)
    rows = _cells(html, "external")
    assert rows[0][-1] == "external:hosp2"
    macro = [c for c in rows if len(c) > 3 and c[2] == "auroc" and c[0] == "4"]
    label_rows = [c for c in rows if len(c) > 3 and c[2].startswith("auroc[") and c[0] == "4"]
    assert len(macro) == 1 and len(label_rows) == len(LABELS)
    runs = pd.read_csv("results/runs.csv")
    config = macro[0][1].split("/")[-1]  # the head (or finetune:head) chosen on val at 4 shots
    rows4 = ext_runs[(ext_runs["shots"] == 4) & ext_runs["head"].astype(str).str.endswith(config)]
    assert macro[0][4].startswith(f"{rows4['auroc'].mean():.3f}")
    sub = _cells(html, "subgroups")
    header = next(c for c in sub if c[:3] == ["attribute", "group", "n"])
    assert header[3] == "macro AUROC [95%]" and header[4:] == [f"AUROC {n} [95%]" for n in LABELS]
    first = [c for c in sub[sub.index(header) + 1:] if c and c[0] in ("Sex", "age_band")]
    intro = html[html.index('id="subgroups"'):]
    assert "A multi-label study: per group, macro AUROC" in intro.split("</p>")[0]  # the method stated is multi-label's
    rid_seed = int(intro.split(" shots, seed ")[1].split(" ")[0])
    best = runs[(runs["shots"] == 4) & runs["head"].astype(str).str.endswith(config) & (runs["seed"] == rid_seed)]
    pred = read_predictions("results", best["run_id"].astype(str))
    pred = pred[pred["split"] == "test"]
    groups = group_labels(pd.read_csv("data/manifest.csv", dtype=str, keep_default_na=False), list(pred["id"]),
                          SubgroupSettings(("Sex", "age_band"), age_column="Age"))
    seen = 0
    for attribute, group, n, cell, *per in first[: len({(a, g) for a in groups for g in groups[a]})]:
        mask = np.asarray(groups[attribute]) == group
        assert int(n) == mask.sum()
        if mask.sum() < 4:
            assert cell == "too few"
            continue
        aurocs = []
        for j, name in enumerate(LABELS):
            y, p = pred[f"y[{name}]"].to_numpy()[mask], pred[f"p[{name}]"].to_numpy(float)[mask]
            k = (y >= 0) & np.isfinite(p)
            if len(np.unique(y[k])) == 2:
                aurocs.append(roc_auc_score(y[k], p[k]))
                assert per[j].startswith(f"{aurocs[-1]:.3f} [")  # with its bootstrap interval
            else:
                assert per[j] == "–"
        assert cell.startswith(f"{np.mean(aurocs):.3f}" if aurocs else "–")
        seen += 1
    assert seen >= 1  # at least one group scored


def test_identical_files_with_different_label_vectors_are_excluded_and_matched_val_sets_are_nested():
    from featpipe.data.splits import make_splits
    from featpipe.params.config import SplitParams

    n = 40
    rng = np.random.default_rng(0)
    Y = (rng.random((n, 2)) < 0.4).astype(int)
    m = pd.DataFrame({"id": [f"i{j:02d}" for j in range(n)], "path": "", "patient_id": [f"p{j // 2}" for j in range(n)],
                      "source_split": "", "sha256": [f"h{j}" for j in range(n)], "width": 1, "height": 1,
                      "y[a]": Y[:, 0].astype(str), "y[b]": Y[:, 1].astype(str)})
    m.loc[[0, 1, 2, 3], ["y[a]", "y[b]"]] = [["1", "0"], ["1", "1"], ["0", "1"], ["0", "1"]]  # both "finding"
    m.loc[1, "sha256"] = m.loc[0, "sha256"]  # same bytes, a label differs: conflicting
    m.loc[3, "sha256"] = m.loc[2, "sha256"]  # same bytes, same labels: kept
    m["label_name"] = [multilabel.finding_name([int(a), int(b)]) for a, b in zip(m["y[a]"], m["y[b]"])]
    m["label"] = (m["label_name"] == "no finding").astype(int)
    obj = make_splits(m, ["finding", "no finding"], SplitParams(seeds=(0,), shots=(1, 2), shots_policy="cap"),
                      dataset="d", manifest_sha256="x", labels=["a", "b"], label_policy={})
    one, two = set(obj["valshot"]["0"]["1"]), set(obj["valshot"]["0"]["2"])  # matched val: drawn the same way
    assert one <= two <= set(obj["val"]) and one
    gone = {e["id"]: e["reason"] for e in obj["excluded"] if e["from"] == "all"}
    assert set(gone) == {"i00", "i01"} and "a=1 b=0" in gone["i00"] and "a=1 b=1" in gone["i00"]
    assert {"i02", "i03"} <= set(obj["train"] + obj["val"] + obj["test"])


def test_masked_bce_leaves_unknown_cells_out_and_weights_positives_per_label():
    import torch

    from featpipe.finetune.loop import label_pos_weight, masked_bce

    y = np.array([[1, 0], [0, -1], [0, 1], [-1, 1]])
    logits = torch.tensor([[0.3, -1.0], [2.0, 5.0], [-0.5, 0.7], [9.0, 0.1]])
    pw = label_pos_weight(y)
    assert pw.tolist() == [2.0, 0.5]  # negatives / positives among each label's known cells
    cells = [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (3, 1)]
    want = np.mean([torch.nn.functional.binary_cross_entropy_with_logits(
        logits[i, j], torch.tensor(float(y[i, j])), pos_weight=pw[j]).item() for i, j in cells])
    assert masked_bce(logits, torch.as_tensor(y), pw).item() == pytest.approx(want, rel=1e-6)


def test_a_rebuilt_cache_at_the_same_path_never_reuses_the_old_pool_scaler():
    """Found by this file: the dvc-stage study (decode.draft on) reused the pool scaler memoised for the previous
    test's cache at the same relative path, shape and split; its rows then differed from a fresh process's."""
    from types import SimpleNamespace

    from featpipe.fewshot.fit import CacheData, _pool

    rng = np.random.default_rng(0)
    split = SimpleNamespace(train=["a", "b", "c"], sha256="s")

    def data(X):
        return CacheData(Path("cache/d/tiny_cnn.h5"), "tiny_cnn", "w", "", "", "default", {}, X, np.zeros(3, int),
                         {"a": 0, "b": 1, "c": 2}, np.array([], int), np.array([], int))

    X1 = rng.normal(size=(3, 4)).astype(np.float32)
    X2 = X1 + 1.0
    assert np.allclose(_pool(data(X1), split, False).mean_, X1.mean(axis=0))
    assert np.allclose(_pool(data(X2), split, False).mean_, X2.mean(axis=0))


def test_multilabel_runs_write_predictions_and_subgroups_give_per_label_and_macro_auroc(tmp_path, monkeypatch,
                                                                                      figure1_dir):
    """A multi-label sweep writes per-image predictions (y[<label>], p[<label>]) through the predictions writer;
    the report's per-label ROC curves give the row's AUROC; the subgroup table of a run (per Sex of the Figure 1
    metadata) equals scikit-learn on those predictions, and a group below the minimum size is "too few"."""
    from sklearn.metrics import roc_auc_score

    from featpipe.evaluation.table import read_predictions
    from featpipe.results.subgroups import SubgroupSettings, group_labels, multilabel_subgroups

    csv = chexpert_multilabel(figure1_dir, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    text = _params(csv).replace("labels_uncertain:", "metadata: [Sex, Age]\n    labels_uncertain:")
    Path("params.yaml").write_text(text)
    assert main(["prepare"]) == 0 and main(["extract", "--no-progress"]) == 0 and main(["sweep"]) == 0
    runs = pd.read_csv("results/runs.csv")
    run = runs[(runs["head"] == "logistic") & (runs["shots"] == 4) & (runs["seed"] == 0)].iloc[0]
    pred = read_predictions("results", [run["run_id"]])
    test = pred[pred["split"] == "test"]
    s = load_splits("data/splits.json")
    assert sorted(test["id"]) == sorted(s.test) and len(pred) == len(s.val) + len(s.test)
    Y = test[[f"y[{n}]" for n in LABELS]].to_numpy()
    P = test[[f"p[{n}]" for n in LABELS]].to_numpy(float)
    assert (Y == s.label_matrix(list(test["id"]))).all()
    for j, n in enumerate(LABELS):  # the file's outputs give the row's per-label AUROC
        k = Y[:, j] >= 0
        if np.isfinite(run[f"auroc[{n}]"]):
            assert roc_auc_score(Y[k, j], P[k, j]) == pytest.approx(run[f"auroc[{n}]"], abs=1e-12)
    from featpipe.report.multilabel import label_curves
    from featpipe.report.plots import roc_auc

    cur = label_curves(test)  # the report's per-label ROC curves: their AUROC is the row's, label by label
    assert len(cur) == 1 and set(cur[0]) == {n for n in LABELS if np.isfinite(run[f"auroc[{n}]"])}
    for n, c in cur[0].items():
        assert roc_auc(c["roc"]) == pytest.approx(run[f"auroc[{n}]"], abs=1e-4)  # curve points: 5 decimals
    settings = SubgroupSettings(("Sex",), min_size=4, n_boot=20)
    manifest = pd.read_csv("data/manifest.csv", dtype=str, keep_default_na=False)
    groups = group_labels(manifest, list(test["id"]), settings)
    tab, _ = multilabel_subgroups(Y, P, LABELS, groups, settings=settings)
    tab = tab.set_index("group")
    sex = np.asarray(groups["Sex"])
    assert set(tab.index) == set(sex)
    for g, r in tab.iterrows():
        mask = sex == g
        assert r["n"] == mask.sum()
        if mask.sum() < 4:
            assert r["status"] == "too few" and np.isnan(r.get("auroc", np.nan))
            continue
        expect = {}
        for j, n in enumerate(LABELS):
            k = mask & (Y[:, j] >= 0) & np.isfinite(P[:, j])
            if len(np.unique(Y[k, j])) == 2:
                expect[n] = roc_auc_score(Y[k, j], P[k, j])
        for n in LABELS:
            assert (r[f"auroc[{n}]"] == pytest.approx(expect[n], abs=1e-12)) if n in expect else np.isnan(r[f"auroc[{n}]"])
        assert r["auroc"] == pytest.approx(np.mean(list(expect.values())) if expect else np.nan, nan_ok=True)
    assert (tab["status"] == "scored").any()
