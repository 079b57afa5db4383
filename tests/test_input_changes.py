"""Changed inputs are detected where they are read (issue 21, failures 1 and 13): decode hashes the bytes it
decodes and refuses, in one line naming the file and 'featpipe prepare', a file changed since prepare;
fetch and prepare say which images were added, removed, changed or relabelled against the current manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featpipe.cli.main import main

N = 12  # images per class


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A CSV source of 2 x N PNGs (labels in the CSV, so an image can be relabelled in place), prepared."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    rows = []
    for c, name in enumerate(("a", "b")):
        for i in range(N):
            _png(tmp_path / "imgs" / f"{name}{i}.png", seed=100 * c + i)
            rows.append({"path": f"{name}{i}.png", "label": name})
    pd.DataFrame(rows).to_csv(tmp_path / "imgs" / "labels.csv", index=False)
    (tmp_path / "params.yaml").write_text(
        "data: {name: demo, source: csv, path: imgs/labels.csv}\n"
        "split: {seeds: [0], shots: [2], val_fraction: 0.25, test_fraction: 0.25}\n"
        "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 32}\n"
        "decode: {workers: 1}\n")
    assert main(["prepare", "--no-progress"]) == 0
    return tmp_path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", [["decode", "--no-progress"], ["extract", "--no-progress"]])
def test_a_file_changed_since_prepare_is_refused_when_decoded(project, capsys, command):
    shutil.rmtree("cache")
    _png(Path("imgs/a3.png"), seed=999)  # same path, other pixels
    capsys.readouterr()
    assert main(command) == 1
    err = _one_line(capsys)
    assert "a3.png" in err and "changed since 'featpipe prepare'" in err and "re-run 'featpipe prepare'" in err
    assert not list(Path("cache").rglob("decoded-*.h5"))  # nothing written from the changed bytes


def test_a_file_changed_and_prepared_again_decodes(project, capsys):
    _png(Path("imgs/a3.png"), seed=999)
    capsys.readouterr()
    assert main(["prepare", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 changed (first: a3.png)" in out and "stale until re-run" in out
    shutil.rmtree("cache")
    assert main(["decode", "--no-progress"]) == 0


def test_fetch_and_prepare_report_added_removed_changed_and_relabelled(project, capsys):
    Path("data/manifest.csv").touch()
    import os
    import time
    past = time.time() - 60  # the manifest is newer than every file left untouched
    for f in Path("imgs").glob("*.png"):
        os.utime(f, (past, past))
    df = pd.read_csv("imgs/labels.csv")
    _png(Path("imgs/c0.png"), seed=5000)  # added
    _png(Path("imgs/b1.png"), seed=4242)  # changed
    df = pd.concat([df[df["path"] != "a0.png"], pd.DataFrame([{"path": "c0.png", "label": "a"}])])  # a0 removed
    df.loc[df["path"] == "a5.png", "label"] = "b"  # relabelled
    df.to_csv("imgs/labels.csv", index=False)
    capsys.readouterr()
    assert main(["fetch"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("against data/manifest.csv")]
    assert line == ["against data/manifest.csv: 1 added (first: c0.png), 1 removed (first: a0.png), "
                    "1 changed (first: b1.png), 1 relabelled (first: a5.png); stale until re-run: prepare, decode, "
                    "extract, fit/sweep, finetune, collect, compare, report"], line
    assert main(["prepare", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert ("against the previous data/manifest.csv: 1 added (first: c0.png), 1 removed (first: a0.png), "
            "1 changed (first: b1.png), 1 relabelled (first: a5.png)") in out
    assert main(["fetch"]) == 0
    assert "against data/manifest.csv: no image added, removed, changed or relabelled" in capsys.readouterr().out


def test_gradcam_names_a_test_image_changed_since_prepare_and_leaves_it_out(tmp_path, monkeypatch, capsys):
    import json

    from conftest import fit_tiny_project
    from featpipe.data.splits import load_splits

    model = fit_tiny_project(tmp_path, monkeypatch)
    manifest = pd.read_csv("data/manifest.csv", dtype=str).set_index("id")
    victim = load_splits("data/splits.json").test[0]
    path = Path("data/synthetic") / manifest.loc[victim, "path"]
    _png(path, seed=4321)
    shutil.rmtree("cache/demo")
    capsys.readouterr()
    assert main(["gradcam", "--model", str(model), "--out", "gc"]) == 0
    index = json.loads(next(Path("gc").rglob("index.json")).read_text())
    assert [(Path(r["path"]).name, r["reason"]) for r in index["info"]["rejects"]] == [(path.name, "changed since prepare")]
    assert victim not in {e["id"] for e in index["images"]}
