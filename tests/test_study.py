"""A study's configurations as a researcher designs them: every figure keys on the full configuration identity,
weights have short portable names, and layer names resolve the same way in every command."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from featpipe.cli.main import main
from featpipe.core.names import weights_name
from featpipe.report import plots
from featpipe.results.summary import summarize_runs
from featpipe.params.config import ClinicalParams
from tests.conftest import fit_tiny_project

WEIGHTS = {"imagenet": ("imagenet1k_v1", "torchvision:ResNet18_Weights.IMAGENET1K_V1:resnet18-f37072fd.pth"),
           "random": ("random", "random:seed0")}


def _rethink_runs() -> pd.DataFrame:
    """The 2 x 2 "rethink" design: ImageNet vs random weights x full network vs layer2, one head, 3 shot counts,
    3 seeds; each configuration's scores differ (so a merged line would show as a zig-zag)."""
    rows = []
    for wi, (w, (name, wid)) in enumerate(WEIGHTS.items()):
        for li, layer in enumerate(["", "layer2"]):
            for k in (2, 5, 10):
                for seed in range(3):
                    score = 0.5 + 0.1 * wi + 0.05 * li + 0.01 * k + 0.002 * seed
                    rows.append({"dataset": "d", "backbone": "resnet18", "weights": name, "weights_id": wid,
                                 "layer": layer, "head": "logistic", "head_params": '{"C":1.0}', "shots": k,
                                 "seed": seed, "split_sha256": "s", "macro_f1": score, "val_macro_f1": score,
                                 "degenerate": False})
    return pd.DataFrame(rows)


