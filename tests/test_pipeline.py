"""`dvc repro` end to end on a small demo, in a temporary copy of the project (with git, as users run it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from featpipe.evaluation.table import prediction_files

ROOT = Path(__file__).resolve().parents[1]
DVC = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))

# the demo graph, made smaller so that the whole repro takes about a minute on 2 cores
SMALL = {
    "split": {"seeds": [0, 1, 2], "shots": [2, 5, 20]},
    "fit": {"heads": ["svc", "logistic"]},
    "finetune": {"strategies": ["head", "layerwise"], "shots": [5], "seeds": [0, 1], "epochs": 4, "patience": 2},
    "gradcam": {"runs": ["tiny_cnn-logistic-k20-s0", "tiny_cnn-layerwise-k5-s0"]},
    "compare": {"bootstrap": 200},
}


def _run(*cmd, cwd, timeout=3600):  # against a hang only: a loaded machine may take long
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _params_keys(node, prefix=""):
    for k, v in node.items():
        yield f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _params_keys(v, f"{prefix}{k}.")


def test_every_params_key_dvc_reads_exists_in_both_params_files():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    wanted = set()
    for st in stages.values():
        body = st.get("do", st)
        for p in body.get("params", []):
            wanted.add(p if isinstance(p, str) else next(iter(p)))
    for name in ("params.yaml", "params.demo.yaml"):
        data = yaml.safe_load((ROOT / name).read_text())
        keys = set(_params_keys(data))
        heads = data["fit"]["heads"]
        expanded = {w.replace("${item.head}", h) for w in wanted for h in heads}
        assert expanded <= keys, f"{name} lacks {sorted(expanded - keys)}"
        from featpipe.params.config import load_params

        load_params(ROOT / name)  # and it validates


@pytest.mark.slow(seconds=105)
def test_dvc_repro_end_to_end(tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    shutil.copy(ROOT / "prompts.yaml", work / "prompts.yaml")
    params = yaml.safe_load((ROOT / "params.demo.yaml").read_text())
    for section, values in SMALL.items():
        params[section].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run("git", "init", "-q", cwd=work)
    _run(DVC, "init", "-q", cwd=work)
    _run(DVC, "config", "core.analytics", "false", cwd=work)

    first = _run(DVC, "repro", cwd=work)
    stages = {"fetch", "prepare", "decode", "extract@tiny_cnn", "fit@tiny_cnn-svc", "fit@tiny_cnn-logistic",
              "finetune@tiny_cnn-head", "finetune@tiny_cnn-layerwise", "zeroshot@tiny_cnn", "textfit@tiny_cnn",
              "collect", "compare", "gradcam", "report"}
    assert _ran(first) == stages
    assert "has no text tower" in (work / "results/fit/text-tiny_cnn/TEXT.txt").read_text()  # textlogistic: none
    # one decode per image: prepare's verification filled the decoded cache, the decode stage found it current
    assert "decoded-32.h5: 300 images (1 channel), already current (not rewritten)" in first

    metrics = json.loads(_run(DVC, "metrics", "show", "--json", cwd=work))
    headline = next(iter(metrics.values()))["data"]["results/metrics.json"]["data"]
    assert headline["metric"] == "macro_f1" and 0.0 <= headline["k20"]["macro_f1"] <= 1.0  # chosen on val at k=20
    assert len(_run(DVC, "metrics", "show", cwd=work)) < 3000  # a few readable columns, not every configuration
    summary = json.loads((work / "results/summary.json").read_text())
    assert "demo/tiny_cnn+random/svc/k20" in summary and "demo/tiny_cnn+random/finetune:layerwise/k5" in summary
    assert 0.0 <= summary["demo/tiny_cnn+random/logistic/k20"]["macro_f1"]["mean"] <= 1.0

    assert _ran(_run(DVC, "repro", cwd=work)) == {"fetch"}  # fetch only fingerprints the source

    params["heads"]["svc"]["C"] = 3.0
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = _ran(_run(DVC, "repro", cwd=work))
    # that head's stage, the merged table and the report; gradcam too, because it depends on the saved
    # models folder (models/fit), which the svc stage rewrote (its heads are not rendered, the stage reruns)
    assert again == {"fetch", "fit@tiny_cnn-svc", "collect", "compare", "gradcam", "report"}

    html = (work / "reports/report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6  # learning curves, lottery, ROC/PR, Grad-CAM embedded
    assert "src=\"http" not in html and "<script src" not in html  # self-contained: scripts inlined, nothing fetched
    assert "Grad-CAM" in html and "grid.png" not in html
    assert "chosen on val" in html and "Paired comparisons" in html and "split.val_policy: full" in html
    comparisons = (work / "results/comparisons.csv").read_text().splitlines()
    assert comparisons[0].startswith("shots,config_a,config_b,metric,n_seeds,mean_diff,ci_low,ci_high,p_value,p_holm")
    assert prediction_files(work / "results/fit")
    # predict accepts a fine-tuned model as well as a saved head
    for model in (next((work / "models/finetune").rglob("*-layerwise-k5-s0-*.safetensors")),
                  next((work / "models/fit").rglob("tiny_cnn-svc-k20-s0-*.skops"))):
        _run(sys.executable, "-m", "featpipe", "predict", "--model", str(model), "--out", "pred.csv", "data/synthetic/normal", cwd=work)
        pred = (work / "pred.csv").read_text().splitlines()
        assert pred[0] == "path,predicted,p[normal],p[finding1]" and len(pred) == 151
    # the decode stage built exactly the cache every later stage read (tiny_cnn: decode size 32) and no
    # decoded cache was written after it finished (no later stage decoded)
    stamp = work / "cache/demo/decoded.json"
    decoded = sorted((work / "cache/demo").glob("decoded*"))
    assert [p.name for p in decoded] == ["decoded-32.h5", "decoded.json"] and set(json.loads(stamp.read_text())) == {"32"}
    assert decoded[0].stat().st_mtime_ns <= stamp.stat().st_mtime_ns
    runs = (work / "results/runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 2 * 3 * 3 + 2 * 1 * 2  # heads x shots x seeds + strategies x shots x seeds


# What the study's own params.yaml may be reduced by for CI: nothing else changes (backbones, weights, Grad-CAM runs
# and every setting stay the repository's; the default-params test below also runs fewer heads and strategies).
REDUCED = {("split", "seeds"): [0], ("split", "shots"): [10], ("finetune", "seeds"): [0],
           ("finetune", "shots"): [10], ("finetune", "epochs"): 1}


def reduced_params(data_path: str) -> dict:
    """The repository's params.yaml with only seeds, shots, epochs and the data file reduced."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for (section, key), value in REDUCED.items():
        params[section][key] = value
    params["data"]["path"] = data_path
    return params


