"""The shipped study presets (studies/*.yaml): each runs `featpipe study <name> --data PATH --smoke` to a report on
tiny data built here from the real images in ../shared/data, through dvc.yaml's own stage commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from featpipe.cli.main import main
from featpipe.cli.study import presets
from featpipe.report import plots
from tests.test_study import ROOT, _pipeline_commands, chexpert_tree


def _real(pneumoniamnist: Path, n: int, label: int, offset: int = 0) -> np.ndarray:
    d = np.load(pneumoniamnist)
    x, y = d["train_images"], d["train_labels"].ravel()
    return x[y == label][offset:offset + n]


def kaggle_folder(pneumoniamnist: Path, root: Path, *, normal: int = 36, pneumonia: int = 24) -> Path:
    """Kaggle's chest_xray layout (train/NORMAL, train/PNEUMONIA, test/...): real PneumoniaMNIST radiographs,
    imbalanced (more normal than pneumonia)."""
    for cls, label, n in (("NORMAL", 0, normal), ("PNEUMONIA", 1, pneumonia)):
        for i, img in enumerate(_real(pneumoniamnist, n, label)):
            part = "test" if i < n // 4 else "train"
            (root / part / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / part / cls / f"{cls.lower()}{i:03d}.png")
    return root


def four_class_folder(pneumoniamnist: Path, root: Path) -> Path:
    """Four class folders of real radiographs (the COVID-19 Radiography Database's shape)."""
    for j, cls in enumerate(("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")):
        (root / cls).mkdir(parents=True)
        for i, img in enumerate(_real(pneumoniamnist, 22, j % 2, offset=22 * (j // 2))):
            Image.fromarray(img).save(root / cls / f"{cls}-{i}.png")
    return root


def small_npz(pneumoniamnist: Path, path: Path) -> Path:
    """PneumoniaMNIST's npz cut to 120 train, 30 val and 40 test images, both classes equally."""
    d = np.load(pneumoniamnist)
    out = {}
    for part, n in {"train": 120, "val": 30, "test": 40}.items():
        y = d[f"{part}_labels"].ravel()
        rows = np.concatenate([np.flatnonzero(y == c)[: n // 2] for c in (0, 1)])
        out |= {f"{part}_images": d[f"{part}_images"][rows], f"{part}_labels": d[f"{part}_labels"][rows]}
    np.savez(path, **out)
    return path


def ham_csv(pneumoniamnist: Path, root: Path) -> Path:
    """HAM10000's metadata CSV (lesion_id, image_id, dx) over real images named by image id, two per lesion."""
    (root / "images").mkdir(parents=True)
    rows = []
    for label, dx in ((0, "nv"), (1, "mel")):
        for i, img in enumerate(_real(pneumoniamnist, 30, label)):
            image_id = f"ISIC_{label}{i:05d}"
            Image.fromarray(img).save(root / "images" / f"{image_id}.jpg")
            rows.append({"lesion_id": f"HAM_{label}{i // 2:05d}", "image_id": image_id, "dx": dx})
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root / "HAM10000_metadata.csv"


DATA = {"lottery-binary": kaggle_folder, "lottery-4class": four_class_folder, "svc-fractions": small_npz,
        "lowdata": ham_csv, "resnet18": kaggle_folder, "rethink": kaggle_folder}


def test_every_shipped_preset_has_a_smoke_test():
    assert set(presets(ROOT)) == set(DATA)


# rethink runs through a real `dvc repro` (test_featpipe_study_runs_dvc_repro_on_a_fine_tuning_only_study), with
# the same checks of its outputs: running its stages a second time here would add minutes and no assertion
IN_PROCESS = sorted(set(DATA) - {"rethink"})


@pytest.mark.slow(seconds=15)
@pytest.mark.parametrize("name", IN_PROCESS)
def test_a_preset_runs_to_its_report_on_real_images(name, tmp_path, monkeypatch, pneumoniamnist):
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    target = tmp_path / ("data.npz" if name == "svc-fractions" else "data")
    data = DATA[name](pneumoniamnist, target)
    work = tmp_path / "ws"
    assert main(["study", name, "--data", str(data), "--smoke", "--setup-only", "--dir", str(work),
                 "--project", str(ROOT)]) == 0
    monkeypatch.chdir(work)
    params = yaml.safe_load(Path("params.yaml").read_text())
    for stage, argv, deps in _pipeline_commands(params):
        assert all(Path(d).exists() for d in deps), stage
        assert main(argv) == 0, f"{name}: stage {stage} failed: featpipe {' '.join(argv)}"
    check_preset_outputs(name, Path("."))


def check_preset_outputs(name: str, work: Path) -> None:
    """What every preset's smoke study must have made in ``work``: its own settings at test size, its report (the
    preset's title), every configuration of the preset a distinct line in the learning curve, its Grad-CAM run."""
    params = yaml.safe_load((work / "params.yaml").read_text())
    preset = yaml.safe_load((ROOT / "studies" / f"{name}.yaml").read_text())
    assert params["report"]["metric"] == preset["report"]["metric"]  # the preset's own settings, at test size
    assert len(params["finetune"]["arms"]) == len(preset.get("finetune", {}).get("arms", []))
    html = (work / "reports/report.html").read_text()
    assert preset["report"]["title"] in html
    runs = pd.read_csv(work / "results/runs.csv")
    expected = (len(params["extract"]["backbones"]) * len(params["fit"]["heads"])
                + len(params["finetune"]["backbones"]) * len(params["finetune"]["strategies"])
                + len(params["finetune"]["arms"]))
    assert runs.groupby(["backbone", "layer", "weights_id", "head", "head_params"], dropna=False).ngroups >= expected - (
        1 if name == "rethink" else 0)
    lines = [ln for ln in plots.learning_curve(runs, preset["report"]["metric"]).axes[0].get_lines()
             if not ln.get_label().startswith("_")]
    assert len(lines) == len(set(plots.config_keys(runs)))
    if name == "rethink":  # the 2 x 2 design: four distinct lines
        assert len(lines) == 4
    if params["gradcam"]["runs"]:
        assert len(list((work / "reports/gradcam").rglob("grid.png"))) == 1


def test_chexpert_folder_needs_its_task_and_then_reads_both_csvs(tmp_path, monkeypatch, figure1_dir, capsys):
    top = chexpert_tree(figure1_dir, tmp_path / "data")
    args = ["study", "lowdata", "--data", str(top), "--smoke", "--setup-only", "--dir", str(tmp_path / "ws"),
            "--project", str(ROOT)]
    assert main(args) == 2 and "data.csv.task=" in capsys.readouterr().err
    assert main([*args, "-S", "data.csv.task=Pneumonia"]) == 0
    data = yaml.safe_load((tmp_path / "ws" / "params.yaml").read_text())["data"]
    assert data["csv"]["split_files"] == ["train.csv", "valid.csv"] and data["csv"]["task"] == "Pneumonia"


@pytest.mark.slow(seconds=52)
def test_featpipe_study_runs_dvc_repro_on_a_fine_tuning_only_study(tmp_path, monkeypatch, pneumoniamnist):
    """The command as a user types it, DVC included: the 2 x 2 rethink design (arms only: the frozen branch is
    empty) reaches its report, one stage per arm, four lines in the learning curve (and every check the other
    presets get in test_a_preset_runs_to_its_report_on_real_images)."""
    import json
    import os
    import subprocess
    import sys

    bin_dir = str(Path(sys.executable).parent)  # where the featpipe and dvc commands of this environment are
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    data = kaggle_folder(pneumoniamnist, tmp_path / "chest_xray")
    assert main(["study", "rethink", "--data", str(data), "--smoke", "--project", str(ROOT)]) == 0
    work = tmp_path / "study-rethink"
    assert (work / "reports" / "report.html").is_file()
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert {s for s in lock if s.startswith("arm@")} == {"arm@0", "arm@1", "arm@2", "arm@3"}
    assert not any(s.startswith(("fit@", "extract@", "finetune@")) for s in lock)
    runs = pd.read_csv(work / "results" / "runs.csv")
    assert runs["head"].nunique() == 4
    shown = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=work, capture_output=True, text=True)
    headline = next(iter(json.loads(shown.stdout).values()))["data"]["results/metrics.json"]["data"]
    assert headline["metric"] == "auprc"
    check_preset_outputs("rethink", work)
