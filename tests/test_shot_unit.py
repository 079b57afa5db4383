"""split.shot_unit: patient: a k-shot subset is k patients per class with all their images of that class
(MedFMC's definition), nested in k, stratified, inside train, recorded in splits.json; image (default) unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featpipe.core.errors import DataError
from test_splits import fake_manifest, make


def _varied_manifest() -> pd.DataFrame:
    """80 patients with 1 to 4 images each (a patient's images share its class)."""
    df = fake_manifest(n_patients=80, per_patient=4, seed=3)
    keep = [i for i in range(len(df)) if i % 4 < 1 + (i // 4) % 4]  # patient p keeps 1 + p % 4 images
    return df.iloc[keep].reset_index(drop=True)


def test_patient_shots_are_whole_patients_nested_stratified_inside_train():
    df = _varied_manifest()
    obj = make(df, shot_unit="patient")
    assert obj["params"]["shot_unit"] == "patient"  # recorded in splits.json
    patient, label = dict(zip(df["id"], df["patient_id"])), dict(zip(df["id"], df["label"]))
    per_patient = df.groupby("patient_id")["id"].apply(set).to_dict()
    train = set(obj["train"])
    for seed, per_k in obj["fewshot"].items():
        prev: set = set()
        for k in sorted(per_k, key=int):
            ids = set(per_k[k])
            assert ids <= train and prev <= ids  # inside train, nested
            pats = {patient[i] for i in ids}
            for c in (0, 1):  # k patients per class
                assert len({p for p in pats if label[next(iter(per_patient[p]))] == c}) == int(k)
            for p in pats:  # each with all of its (train) images
                assert per_patient[p] & train <= ids
            prev = ids
    sizes = [len(obj["fewshot"][s]["5"]) for s in obj["fewshot"]]
    assert all(s >= 10 for s in sizes) and len(set(sizes)) > 1  # images vary with the patients drawn
    # matched val subsets count in patients too
    for per_k in obj["valshot"].values():
        pats = {patient[i] for i in per_k["2"]}
        assert len(pats) == 4 and all(per_patient[p] & set(obj["val"]) <= set(per_k["2"]) for p in pats)


def test_image_unit_is_unchanged_and_patient_unit_is_deterministic():
    df = _varied_manifest()
    a, b = make(df, shot_unit="patient"), make(df, shot_unit="patient")
    assert a["fewshot"] == b["fewshot"]
    img = make(df)
    assert img["params"]["shot_unit"] == "image"
    assert all(len(v) == 2 * int(k) for per_k in img["fewshot"].values() for k, v in per_k.items())


def test_too_many_patient_shots_names_the_unit():
    df = fake_manifest(n_patients=20, per_patient=3)
    with pytest.raises(DataError, match="training patients of class"):
        make(df, shot_unit="patient", shots=(1, 50))
    obj = make(df, shot_unit="patient", shots=(1, 50), shots_policy="cap")
    assert set(obj["capped"]["50"]) == {"c0", "c1"}
    assert np.all([len(obj["fewshot"][s]["50"]) == len(obj["train"]) for s in obj["fewshot"]])


def test_the_report_states_the_unit_recorded_in_splits_json():
    from featpipe.report.build import _shot_unit_note

    assert "Shots count <b>patients</b>" in _shot_unit_note(make(_varied_manifest(), shot_unit="patient"))
    assert "Shots count <b>images</b>" in _shot_unit_note(make(_varied_manifest()))
    assert "Shots count <b>images</b>" in _shot_unit_note({"params": {}})  # splits files written before the option
