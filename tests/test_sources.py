"""Each data source yields the right labels, patient ids and source splits; the patient name rules."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.params.config import CsvParams
from featpipe.data import sources
from featpipe.data.patients import patient_of
from featpipe.core.errors import DataError
from tests.conftest import write_image


@pytest.mark.parametrize(
    "name, patient",
    [
        ("train/PNEUMONIA/person1000_bacteria_2931.jpeg", "person1000"),
        ("test/PNEUMONIA/person1000_virus_1681.jpeg", "person1000"),
        ("train/NORMAL/IM-0115-0001.jpeg", "IM-0115"),
        ("train/NORMAL/NORMAL2-IM-0666-0001.jpeg", "NORMAL2-IM-0666"),
        ("images/COVID-00003a.jpg", "COVID-00003"),
        ("images/COVID-00003b.jpg", "COVID-00003"),
        ("CheXpert-v1.0-small/train/patient00042/study1/view1_frontal.jpg", "patient00042"),
        ("class_a/some_scan.png", "class_a/some_scan.png"),  # no rule: its own patient
    ],
)
def test_patient_rules(name, patient):
    assert patient_of(name) == patient


def test_user_regex_wins_and_bad_regex_is_a_config_error():
    assert patient_of("a/case12_slice3.png", r"(case\d+)_") == "case12"
    from featpipe.core.errors import ConfigError

    with pytest.raises(ConfigError, match="data.patient_regex"):
        patient_of("x.png", "(unclosed")


def test_kaggle_layout_with_split_folders(tmp_path):
    root = tmp_path / "chest_xray"
    for split in ("train", "val", "test"):
        write_image(root / split / "NORMAL" / f"IM-01{len(split)}5-0001.jpeg", seed=len(split))
        write_image(root / split / "PNEUMONIA" / f"person{len(split)}_virus_1.jpeg", seed=10 + len(split))
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    recs = sources.scan_folder(root)
    assert {(r.source_split, r.label_name) for r in recs} == {(s, c) for s in ("train", "val", "test") for c in ("NORMAL", "PNEUMONIA")}
    by_id = {r.id: r for r in recs}
    assert by_id["train/PNEUMONIA/person5_virus_1.jpeg"].patient_id == "person5"
    assert by_id["test/NORMAL/IM-0145-0001.jpeg"].patient_id == "IM-0145"
    # hidden files are not images of the set, but they are named (rejects.csv), never silently dropped
    assert {r.id: r.reject for r in recs if r.reject} == {"train/NORMAL/.DS_Store": "hidden file"}


def test_covid_radiography_layout_ignores_masks(tmp_path):
    root = tmp_path / "COVID-19_Radiography_Dataset"
    for cls in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        write_image(root / cls / "images" / f"{cls}-1.png", seed=hash(cls) % 1000)
        write_image(root / cls / "masks" / f"{cls}-1.png", value=255)
    (root / "COVID.metadata.xlsx").write_bytes(b"not a folder")
    recs = sources.scan_folder(root)
    assert {r.id: r.reject for r in recs if r.reject} == {"COVID.metadata.xlsx": "not in a class folder"}
    recs = [r for r in recs if not r.reject]
    assert sorted(r.label_name for r in recs) == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert all("/masks/" not in r.path for r in recs)
    assert {r.source_split for r in recs} == {""}


def test_folder_with_non_image_file_is_rejected_not_dropped(tmp_path):
    write_image(tmp_path / "a" / "x.png", seed=1)
    write_image(tmp_path / "b" / "y.png", seed=2)
    (tmp_path / "b" / "notes.txt").write_text("hello")
    recs = {r.id: r for r in sources.scan_folder(tmp_path)}
    assert recs["b/notes.txt"].reject.startswith("not an image")


def test_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        sources.scan_folder(tmp_path / "nope")


def test_ham10000_csv_with_lesion_id_and_two_image_folders(tmp_path):
    write_image(tmp_path / "HAM10000_images_part_1" / "ISIC_0000001.jpg", seed=1)
    write_image(tmp_path / "HAM10000_images_part_2" / "ISIC_0000002.jpg", seed=2)
    write_image(tmp_path / "HAM10000_images_part_2" / "ISIC_0000003.jpg", seed=3)
    (tmp_path / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx\nHAM_1,ISIC_0000001,nv\nHAM_1,ISIC_0000002,nv\nHAM_2,ISIC_0000003,mel\nHAM_3,ISIC_0000009,bcc\n")
    cfg = CsvParams(path_col="image_id", label_col="dx", patient_col="lesion_id")
    recs = {r.id: r for r in sources.scan_csv(tmp_path / "HAM10000_metadata.csv", cfg)}
    assert recs["HAM10000_images_part_2/ISIC_0000002.jpg"].patient_id == "HAM_1"
    assert recs["HAM10000_images_part_2/ISIC_0000003.jpg"].label_name == "mel"
    assert recs["ISIC_0000009"].reject == "missing"


@pytest.mark.parametrize("policy, expected", [("ignore", None), ("positive", "positive"), ("negative", "negative")])
def test_chexpert_task_column_and_uncertain_policy(tmp_path, policy, expected):
    for i in range(1, 5):
        write_image(tmp_path / "train" / f"patient0000{i}" / "study1" / "view1_frontal.jpg", seed=i)
    (tmp_path / "train.csv").write_text(
        "Path,Sex,Cardiomegaly,Edema\n"
        "train/patient00001/study1/view1_frontal.jpg,F,1.0,\n"
        "train/patient00002/study1/view1_frontal.jpg,M,0.0,1.0\n"
        "train/patient00003/study1/view1_frontal.jpg,M,,\n"
        "train/patient00004/study1/view1_frontal.jpg,F,-1.0,\n")
    cfg = CsvParams(path_col="Path", label_col=None, task="Cardiomegaly", uncertain=policy)
    recs = sources.scan_csv(tmp_path / "train.csv", cfg)
    labels = [r.label_name for r in recs]
    assert labels[:3] == ["positive", "negative", "negative"]  # blank = negative
    assert labels[3] == expected
    assert (recs[3].reject is not None) == (policy == "ignore")
    assert recs[0].patient_id == "patient00001"


def test_csv_unknown_column_names_the_key(tmp_path):
    (tmp_path / "m.csv").write_text("file,dx\na.png,nv\n")
    with pytest.raises(DataError, match=r"no column 'path' \(from data.csv.path_col\)"):
        sources.scan_csv(tmp_path / "m.csv", CsvParams())


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", train_images=rng.integers(0, 255, (6, 8, 8), dtype=np.uint8),
             train_labels=np.array([[0], [1], [0], [1], [0], [1]]),
             test_images=rng.integers(0, 255, (2, 8, 8), dtype=np.uint8), test_labels=np.array([[1], [0]]))
    recs = sources.scan_npz(tmp_path / "m.npz", class_names=("normal", "pneumonia"))
    assert [r.id for r in recs][:2] == ["train/00000", "train/00001"]
    assert recs[-1].path.endswith("m.npz#test_images/1") and recs[-1].label_name == "normal"
    assert {r.source_split for r in recs} == {"train", "test"}
    assert len({r.patient_id for r in recs}) == 8  # no patient information: each image its own patient
