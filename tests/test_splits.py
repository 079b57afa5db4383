"""Splits: grouped by patient and by identical file, stratified, nested k-shot subsets, deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featpipe.params.config import SplitParams
from featpipe.data.splits import check_splits, make_splits
from featpipe.core.errors import DataError


def fake_manifest(n_patients=60, per_patient=3, n_classes=2, dup_every=0, source=None, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = p % n_classes
        for j in range(per_patient):
            i = len(rows)
            rows.append({"id": f"img{i:04d}", "path": f"x/{i}.png", "label": label, "label_name": f"c{label}",
                         "patient_id": f"pat{p:03d}", "source_split": source(p) if source else "",
                         "sha256": f"{rng.integers(1 << 62):x}{i}", "width": 8, "height": 8})
    df = pd.DataFrame(rows)
    if dup_every:  # identical files under different patients (re-uploads, copies between folders)
        for i in range(0, len(df) - per_patient, dup_every):
            df.loc[i + per_patient, "sha256"] = df.loc[i, "sha256"]
    return df


def split_of(obj):
    return {i: part for part in ("train", "val", "test") for i in obj[part]}


def make(df, **kw):
    params = SplitParams(**{"seeds": (0, 1, 2), "shots": (1, 2, 5, 10), **kw})
    classes = sorted(df["label_name"].unique())
    return make_splits(df, classes, params, dataset="t", manifest_sha256="abc")


def test_no_patient_or_identical_file_on_two_sides():
    df = fake_manifest(dup_every=7)
    obj = make(df)
    where = split_of(obj)
    for key in ("patient_id", "sha256"):
        sides = df.assign(part=df["id"].map(where)).dropna(subset=["part"]).groupby(key)["part"].nunique()
        assert sides.max() == 1, f"{key} straddles splits"
    check_splits(obj, df)  # the check on write agrees


def test_check_refuses_a_leaky_split():
    df = fake_manifest()
    obj = make(df)
    moved = next(i for i in obj["train"])
    obj["test"] = sorted(obj["test"] + [moved])
    with pytest.raises(DataError, match="in both"):
        check_splits(obj, df)


def test_stratified_fractions():
    df = fake_manifest(n_patients=100, per_patient=2)
    obj = make(df, test_fraction=0.2, val_fraction=0.1)
    for part, frac in (("test", 0.2), ("val", 0.1 * 0.8)):
        counts = df.set_index("id").loc[obj[part], "label"].value_counts()
        for c in (0, 1):
            assert abs(counts[c] / 100 - frac) <= 0.03


def test_source_test_is_kept_and_leaking_train_images_are_left_out():
    # patient 0..9 in source test; patient 3 also has images in source train (as in real Kaggle data)
    df = fake_manifest(n_patients=40, source=lambda p: "test" if p < 10 else "train")
    df.loc[df["patient_id"] == "pat012", "patient_id"] = "pat003"
    obj = make(df)
    assert set(obj["test"]) == set(df.loc[df.source_split == "test", "id"])
    left_out = {e["id"] for e in obj["excluded"]}
    assert left_out == set(df.loc[(df.patient_id == "pat003") & (df.source_split == "train"), "id"])
    assert obj["source"] == {"test": "source", "val": "drawn"}


def test_tiny_source_val_is_merged_into_train_and_val_drawn_by_patient():
    df = fake_manifest(n_patients=60, source=lambda p: "test" if p < 10 else ("val" if p < 12 else "train"))
    obj = make(df, min_source_val_per_class=8)
    assert obj["source"]["val"].startswith("drawn (source val merged")
    small_val = set(df.loc[df.source_split == "val", "id"])
    assert small_val <= set(obj["train"]) | set(obj["val"])
    big = make(df, min_source_val_per_class=1)
    assert set(big["val"]) == small_val and big["source"]["val"] == "source"


def test_kshot_nested_stratified_one_per_patient_and_inside_train():
    df = fake_manifest(n_patients=80, per_patient=3)
    obj = make(df)
    labels = df.set_index("id")["label"]
    patients = df.set_index("id")["patient_id"]
    for seed, per_k in obj["fewshot"].items():
        prev = set()
        for k in ("1", "2", "5", "10"):
            ids = per_k[k]
            assert set(ids) <= set(obj["train"])
            assert labels[ids].value_counts().to_dict() == {0: int(k), 1: int(k)}
            assert patients[ids].nunique() == len(ids)  # one image per patient while patients last
            assert prev <= set(ids)
            prev = set(ids)


def test_determinism_same_seed_same_ids_other_seed_other_ids():
    df = fake_manifest()
    a, b = make(df), make(df)
    assert a == b
    assert a["fewshot"]["0"]["5"] != a["fewshot"]["1"]["5"]
    other = make(df, seed=1)
    assert other["test"] != a["test"]


def test_too_many_shots_names_the_class_or_is_capped():
    df = fake_manifest(n_patients=20)
    with pytest.raises(DataError, match=r"50-shot subsets need 50 training images of class 'c\d', which has \d+"):
        make(df, shots=(1, 50))
    obj = make(df, shots=(1, 50), shots_policy="cap")
    assert set(obj["capped"]["50"]) == {"c0", "c1"}
    assert len(obj["fewshot"]["0"]["50"]) == len(obj["train"])
