"""featpipe prepare end to end: manifest, rejects, duplicates, splits; the CLI and its -S overrides."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featpipe.cli.main import main
from featpipe.params.config import load_params
from featpipe.data.manifest import read_manifest
from featpipe.data.splits import load_splits
from tests.conftest import write_image


@pytest.fixture
def defaults(tmp_path):
    """A parameter file with no keys: every test states what it sets, whatever the repo's params.yaml says."""
    f = tmp_path / "defaults.yaml"
    f.write_text("{}\n")
    return ["--params", str(f)]


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "featpipe", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def messy_tree(tmp_path):
    root = tmp_path / "xray"
    for p in range(12):
        for cls in ("NORMAL", "PNEUMONIA"):
            write_image(root / cls / f"{cls[:2]}{p:02d}.png", seed=p * 2 + (cls == "NORMAL"))
    (root / "NORMAL" / "empty.png").write_bytes(b"")
    (root / "NORMAL" / "readme.png").write_text("this is a text file, not a PNG")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "JPEG")
    (root / "PNEUMONIA" / "cut.jpeg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    shutil.copy(root / "PNEUMONIA" / "PN03.png", root / "PNEUMONIA" / "PN03_copy.png")
    return root


def test_prepare_writes_manifest_rejects_duplicates_and_splits(messy_tree, tmp_path, defaults):
    args = ["prepare", *defaults, "-S", "data.source=folder", "-S", f"data.path={messy_tree}", "-S", "split.shots=[1,2,5]",
            "-S", "split.seeds=[0,1]", "--manifest", str(tmp_path / "d/manifest.csv"), "--splits", str(tmp_path / "d/splits.json")]
    assert main(args) == 0
    rejects = (tmp_path / "d/rejects.csv").read_text().splitlines()
    reasons = dict(line.split(",", 2)[::2] for line in rejects[1:])
    assert reasons == {"NORMAL/empty.png": "zero bytes", "NORMAL/readme.png": "not an image", "PNEUMONIA/cut.jpeg": "truncated"}
    m = read_manifest(tmp_path / "d/manifest.csv")
    assert list(m.columns[:7]) == ["id", "path", "label", "label_name", "patient_id", "source_split", "sha256"]
    assert len(m) == 25 and set(m["label_name"]) == {"NORMAL", "PNEUMONIA"}
    assert dict(zip(m["label_name"], m["label"])) == {"NORMAL": 0, "PNEUMONIA": 1}
    dups = (tmp_path / "d/duplicates.csv").read_text()
    assert "PNEUMONIA/PN03.png;PNEUMONIA/PN03_copy.png" in dups
    s = load_splits(tmp_path / "d/splits.json")
    where = {i: p for p in ("train", "val", "test") for i in getattr(s, p)}
    assert where["PNEUMONIA/PN03.png"] == where["PNEUMONIA/PN03_copy.png"]
    assert s.classes == ["NORMAL", "PNEUMONIA"] and sorted(s.fewshot) == [0, 1]
    first = (tmp_path / "d/splits.json").read_bytes()
    assert main(args) == 0
    assert (tmp_path / "d/splits.json").read_bytes() == first  # byte-identical on a rerun


def test_unknown_key_and_bad_value_are_one_line_errors_with_exit_2(tmp_path, capsys, defaults):
    assert main(["prepare", *defaults, "-S", "split.sed=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown parameter 'split.sed'" in err
    assert main(["prepare", *defaults, "-S", "split.test_fraction=lots"]) == 2
    assert "bad value for 'split.test_fraction'" in capsys.readouterr().err
    assert main(["prepare", *defaults, "-S", "data.source=dicomweb"]) == 2
    assert "choose from folder, csv, npz, synthetic" in capsys.readouterr().err
    assert main(["prepare", "--params", str(tmp_path / "missing.yaml")]) == 2


def test_overrides_go_through_the_same_validation_as_the_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("split:\n  seeds: [0, 1]\n  shots: [1, 5]\n")
    p = load_params(f, ["split.shots=[2,4]", "data.csv.task=Edema", "data.patient_regex=null"])
    assert p.split.seeds == (0, 1) and p.split.shots == (2, 4) and p.data.csv.task == "Edema"
    f.write_text("split:\n  sedes: [0]\n")
    from featpipe.core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown parameter 'split.sedes'"):
        load_params(f)


def test_help_lists_every_command_with_a_description():
    from featpipe.cli.main import COMMANDS, _available

    out = run_cli("--help", cwd=".").stdout
    assert "prepare" in _available()
    for name, (_, helptext) in _available().items():
        assert name in out and helptext.split()[0] in out


def test_synthetic_demo_prepare_is_deterministic(tmp_path):
    for d in ("a", "b"):
        r = run_cli("prepare", "-S", f"data.path={tmp_path / d / 'synthetic'}", "--manifest", str(tmp_path / d / "m.csv"),
                    "--splits", str(tmp_path / d / "s.json"), "-S", "split.shots=[1,5,10]", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "a/s.json").read_text())
    b = json.loads((tmp_path / "b/s.json").read_text())
    assert a["train"] == b["train"] and a["fewshot"] == b["fewshot"] and a["classes"] == ["normal", "finding1"]
    ma, mb = read_manifest(tmp_path / "a/m.csv"), read_manifest(tmp_path / "b/m.csv")
    assert list(ma["sha256"]) == list(mb["sha256"])  # same pixels from the same seed
    assert ma["patient_id"].nunique() == len(ma) // 2  # two images per synthetic patient


def test_prepare_real_figure1_csv_view(figure1_dir, tmp_path, defaults):
    args = ["prepare", *defaults, "-S", "data.source=csv", "-S", f"data.path={figure1_dir / 'metadata.csv'}",
            "-S", "data.csv.path_col=patientid", "-S", "data.csv.label_col=finding", "-S", "split.shots=[1]",
            "-S", "split.shots_policy=cap", "--manifest", str(tmp_path / "m.csv"), "--splits", str(tmp_path / "s.json")]
    assert main(args) == 0
    m = read_manifest(tmp_path / "m.csv")
    assert len(m) == 40  # 15 images without a finding are rejected ("no label"), not guessed
    assert (m.loc[m["id"] == "images/COVID-00003a.jpg", "patient_id"] == "COVID-00003").all() or "COVID-00003a" not in set(m["id"])
    assert set(m.loc[m["id"].str.contains("COVID-00039"), "patient_id"]) <= {"COVID-00039"}
    assert (m["width"] > 200).all()  # full-size radiographs were decoded to check them
    s = load_splits(tmp_path / "s.json")
    where = {i: p for p in ("train", "val", "test") for i in getattr(s, p)}
    pats = m.assign(part=m["id"].map(where)).groupby("patient_id")["part"].nunique()
    assert pats.max() == 1


def test_prepare_real_folder_view_with_multi_image_patients(figure1_dir, tmp_path, defaults):
    view = tmp_path / "fig1"
    for f in sorted((figure1_dir / "images").iterdir()):
        cls = "even" if int(f.stem[6:11]) % 2 == 0 else "odd"
        (view / cls).mkdir(parents=True, exist_ok=True)
        (view / cls / f.name).symlink_to(f)
    args = ["prepare", *defaults, "-S", "data.source=folder", "-S", f"data.path={view}", "-S", "split.shots=[1,2]",
            "--manifest", str(tmp_path / "m.csv"), "--splits", str(tmp_path / "s.json")]
    assert main(args) == 0
    m = read_manifest(tmp_path / "m.csv")
    assert len(m) == 55
    multi = m.groupby("patient_id").size()
    assert multi["COVID-00039"] == 3 and multi["COVID-00003"] == 2


def test_prepare_real_npz(pneumoniamnist, tmp_path, defaults):
    args = ["prepare", *defaults, "-S", "data.source=npz", "-S", f"data.path={pneumoniamnist}", "-S", "data.class_names=[normal,pneumonia]",
            "--manifest", str(tmp_path / "m.csv"), "--splits", str(tmp_path / "s.json")]
    assert main(args) == 0
    s = load_splits(tmp_path / "s.json")
    assert len(s.test) == 468 and len(s.val) == 270  # the file's own test and val splits are kept
    assert len(s.train) + len(s.raw["excluded"]) == 2428
    for e in s.raw["excluded"]:  # duplicated images across splits stay out of train
        assert e["reason"].startswith("same patient or identical file")
    assert s.classes == ["normal", "pneumonia"]
    assert len(s.fewshot[0][10]) == 20


def test_fetch_fingerprint_changes_with_the_images_not_otherwise(tmp_path):
    from featpipe.params.config import DataParams
    from featpipe.data.fetch import fingerprint

    root = tmp_path / "tree"
    write_image(root / "a" / "1.png", seed=1)
    write_image(root / "b" / "2.png", seed=2)
    data = DataParams(source="folder", path=str(root))
    first = fingerprint(data)
    assert fingerprint(data) == first and first["files"] == 2
    write_image(root / "b" / "3.png", seed=3)
    assert fingerprint(data)["sha256"] != first["sha256"]
    from featpipe.core.errors import DataError

    with pytest.raises(DataError, match="not found"):
        fingerprint(DataParams(source="npz", path=str(tmp_path / "missing.npz")))