@pytest.mark.slow(seconds=210)
def test_dvc_repro_on_the_default_params_with_planted_weights(tmp_path, monkeypatch, pneumoniamnist,
                                                              tmp_path_factory):
    """The real study's graph (DenseNet161, ResNet50, MedSigLIP with default weights, every stage of dvc.yaml,
    Grad-CAM of its named runs) on 28 real chest X-rays, weights planted offline. Seeds, shots and epochs are reduced,
    and so are the heads and strategies each stage runs (every one is one more process of the same command, ~3 s
    of imports each): the heads and strategies the Grad-CAM runs name, plus ``scratch`` (the one without
    pretrained weights) and ``logistic`` (the text-initialised head's comparison needs it); the other heads and
    strategies run through the same stage commands in other tests (heads: test_fit.py, test_heads.py; strategies:
    test_finetune.py)."""
    import pretrained_fixtures as pf

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    home = pf.plant(tmp_path / "weights", set(params["extract"]["backbones"])
                    | set(params["finetune"]["backbones"]))
    pf.use_home(monkeypatch, home)
    work = tmp_path / "project"
    # 28 images: 24 to draw train (10 per class for k = 10) and val from, 4 to test
    pf.tiny_npz(pneumoniamnist, work / "data" / "cxr-slice.npz", {"train": 11, "val": 1, "test": 2})
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    shutil.copy(ROOT / "prompts.yaml", work / "prompts.yaml")
    params = reduced_params("data/cxr-slice.npz")
    named = [run.split("-") for run in params["gradcam"]["runs"]]  # densenet161-svc-k10-s0, resnet50-layerwise-k10-s0
    assert {"svc"} <= {n[1] for n in named} <= set(params["fit"]["heads"]) | set(params["finetune"]["strategies"])
    params["fit"]["heads"] = [h for h in params["fit"]["heads"] if h in {n[1] for n in named} | {"logistic"}]
    params["finetune"]["strategies"] = [s for s in params["finetune"]["strategies"]
                                        if s in {n[1] for n in named} | {"scratch"}]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run("git", "init", "-q", cwd=work)
    _run(DVC, "init", "-q", cwd=work)
    _run(DVC, "config", "core.analytics", "false", cwd=work)

    out = _run(DVC, "repro", cwd=work, timeout=3000)  # ~2.5 min on a quiet 2-core CPU; a shared one is slower
    backs, heads = params["extract"]["backbones"], params["fit"]["heads"]
    expected = ({"fetch", "prepare", "decode", "collect", "compare", "gradcam", "report"}
                | {f"extract@{b}" for b in backs} | {f"fit@{b}-{h}" for b in backs for h in heads}
                | {f"zeroshot@{b}" for b in backs} | {f"textfit@{b}" for b in backs}
                | {f"finetune@{b}-{s}" for b in params["finetune"]["backbones"] for s in params["finetune"]["strategies"]})
    assert _ran(out) == expected
    html = (work / "reports/report.html").read_text()
    assert "Grad-CAM" in html and "src=\"http" not in html
    for run in params["gradcam"]["runs"]:  # densenet161-svc-k10-s0 (a head on ImageNet weights) and a fine-tune
        index = json.loads(next((work / "reports/gradcam").glob(f"*{run}*/index.json")).read_text())
        assert index["images"] and index["info"]["backbone"] == run.split("-")[0]
    runs = (work / "results/runs.csv").read_text().splitlines()
    n_sets = len(yaml.safe_load((ROOT / "prompts.yaml").read_text())["sets"])  # zero-shot: one run per prompt set
    # heads x 1 shot x 1 seed + strategies + medsiglip's zero-shot prompt sets and its text-initialised head
    strategies = params["finetune"]["strategies"]
    assert len(heads) == 2 and len(strategies) == 2
    assert len(runs) == 1 + len(backs) * len(heads) + len(params["finetune"]["backbones"]) * len(strategies) + n_sets + 1
    assert ",zeroshot," in "".join(runs) and ",textlogistic," in "".join(runs) and "Calibration" in html
    assert "Text prior against the plain logistic head" in html
    assert "DenseNet161_Weights.IMAGENET1K_V1" in runs[1] + "".join(runs) and "google/medsiglip-448" in "".join(runs)


