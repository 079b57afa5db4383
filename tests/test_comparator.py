"""featpipe.core.provenance.mismatch: the one comparator of recorded provenance (feature caches, decoded caches,
saved heads): canonical values, missing keys, and the wording of a difference."""

from __future__ import annotations

import json

import numpy as np

from featpipe.core.provenance import canonical, mismatch

KEYS = ("backbone", "embedding_dim", "preprocess", "layer")


def test_json_text_numpy_values_and_tuples_compare_as_the_values_they_hold():
    recorded = {"backbone": b"tiny_cnn", "embedding_dim": np.int64(32),
                "preprocess": json.dumps({"input_size": 32, "mean": [0.5, 0.5, 0.5]}), "layer": ""}
    expected = {"backbone": "tiny_cnn", "embedding_dim": 32, "preprocess": {"mean": (0.5, 0.5, 0.5), "input_size": 32},
                "layer": ""}
    assert mismatch(recorded, expected, KEYS) is None
    assert canonical(np.array([1, 2])) == [1, 2] and canonical("sha256:{x}") == "sha256:{x}"


def test_a_difference_is_named_and_a_mapping_by_its_first_differing_entry():
    recorded = {"backbone": "tiny_cnn", "embedding_dim": 32, "preprocess": '{"input_size": 28, "resize_size": 28}'}
    assert mismatch(recorded, {"embedding_dim": 16}, KEYS) == "embedding_dim 32 != requested 16"
    assert (mismatch(recorded, {"preprocess": {"input_size": 32, "resize_size": 32}}, KEYS)
            == "preprocess input_size 28 != requested 32")
    assert mismatch(recorded, {"backbone": "x"}, KEYS, label="the head's") == "backbone 'tiny_cnn' != the head's 'x'"


def test_keys_not_expected_are_skipped_and_keys_not_recorded_differ_unless_allowed():
    recorded = {"backbone": "tiny_cnn"}
    assert mismatch(recorded, {"backbone": "tiny_cnn", "layer": None}, KEYS) is None  # None: not compared
    assert mismatch(recorded, {"layer": "features.x"}, KEYS) == "layer not recorded"
    assert mismatch(recorded, {"layer": "x"}, KEYS, unrecorded="not recorded (older)") == "layer not recorded (older)"
    assert mismatch(recorded, {"layer": "features.x"}, KEYS, require_recorded=False) is None
    assert mismatch(recorded, {"other": 1}, KEYS) is None  # only the format's keys