def test_rethink_design_draws_four_distinct_lines_in_every_figure():
    runs = _rethink_runs()
    table = plots.by_config(runs, "macro_f1")
    assert table["config"].nunique() == 4
    expected = {name: g.sort_values("shots")["mean"].to_numpy() for name, g in table.groupby("config")}
    for fig in (plots.learning_curve(runs, "macro_f1"), plots.lottery_spread(runs, "macro_f1")):
        lines = [ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
        assert sorted(ln.get_label() for ln in lines) == sorted(expected)
        assert len({(ln.get_color(), ln.get_marker()) for ln in lines}) == 4
    curve = plots.learning_curve(runs, "macro_f1")
    for ln in curve.axes[0].get_lines():
        if ln.get_label() in expected:  # each line is exactly its configuration's row of the table, monotone in k
            assert np.allclose(ln.get_ydata(), expected[ln.get_label()])
    strip = plots.seed_strip(runs, "macro_f1", 5)
    ticks = [t.get_text() for t in strip.axes[0].get_xticklabels()]
    assert sorted(ticks) == sorted(expected)
    dots = [c for c in strip.axes[0].collections if c.get_offsets().shape[0] == 3]
    assert len(dots) == 4  # one column of three seeds per configuration, not six dots in one column
    assert {round(float(np.mean(c.get_offsets()[:, 0]))) for c in dots} == {0, 1, 2, 3}
    legend = plots.legend_rows(runs)
    assert sorted(r[0] for r in legend) == sorted(expected)
    assert {(r[2], r[3]) for r in legend} == {("final", "imagenet1k_v1"), ("final", "random"),
                                             ("layer2", "imagenet1k_v1"), ("layer2", "random")}


def test_configurations_differing_only_in_head_params_are_two_lines():
    runs = _rethink_runs()
    runs = runs[(runs["weights"] == "random") & (runs["layer"] == "")]
    other = runs.assign(head_params='{"C":10.0}', macro_f1=runs["macro_f1"] - 0.2)
    both = pd.concat([runs, other], ignore_index=True)
    lines = [ln for ln in plots.learning_curve(both, "macro_f1").axes[0].get_lines()
             if not ln.get_label().startswith("_")]
    assert len(lines) == 2 and all("#" in ln.get_label() for ln in lines)
    summary = summarize_runs(both, clinical=ClinicalParams(), select_metric="macro_f1")
    assert {e["config"] for e in summary.values()} == {ln.get_label() for ln in lines}


@pytest.mark.parametrize("weights,weights_id,expected", [
    ("ResNet18_Weights.IMAGENET1K_V1", "torchvision:ResNet18_Weights.IMAGENET1K_V1:resnet18-f37072fd.pth",
     "imagenet1k_v1"),
    ("/home/me/.cache/huggingface/hub/models--google--medsiglip-448/snapshots/" + "ab" * 20,
     "hf:google/medsiglip-448@" + "ab" * 20, "medsiglip-448@abababa"),
    ("/srv/weights/my resnet18.pth", "sha256:" + "12" * 32, "my_resnet18-12121212"),
    ("random", "random:seed7", "random"),
])
def test_weights_names_are_short_and_hold_no_machine_path(weights, weights_id, expected):
    assert weights_name(weights, weights_id) == expected


def test_layer_names_resolve_the_same_way_in_extract_and_sweep(tmp_path, monkeypatch):
    """``final`` and a cut point's short name (``denseblock2``) name the cache extract wrote: sweep finds it
    (it used to look for ``tiny_cnn@final.h5`` and tell the user to run the extract they had run)."""
    fit_tiny_project(tmp_path, monkeypatch)
    assert main(["sweep", "--heads", "prototype", "-S", "extract.layer=final"]) == 0
    assert main(["extract", "--no-progress", "-S", "extract.layer=denseblock2"]) == 0
    assert main(["sweep", "--heads", "prototype", "-S", "extract.layer=denseblock2"]) == 0
    runs = pd.read_csv("results/runs.csv")
    assert set(runs["layer"].fillna("")) == {"", "features.denseblock2"}
    assert not list(tmp_path.rglob("*@final*"))


# --------------------------------------------------------------------------- empty branches

ROOT = Path(__file__).resolve().parents[1]


def _pipeline_commands(params: dict) -> list[tuple[str, list[str], list[str]]]:
    """dvc.yaml's stages in its order as (name, command arguments, dependency paths), with foreach/matrix
    expanded over ``params`` and ``${...}`` substituted as DVC does: the real pipeline, run without DVC."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def lookup(path: str, item):
        node = {"item": item, **params}
        for part in path.split("."):
            node = node[part]
        return str(node)

    out = []
    for name, st in stages.items():
        if "foreach" in st:
            items = _get(params, st["foreach"][2:-1])
            body, expanded = st["do"], [(str(n) if isinstance(i, dict) else str(i), i) for n, i in enumerate(items)]
        elif "matrix" in st:
            axes = {k: v if isinstance(v, list) else _get(params, v[2:-1]) for k, v in st["matrix"].items()}
            combos = [dict(zip(axes, c)) for c in itertools.product(*axes.values())]
            body, expanded = st, [("-".join(map(str, c.values())), c) for c in combos]
        else:
            body, expanded = st, [("", None)]
        for suffix, item in expanded:
            sub = lambda text: re.sub(r"\$\{([^}]+)\}", lambda m: lookup(m.group(1), item), text)
            out.append((name + (f"@{suffix}" if suffix else ""), shlex.split(sub(body["cmd"]))[1:],
                        [sub(d) for d in body.get("deps", [])]))
    return out


def _get(params: dict, path: str):
    for part in path.split("."):
        params = params[part]
    return params


def _study(tmp_path, monkeypatch, **sections) -> dict:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    params = yaml.safe_load((ROOT / "params.demo.yaml").read_text())
    small = {"data": {"synthetic": {**params["data"]["synthetic"], "images_per_class": 24, "size": 32}},
             "split": {"seeds": [0, 1], "shots": [2, 5], "val_fraction": 0.2, "test_fraction": 0.25},
             "fit": {"heads": ["logistic"], "n_jobs": 1, "bootstrap": 50},
             "finetune": {"strategies": ["head"], "shots": [5], "seeds": [0, 1], "epochs": 1, "patience": 1,
                          "precision": "fp32", "device": "cpu"},
             "compare": {"bootstrap": 50},
             "gradcam": {"runs": ["tiny_cnn-logistic-k5-s0", "tiny_cnn-head-k5-s0"]}}
    for changes in (small, sections):
        for section, values in changes.items():
            params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copyfile(ROOT / "prompts.yaml", tmp_path / "prompts.yaml")  # the zero-shot stage's dependency
    return params


@pytest.mark.parametrize("branch", ["frozen-only", "finetune-only"])
def test_a_study_with_an_empty_branch_runs_every_stage_to_its_report(tmp_path, monkeypatch, branch):
    """dvc.yaml's own commands, in order: a frozen-heads-only study (``finetune.backbones: []``) and a
    fine-tuning-only one (``extract.backbones: []``, ``fit.heads: []``) reach the report; they used to die at
    collect (results/fit missing), then gradcam (models/finetune missing)."""
    empty = {"frozen-only": {"finetune": {"backbones": []}},
             "finetune-only": {"extract": {"backbones": []}, "fit": {"heads": []}}}[branch]
    params = _study(tmp_path, monkeypatch, **empty)
    names = []
    for name, argv, deps in _pipeline_commands(params):
        missing = [d for d in deps if not Path(d).exists()]
        assert not missing, f"stage {name}: DVC refuses to run it, dependencies missing: {missing}"
        assert main(argv) == 0, f"stage {name} failed: featpipe {' '.join(argv)}"
        names.append(name.split("@")[0])
    kept = {"frozen-only": "fit", "finetune-only": "finetune"}[branch]
    assert {"fit", "finetune"} & set(names) == {kept}
    runs = pd.read_csv("results/runs.csv")
    assert (runs["head"].str.startswith("finetune:") == (kept == "finetune")).all() and len(runs) > 0
    html = Path("reports/report.html").read_text()
    assert "Learning curves" in html and "Grad-CAM: " in html  # the kept branch's run rendered, the other skipped
    assert len(list(Path("reports/gradcam").rglob("grid.png"))) == 1


# --------------------------------------------------------------------------- metrics a study is judged on


def test_report_metric_is_checked_with_the_params_and_names_the_valid_ones(tmp_path, monkeypatch, capsys):
    from featpipe.evaluation.metrics import SUMMARY_METRICS
    from featpipe.params.config import load_params
    from featpipe.params.study import METRIC_NAMES

    assert METRIC_NAMES == SUMMARY_METRICS  # the names params accept are the ones summaries have
    monkeypatch.chdir(tmp_path)
    for bad in ("report.metric=f1", "compare.metrics=[auroc,f1]"):
        assert main(["sweep", "-S", bad]) == 2  # before any work, as every other params mistake
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "macro_f1" in err[0] and "f1[<class>]" in err[0]
    assert load_params(None, ["report.metric=f1[pneumonia]"]).report.metric == "f1[pneumonia]"


def test_one_class_f1_chooses_configurations_and_per_class_tables_are_printed_and_reported(tmp_path, monkeypatch,
                                                                                            capsys):
    """``report.metric: f1[<class>]`` selects on that class's val F1 through sweep, compare and the report; the
    CLI summary and the report carry the per-class precision / recall / F1 table of the chosen configurations."""
    fit_tiny_project(tmp_path, monkeypatch)
    capsys.readouterr()
    f1 = ["-S", "report.metric=f1[finding1]", "-S", "compare.metrics=[auroc,'f1[finding1]']", "-S",
          "split.seeds=[0]"]
    assert main(["sweep", "--heads", "logistic", "prototype", *f1]) == 0
    out = capsys.readouterr().out
    table = out[out.index("per class, configuration chosen on val"):].splitlines()
    assert [ln.split()[1] for ln in table[2:4]] == ["normal", "finding1"]
    runs = pd.read_csv("results/runs.csv")
    assert runs["val_f1[finding1]"].between(0, 1).all()
    ok = runs[~runs["degenerate"].astype(bool)]
    chosen = ok.loc[ok["val_f1[finding1]"].idxmax()]
    assert table[2].split()[0] == "5" and f"/{chosen['head']}" in table[2]
    headline = json.loads(Path("results/metrics.json").read_text())  # what dvc metrics show prints: a few numbers
    assert headline["metric"] == "f1[finding1]" and headline["k5"]["chosen"] == table[2].split()[-1]
    assert len(Path("results/metrics.json").read_text()) < 1000
    assert json.loads(Path("results/summary.json").read_text())["_provenance"]["runs"] == 2
    assert main(["compare", *f1]) == 0
    assert main(["report", *f1]) == 0
    html = Path("reports/report.html").read_text()
    assert "Per class: precision, recall and F1" in html and "<td>finding1</td>" in html
    assert main(["report", "-S", "report.metric=f1[nope]"]) == 2
    assert "classes normal, finding1" in capsys.readouterr().err


def test_shots_capped_to_the_class_size_are_stated_in_prepare_tables_and_report(tmp_path, monkeypatch, capsys):
    fit_tiny_project(tmp_path, monkeypatch)
    cap = ["-S", "split.shots=[5,30]", "-S", "split.shots_policy=cap", "-S", "split.seeds=[0,1]"]
    capsys.readouterr()
    assert main(["prepare", *cap]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "capped" in ln)
    train = json.loads(Path("data/splits.json").read_text())["counts"]["train"]
    assert "30-shot subsets capped to the class size" in line and f"normal has {train['normal']} training" in line
    assert main(["extract", "--no-progress", *cap]) == 0
    assert main(["sweep", "--heads", "prototype", *cap]) == 0
    out = capsys.readouterr().out
    label = f"normal={train['normal']}"
    assert "prototype/k30: capped to the class size: " in out and label in out
    runs = pd.read_csv("results/runs.csv")
    assert set(runs.loc[runs["shots"] == 30, "capped"]) == {f"finding1={train['finding1']} {label}"}
    assert runs.loc[runs["shots"] == 5, "capped"].isna().all()
    assert json.loads(Path("results/metrics.json").read_text())["k30"]["capped"].endswith(label)
    assert main(["report", *cap]) == 0
    html = Path("reports/report.html").read_text()
    assert "30-shot subsets capped to the class size" in html and "<td>30 (capped finding1=" in html


# --------------------------------------------------------------------------- training-set fractions


def test_fractions_are_stratified_grouped_nested_and_recorded():
    from featpipe.data.splits import make_splits
    from featpipe.params.config import SplitParams
    from test_splits import fake_manifest

    df = fake_manifest(n_patients=120, per_patient=2)
    df = df[(df["label"] == 0) | (df["patient_id"].str[3:].astype(int) % 6 == 1)].reset_index(drop=True)  # 3:1
    params = SplitParams(seeds=(0, 1), shots=(), fractions=(0.05, 0.1, 0.5), test_fraction=0.2, val_fraction=0.1,
                         val_policy="full")
    obj = make_splits(df, ["c0", "c1"], params, dataset="t", manifest_sha256="abc")
    train = obj["counts"]["train"]
    assert train["c0"] > 2 * train["c1"]  # imbalanced
    label = dict(zip(df["id"], df["label_name"]))
    patient = dict(zip(df["id"], df["patient_id"]))
    assert [v["fraction"] for _, v in sorted(obj["fractions"].items(), key=lambda x: int(x[0]))] == [0.05, 0.1, 0.5]
    for key, rec in obj["fractions"].items():
        f = rec["fraction"]
        assert rec["per_class"] == {c: max(1, round(f * n)) for c, n in train.items()}  # each class keeps its share
        assert int(key) == sum(rec["per_class"].values())
    for seed, per_key in obj["fewshot"].items():
        prev = set()
        for key in sorted(per_key, key=int):
            ids = per_key[key]
            assert set(ids) <= set(obj["train"]) and prev <= set(ids)  # from train only, nested
            assert {c: sum(label[i] == c for i in ids) for c in ("c0", "c1")} == obj["fractions"][key]["per_class"]
            per_class_patients = {c: {patient[i] for i in ids if label[i] == c} for c in ("c0", "c1")}
            for c in ("c0", "c1"):  # one image per patient while the class's patients last
                n = sum(label[i] == c for i in ids)
                patients_in_train = len({patient[i] for i in obj["train"] if label[i] == c})
                assert len(per_class_patients[c]) == min(n, patients_in_train)
            prev = set(ids)
    assert obj["fewshot"]["0"] != obj["fewshot"]["1"]  # the seed draws the subset


@pytest.mark.parametrize("override,words", [
    (["split.fractions=[0.1]"], "set split.shots: []"),
    (["split.shots=[]", "split.fractions=[0]"], "in (0, 1]"),
    (["split.shots=[]", "split.fractions=[0.1]", "split.val_policy=matched"], "val_policy: full"),
])
def test_fraction_mistakes_are_one_line_before_any_work(tmp_path, monkeypatch, capsys, override, words):
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", *[x for o in override for x in ("-S", o)]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_a_fraction_study_on_real_images_labels_runs_by_fraction_and_images_per_class(tmp_path, monkeypatch,
                                                                                      pneumoniamnist, capsys):
    """PneumoniaMNIST (real radiographs): 1% .. 10% of the training set, the tables and metrics name the fraction
    and the images per class, fine-tuning takes the same subsets (finetune.shots: [])."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    (tmp_path / "params.yaml").write_text(
        f"data: {{name: pm, source: npz, path: {pneumoniamnist}, class_names: [normal, pneumonia]}}\n"
        "split: {seeds: [0, 1], shots: [], fractions: [0.02, 0.05, 0.1], val_policy: full}\n"
        "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu}\n"
        "fit: {n_jobs: 1, heads: [prototype]}\n"
        "finetune: {backbones: [tiny_cnn], strategies: [head], shots: [], seeds: [0], epochs: 1, precision: fp32, "
        "device: cpu}\n")
    assert main(["prepare", "--no-progress"]) == 0
    out = capsys.readouterr().out
    splits = json.loads(Path("data/splits.json").read_text())
    fr = splits["fractions"]
    assert len(fr) == 3 and all(f"fraction {v['fraction']:g} of the training set: {k} images" in out for k, v in fr.items())
    assert main(["extract", "--no-progress"]) == 0
    assert main(["sweep"]) == 0
    assert main(["finetune", "--quiet", "--strategy", "head", "--backbone", "tiny_cnn", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    runs = pd.read_csv("results/runs.csv")
    assert sorted(set(runs["fraction"])) == [0.02, 0.05, 0.1] and set(runs["head"]) == {"prototype", "finetune:head"}
    for _, r in runs.iterrows():
        rec = fr[str(r["shots"])]
        assert r["fraction"] == rec["fraction"] and r["n_train"] == r["shots"]
        assert r["images_per_class"] == f"normal={rec['per_class']['normal']} pneumonia={rec['per_class']['pneumonia']}"
    assert "pm/tiny_cnn+random/prototype/f0.05: fraction 0.05 of the training set" in out
    assert main(["collect", "results", "--out", "merged"]) == 0
    headline = json.loads(Path("merged/metrics.json").read_text())
    assert {k for k in headline if k.startswith("f")} <= {"f0.02", "f0.05", "f0.1"}


# --------------------------------------------------------------------------- the clinical rule


def test_the_published_clinical_rule_is_a_named_option_beside_featpipes():
    """Mean accuracy 0.93 +- 0.02 and mean AUROC 0.96 over 3 seeds: the published rule (means, std) passes it,
    featpipe's (interval lower bounds, 5 seeds, sensitivity/specificity) does not; each says which rule it is."""
    from featpipe.params.config import load_params
    from featpipe.report.selection import clinical_rule_text
    from featpipe.results.summary import format_summary

    rows = [{"dataset": "d", "backbone": "b", "weights": "random", "weights_id": "random:seed0", "layer": "",
             "head": "svc", "head_params": "{}", "shots": 10, "seed": s, "split_sha256": "x", "n_test": 200,
             "accuracy": a, "auroc": u, "sensitivity": 0.9, "specificity": 0.7, "macro_f1": a, "val_macro_f1": a}
            for s, (a, u) in enumerate([(0.91, 0.95), (0.93, 0.96), (0.95, 0.97)])]
    df = pd.DataFrame(rows)
    for rule, grade in (("published", True), ("featpipe", False)):
        clinical = load_params(None, [f"clinical.rule={rule}"]).clinical
        entry = next(iter(summarize_runs(df, clinical=clinical, select_metric="macro_f1").values()))
        assert entry["clinical_grade"] is grade and entry["clinical_rule"] == rule
        text = format_summary({"d/b+random/svc/k10": entry})
        assert ("published rule" in text) == (rule == "published")
        assert ("the published study's rule" in clinical_rule_text(clinical)) == (rule == "published")
    fails = summarize_runs(df.assign(accuracy=df["accuracy"] - 0.1), clinical=load_params(
        None, ["clinical.rule=published"]).clinical, select_metric="macro_f1")
    assert next(iter(fails.values()))["clinical_failed"] == ["mean accuracy 0.830 < 0.90"]


# --------------------------------------------------------------------------- CheXpert's own split files

PATHOLOGIES = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Pneumonia"]


def chexpert_tree(figure1_dir: Path, root: Path) -> Path:
    """CheXpert-v1.0-small's layout and CSVs (Path, Sex, Age, Frontal/Lateral, AP/PA, pathology columns with
    1.0 / 0.0 / -1.0 / blank) over real radiographs: 40 train images of 20 patients, the rest valid."""
    import shutil

    images = sorted((figure1_dir / "images").glob("*.jpg"))[:52]
    assert len(images) >= 48
    top = root / "CheXpert-v1.0-small"
    lines = {"train": [], "valid": []}
    for i, img in enumerate(images):
        part = "train" if i < 40 else "valid"
        patient = 1 + i // 2 + (100 if part == "valid" else 0)
        rel = f"CheXpert-v1.0-small/{part}/patient{patient:05d}/study1/view{1 + i % 2}_frontal.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(img, root / rel)
        pneumonia = ["1.0", "0.0", "", "-1.0"][i % 4] if part == "train" else ["1.0", "0.0"][i % 2]
        lines[part].append(f"{rel},Female,60,Frontal,AP,,,1.0,,{pneumonia}")
    for part, rows in lines.items():
        (top / f"{part}.csv").write_text("Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(PATHOLOGIES) + "\n"
                                         + "\n".join(rows) + "\n")
    return top


def test_chexpert_train_and_valid_csvs_are_one_source_with_their_split(tmp_path, monkeypatch, figure1_dir, capsys):
    top = chexpert_tree(figure1_dir, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    args = ["prepare", "--no-cache", "-S", "data.source=csv", "-S", f"data.path={top}", "-S", "data.name=cx",
            "-S", "data.csv.split_files=[train.csv, valid.csv]", "-S", f"data.csv.root={top.parent}",
            "-S", "data.csv.path_col=Path", "-S", "data.csv.label_col=null", "-S", "data.csv.task=Pneumonia",
            "-S", "split.shots=[1,2]", "-S", "split.min_source_val_per_class=2", "-S", "split.test_fraction=0.3"]
    assert main(args) == 0
    manifest = pd.read_csv("data/manifest.csv")
    rejects = pd.read_csv("data/rejects.csv")
    n_valid = len(list((top / "valid").rglob("*.jpg")))
    assert len(manifest) == 30 + n_valid and len(rejects) == 10  # train: 10 uncertain (-1) rows ignored
    src = dict(zip(manifest["path"], manifest["source_split"]))
    assert {s for p, s in src.items() if "/valid/" in p} == {"val"} and {s for p, s in src.items() if "/train/" in p} == {"train"}
    assert manifest["patient_id"].str.match(r"^patient\d{5}$").all()
    splits = json.loads(Path("data/splits.json").read_text())
    valid_ids = set(manifest.loc[manifest["source_split"] == "val", "id"])
    assert splits["source"]["val"] == "source" and set(splits["val"]) <= valid_ids  # valid.csv is the val split
    assert not set(splits["val"]) & set(manifest.loc[manifest["source_split"] == "train", "id"])
    assert len(splits["val"]) + sum(e["from"] == "val" for e in splits["excluded"]) == n_valid
    assert main([*args, "-S", "data.csv.split_files=[train.csv, extra.csv]"]) != 0
    assert "must say its split" in capsys.readouterr().err


# --------------------------------------------------------------------------- arms


def test_arms_each_with_their_own_settings_are_distinct_configurations(tmp_path, monkeypatch):
    """The ResNet-18 study's shape: one backbone from scratch with Adam at lr 1e-3, the same from its own local
    weights file with SGD, another backbone's head only; each arm is its own configuration and its weights
    file is applied to its backbone only (finetune.weights stays default for the others)."""
    import torch

    from featpipe.backbones import registry

    torch.manual_seed(7)
    weights = tmp_path / "my cnn.pth"
    torch.save(registry.get("tiny_cnn").make().state_dict(), weights)
    arms = [{"name": "cnn-scratch-adam", "backbone": "tiny_cnn", "strategy": "scratch", "optimizer": "adam",
             "lr": 1e-3},
            {"name": "cnn-own-sgd", "backbone": "tiny_cnn", "strategy": "full", "optimizer": "sgd", "lr": 1e-2,
             "weights": str(weights), "epochs": 2},
            {"name": "vit-head", "backbone": "tiny_vit", "strategy": "head"}]
    params = _study(tmp_path, monkeypatch, extract={"backbones": []}, fit={"heads": []},
                    finetune={"backbones": [], "arms": arms},
                    gradcam={"runs": ["tiny_cnn-full-cnn-own-sgd-k5-s0"]})
    stages = []
    for name, argv, deps in _pipeline_commands(params):
        assert all(Path(d).exists() for d in deps), name
        assert main(argv) == 0, name
        stages.append(name)
    assert [s for s in stages if s.startswith("arm@")] == ["arm@0", "arm@1", "arm@2"]
    runs = pd.read_csv("results/runs.csv")
    by_head = {h: g for h, g in runs.groupby("head")}
    assert set(by_head) == {"finetune:scratch:cnn-scratch-adam", "finetune:full:cnn-own-sgd", "finetune:head:vit-head"}
    own = by_head["finetune:full:cnn-own-sgd"].iloc[0]
    from featpipe.core.fileio import file_sha256

    assert own["weights_id"] == f"sha256:{file_sha256(weights)}" and own["weights"].startswith("my_cnn-")
    assert json.loads(own["head_params"])["optimizer"] == "sgd" and json.loads(own["head_params"])["epochs"] == 2
    scratch = json.loads(by_head["finetune:scratch:cnn-scratch-adam"].iloc[0]["head_params"])
    assert scratch["optimizer"] == "adam" and scratch["lr"] == 1e-3
    assert set(by_head["finetune:head:vit-head"]["weights"]) == {"random"}  # tiny_vit's default, not the file
    lines = [ln for ln in plots.learning_curve(runs, "macro_f1").axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert len(lines) == 3
    assert len(list(Path("reports/gradcam").rglob("grid.png"))) == 1
    assert "finetune:full:cnn-own-sgd" in Path("reports/report.html").read_text()


def test_arm_mistakes_are_one_line(tmp_path, monkeypatch, capsys):
    from featpipe.finetune.strategies import STRATEGIES
    from featpipe.params.study import FINETUNE_STRATEGIES

    assert FINETUNE_STRATEGIES == STRATEGIES
    monkeypatch.chdir(tmp_path)
    for arms, words in (("[{backbone: tiny_cnn}]", "give it a name"),
                        ("[{name: a, backbone: tiny_cnn, strategy: partial}]", "unknown strategy 'partial'"),
                        ("[{name: a, backbone: tiny_cnn, optimizer: lion}]", "choose from adamw, adam, sgd"),
                        ("[{name: a, backbone: tiny_cnn}, {name: a, backbone: tiny_vit}]", "two arms are named 'a'")):
        assert main(["finetune", "-S", f"finetune.arms={arms}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_backbones_details_show_what_each_strategy_freezes(capsys):
    assert main(["backbones", "--details"]) == 0
    out = capsys.readouterr().out
    resnet = out[out.index("resnet50 (resnet)"):].splitlines()
    assert resnet[3].split()[0] == "layerwise" and "conv1, bn1, layer1" in resnet[3]
    vit = out[out.index("vit_b_16 (vit)"):].splitlines()[3]
    assert "encoder.layers.encoder_layer_3" in vit and "encoder_layer_4" not in vit
    eff = out[out.index("efficientnet_b4 (efficientnet)"):].splitlines()[3]
    assert "features.0, features.1, features.2" in eff


# --------------------------------------------------------------------------- networks of your own

MY_NET = '''
import torch.nn as nn


def tiny_net():
    """A user's own network: (B, 3, H, W) -> (B, 12)."""
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 12, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
'''


def test_networks_of_your_own_from_params_and_a_python_entry_point(tmp_path, monkeypatch):
    """The low-data study's "simple CNN" from params and a network from the user's own module: extracted, fitted,
    fine-tuned from scratch and layer-wise, explained with Grad-CAM, without editing featpipe."""
    (tmp_path / "my_nets.py").write_text(MY_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    networks = [{"name": "simple_cnn", "factory": "simple_cnn", "channels": [8, 16], "input_size": 32},
                {"name": "mine", "factory": "my_nets:tiny_net", "embed_dim": 12, "input_size": 32,
                 "gradcam_layer": "2", "layers": ["0=6"]}]
    params = _study(tmp_path, monkeypatch, extract={"backbones": ["simple_cnn", "mine"]},
                    finetune={"backbones": ["simple_cnn"], "strategies": ["scratch", "layerwise"]},
                    gradcam={"runs": ["simple_cnn-logistic-k5-s0", "simple_cnn-scratch-k5-s0"], "layer": None})
    params["networks"] = networks
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, argv, deps in _pipeline_commands(params):
        assert main(argv) == 0, name
    runs = pd.read_csv("results/runs.csv")
    assert set(runs["backbone"]) == {"simple_cnn", "mine"}
    scratch = runs[runs["head"] == "finetune:scratch"]
    assert scratch["weights_id"].str.match(r"^random:seed[01]@custom:[0-9a-f]{12}$").all()
    assert scratch["weights_id"].nunique() == 2  # each seed its own initialisation
    assert len(list(Path("reports/gradcam").rglob("grid.png"))) == 2
    assert main(["extract", "--no-progress", "--backbone", "mine", "-S", "extract.layer=0"]) == 0
    from featpipe.features.cache import read_attrs

    before = read_attrs(next(Path("cache").rglob("simple_cnn.h5")))["weights_id"]
    params["networks"][0]["channels"] = [8, 24]  # another network under the same name: never the old features
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["extract", "--no-progress", "--backbone", "simple_cnn"]) == 0
    after = read_attrs(next(Path("cache").rglob("simple_cnn.h5")))
    assert after["weights_id"] != before and after["embedding_dim"] == 24


def test_a_network_may_not_take_a_builtin_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["backbones", "-S", "networks=[{name: resnet18, channels: [4]}]"]) != 0
    assert "built-in backbone" in capsys.readouterr().err
    assert main(["backbones", "-S", "networks=[{name: x, factory: nomodule}]"]) == 2


def test_the_synthetic_set_is_not_rejected_by_its_own_prepare(tmp_path, monkeypatch):
    """The demo's data folder holds synthetic.json beside the class folders: metadata, not a rejected image;
    an image outside a class folder is still rejected."""
    from tests.conftest import write_image

    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "--no-cache", "-S", "data.synthetic.images_per_class=10", "-S", "split.shots=[1]"]) == 0
    assert Path("data/synthetic/synthetic.json").is_file()
    assert pd.read_csv("data/rejects.csv").empty
    write_image(Path("data/synthetic/stray.png"))
    assert main(["prepare", "--no-cache", "-S", "data.synthetic.images_per_class=10", "-S", "split.shots=[1]"]) == 0
    assert pd.read_csv("data/rejects.csv")["reason"].tolist() == ["not in a class folder"]


def test_layerwise_freeze_is_settable_and_its_own_configuration():
    """finetune.layerwise_freeze replaces the family's rule (ResNet: stem + layer1) with the user's prefixes (stem +
    layer1 + layer2), and is part of the configuration's head params."""
    from featpipe.finetune.checkpoint import build_model
    from featpipe.finetune.run import Job, head_params
    from featpipe.params.config import load_params

    frozen = lambda m: {n.split(".")[0] for n, p in m.features.net.named_parameters() if not p.requires_grad}
    rule, _ = build_model("resnet18", "layerwise", 2, weights="random")
    assert frozen(rule) == {"conv1", "bn1", "layer1"}
    mine, _ = build_model("resnet18", "layerwise", 2, weights="random", freeze=("conv1.", "bn1.", "layer1.", "layer2."))
    assert frozen(mine) == {"conv1", "bn1", "layer1", "layer2"}
    p = load_params(None, ["finetune.layerwise_freeze=[conv1., bn1., layer1., layer2.]"]).finetune
    assert head_params(Job("resnet18", "layerwise", 5, 0), p)["layerwise_freeze"][-1] == "layer2."
    assert "layerwise_freeze" not in head_params(Job("resnet18", "full", 5, 0), p)
    with pytest.raises(Exception, match="layerwise_freeze"):
        build_model("resnet18", "layerwise", 2, weights="random", freeze=("blocks.0.",))