@pytest.mark.slow(seconds=75)
def test_dvc_repro_biomedclip_zero_shot_text_prior_knn_patients_and_temperature(tmp_path, monkeypatch,
                                                                                 pneumoniamnist, tmp_path_factory):
    """BiomedCLIP (open_clip, planted snapshot of tests/library_fixtures.py) through `dvc repro` on the study's
    params reduced to it: its zero-shot stage (one run per prompt set, k = 0), its text-initialised head beside the
    plain logistic one, kNN, shots counted in patients and temperature scaling, to runs.csv and the report. No
    fine-tuning and no Grad-CAM runs (the default-params test above covers those)."""
    import library_fixtures as lf
    import pandas as pd
    import pretrained_fixtures as pf

    home = tmp_path / "biomedclip-weights"
    lf.plant_biomedclip(home)
    lf.use(monkeypatch, home)
    work = tmp_path / "project"
    pf.tiny_npz(pneumoniamnist, work / "data" / "cxr-slice.npz", {"train": 11, "val": 1, "test": 2})
    for name in ("dvc.yaml", "prompts.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, work / name)
    params = reduced_params("data/cxr-slice.npz")
    params["extract"]["backbones"] = ["biomedclip"]
    params["fit"].update({"heads": ["logistic", "knn"], "bootstrap": 100})
    params["finetune"]["backbones"], params["gradcam"]["runs"] = [], []
    params["split"]["shot_unit"], params["heads"]["calibrate"] = "patient", "temperature"
    params["compare"]["bootstrap"] = 100
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run("git", "init", "-q", cwd=work)
    _run(DVC, "init", "-q", cwd=work)
    _run(DVC, "config", "core.analytics", "false", cwd=work)

    out = _run(DVC, "repro", cwd=work, timeout=3000)
    assert _ran(out) == {"fetch", "prepare", "decode", "extract@biomedclip", "fit@biomedclip-logistic",
                         "fit@biomedclip-knn", "zeroshot@biomedclip", "textfit@biomedclip", "collect", "compare",
                         "gradcam", "report"}
    runs = pd.read_csv(work / "results/runs.csv")
    n_sets = len(yaml.safe_load((ROOT / "prompts.yaml").read_text())["sets"])
    assert set(runs["backbone"]) == {"biomedclip"} and len(runs) == 3 + n_sets
    zs = runs[runs["head"] == "zeroshot"]  # one run per prompt set at k = 0, its index as the seed
    assert len(zs) == n_sets and set(zs["shots"]) == {0} and sorted(zs["seed"]) == list(range(n_sets))
    assert set(zs["features"]) == {"image_embeds"} and zs["auroc"].between(0, 1).all()
    fitted = runs[runs["head"] != "zeroshot"].set_index("head")
    assert sorted(fitted.index) == ["knn", "logistic", "textlogistic"] and set(fitted["shots"]) == {10}
    assert (fitted["n_train"] == 20).all()  # 10 patients per class, one image each (MedMNIST: no patient ids)
    # temperature scaling on val for the heads whose outputs are probabilities, recorded in the row
    assert set(fitted["calibration"]) == {"temperature"} and (fitted["temperature"] > 0).all()
    assert fitted[["ece", "val_ece"]].notna().all().all()
    assert json.loads((work / "data/splits.json").read_text())["params"]["shot_unit"] == "patient"
    html = (work / "reports/report.html").read_text()
    assert "Shots count <b>patients</b>" in html and "Calibration" in html
    assert "Text prior against the plain logistic head" in html and "src=\"http" not in html


@pytest.mark.slow(seconds=63)
def test_a_failed_repro_reruns_only_what_it_left_undone(tmp_path, figure1_dir):
    """A `dvc repro` in a git repository that fails at prepare_external (a label_map to a class the study lacks),
    then the map fixed: the next repro runs the external stages and the report, and not collect or compare. DVC
    removes the .gitignore entries it added in a failed run; without the project's .dvcignore, collect (which
    depends on results/fit, the folder holding those files) saw its folders changed and reran."""
    work = tmp_path / "project"
    work.mkdir()
    for name in ("dvc.yaml", "prompts.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, work / name)
    params = yaml.safe_load((ROOT / "params.demo.yaml").read_text())
    params["split"].update({"seeds": [0, 1], "shots": [5]})
    params["fit"].update({"heads": ["logistic"]})
    params["finetune"].update({"strategies": ["head"], "shots": [5], "seeds": [0], "epochs": 1, "patience": 1})
    params["gradcam"].update({"runs": []})
    ext = {"name": "figure1", "source": "csv", "path": str(figure1_dir / "metadata.csv"),
           "csv": {"root": str(figure1_dir / "images"), "path_col": "patientid", "label_col": "finding"},
           "label_map": {"COVID-19": "pneumonia", "No finding": "normal"}}  # 'pneumonia' is no class of the demo
    params["evaluate"] = {"external": [ext]}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run("git", "init", "-q", cwd=work)
    _run(DVC, "init", "-q", cwd=work)
    _run(DVC, "config", "core.analytics", "false", cwd=work)
    failed = subprocess.run([DVC, "repro"], check=False, cwd=work, capture_output=True, text=True, timeout=3600)
    assert failed.returncode != 0 and "which is not a study class (normal, finding1)" in failed.stderr + failed.stdout
    assert {"collect", "compare", "fetch_external@0", "prepare_external@0"} <= _ran(failed.stdout + failed.stderr)
    ext["label_map"] = {"COVID-19": "finding1", "Pneumonia": "finding1", "No finding": "normal"}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = _ran(_run(DVC, "repro", cwd=work))
    assert again == {"fetch", "fetch_external@0", "prepare_external@0", "evaluate_external@0", "gradcam", "report"}
    assert _ran(_run(DVC, "repro", cwd=work)) == {"fetch", "fetch_external@0"}  # always run, nothing after them
