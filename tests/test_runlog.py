"""The run log (issue 22): predictions and curves of many runs in one columnar file read back exactly as the
per-run CSV files of older versions were (same frame, same float64 bits); a record torn by a kill is ignored,
a damaged one is one line; the latest write of a run wins over older logs and older CSV files, and files whose
runs were all written again are pruned."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from featpipe.core.errors import DataError
from featpipe.evaluation.record import prediction_frame
from featpipe.evaluation.table import (PREDICTIONS_DIR, prediction_files, prediction_table, prune_predictions,
                                       read_curves, read_predictions, run_id, write_files, write_predictions)


def _row(seed: int, threshold=0.25) -> dict:
    return {"dataset": "d", "backbone": "b", "weights": "w", "weights_id": "", "layer": "", "head": "logistic",
            "head_params": "{}", "shots": 5, "seed": seed, "split_sha256": "s", "threshold": threshold}


def _frame(rng, n_test=700, classes=("normal", "pneumonia")) -> pd.DataFrame:
    p = rng.random((n_test, len(classes)))
    p[0, 0] = np.nextafter(0.5, 1)  # values whose shortest text is long
    p[1, 0] = 1 / 3
    return prediction_frame(list(classes), val=([f"val/{i}" for i in range(9)], rng.integers(0, 2, 9), rng.random(9)),
                            test=([f"test/{i}" for i in range(n_test)], rng.integers(0, len(classes), n_test), p))


def _record(seed: int, rng, **kw) -> SimpleNamespace:
    curves = {"pneumonia": {"roc": [[0.0, 0.0], [0.1, 0.7], [1.0, 1.0]], "pr": [[1.0, 0.5]]}}
    return SimpleNamespace(row=_row(seed, **kw), predictions=_frame(rng), curves=curves)


def test_the_run_log_reads_back_the_frames_the_csv_files_read_back_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    recs = [_record(s, rng, threshold=None if s == 2 else 0.25) for s in range(3)]
    recs[1].predictions["patient_id"] = [None, *("p%d" % (i % 50) for i in range(len(recs[1].predictions) - 1))]
    for r in recs:
        write_predictions(tmp_path / "csv", r.row, r.predictions)
        write_files(tmp_path / "log", r)
    ids = [run_id(r.row) for r in recs]
    for want in (None, ids[::-1], ids[1:2]):
        a, b = read_predictions(tmp_path / "csv", want), read_predictions(tmp_path / "log", want)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    got = read_predictions(tmp_path / "log", [ids[0]])
    assert np.array_equal(got.filter(like="p[").to_numpy()[9:],
                          recs[0].predictions.filter(like="p[").to_numpy()[9:])  # float64 bits, not rounded
    assert read_curves(tmp_path / "log") == {i: r.curves for i, r in zip(ids, recs)}
    assert len(list((tmp_path / "log" / PREDICTIONS_DIR).iterdir())) == 3  # write_files alone: one log per call


def test_one_log_holds_a_sweep_and_shares_the_id_lists(tmp_path):
    from featpipe.evaluation.runlog import RunLog

    rng = np.random.default_rng(1)
    log = RunLog(tmp_path / PREDICTIONS_DIR)
    recs = [_record(s, rng) for s in range(20)]
    for r in recs:
        write_files(tmp_path, r, log=log)
    log.close()
    files = list((tmp_path / PREDICTIONS_DIR).iterdir())
    assert len(files) == 1
    per_run = 709 * (1 + 8 * 2 + 1 + 2)  # label and split code in a byte, p[...] float64, 709 + 1 id codes in 2
    assert files[0].stat().st_size < 20 * (per_run + 600) + 15_000  # ids once, run_id and threshold once per run
    back = read_predictions(tmp_path)
    assert back["run_id"].nunique() == 20 and len(back) == 20 * 709


def test_a_record_torn_by_a_kill_is_ignored_and_a_damaged_one_is_one_line(tmp_path):
    rng = np.random.default_rng(2)
    from featpipe.evaluation.runlog import RunLog

    log = RunLog(tmp_path / PREDICTIONS_DIR)
    for s in range(3):
        write_files(tmp_path, _record(s, rng), log=log)
    log.close()
    path = log.path
    whole = path.read_bytes()
    path.write_bytes(whole[:-100])  # the third run torn mid-write
    assert read_predictions(tmp_path)["run_id"].nunique() == 2
    damaged = bytearray(whole)
    damaged[len(whole) // 2] ^= 0xFF  # one flipped byte inside the second run's numbers
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=rf"predictions file {path} is damaged .*delete it and re-run"):
        read_predictions(tmp_path)
    from featpipe.evaluation.runlog import scan

    second = scan(path)[0][1]  # a damaged length field of a record in the middle: not taken for a torn tail
    prefix = max(m.start() for m in re.finditer(b"REC1", whole) if m.start() < second.offset)
    damaged = bytearray(whole)
    damaged[prefix + 8: prefix + 24] = bytes(b ^ 0xFF for b in damaged[prefix + 8: prefix + 24])
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=rf"predictions file {path} is damaged \(impossible record lengths"):
        read_predictions(tmp_path)
    path.write_bytes(b"not a log at all")
    with pytest.raises(DataError, match="not a featpipe run log"):
        read_predictions(tmp_path)


def test_the_latest_write_of_a_run_wins_and_superseded_files_are_pruned(tmp_path):
    rng = np.random.default_rng(3)
    old = _record(0, rng)
    write_predictions(tmp_path, old.row, old.predictions)  # an older version's per-run file
    other = _record(1, rng)
    write_predictions(tmp_path, other.row, other.predictions)
    new = _record(0, rng)  # the same run written again, other numbers
    write_files(tmp_path, new)
    rid = run_id(new.row)
    got = read_predictions(tmp_path, [rid])
    assert np.array_equal(got["p[pneumonia]"].to_numpy(), new.predictions["p[pneumonia]"].to_numpy())
    again = _record(0, rng)
    write_files(tmp_path, again)
    assert np.array_equal(read_predictions(tmp_path, [rid])["p[pneumonia]"].to_numpy(),
                          again.predictions["p[pneumonia]"].to_numpy())
    files = prediction_files(tmp_path)
    assert set(files) == {rid, run_id(other.row)} and files[run_id(other.row)].name.endswith(".csv.gz")
    removed = prune_predictions(tmp_path)
    assert len(removed) == 2 and all(not p.exists() for p in removed)  # the old csv and the first log
    left = sorted(p.name for p in (tmp_path / PREDICTIONS_DIR).iterdir())
    assert len(left) == 2 and read_predictions(tmp_path)["run_id"].nunique() == 2


def test_a_live_writers_log_is_never_pruned(tmp_path):
    rng = np.random.default_rng(4)
    rec = _record(0, rng)
    write_files(tmp_path, rec)
    (log,) = (tmp_path / PREDICTIONS_DIR).iterdir()
    live = log.with_name(log.name.replace(f"-{os.getpid()}.", f"-{os.getppid()}."))  # a live process's log
    log.rename(live)
    write_files(tmp_path, _record(0, rng))  # supersedes every run of the live log
    assert prune_predictions(tmp_path) == [] and live.exists()


def test_the_record_layout_is_the_documented_one(tmp_path):
    rng = np.random.default_rng(5)
    write_files(tmp_path, _record(0, rng))
    (log,) = (tmp_path / PREDICTIONS_DIR).iterdir()
    data = log.read_bytes()
    assert data[:8] == b"FPRUNS2\n"
    tag, _, hl, bl = struct.unpack("<4sIQQ", data[8:32])
    assert tag == b"REC1" and data[32:32 + hl].startswith(b'{"kind":"strings"')
    assert Path(log).suffix == ".fpruns"
    pos = 32 + hl + bl
    tag, _, hl, bl = struct.unpack("<4sIQQ", data[pos:pos + 24])
    head = json.loads(data[pos + 24: pos + 24 + hl])
    cols = {c["name"]: c for c in head["columns"]}
    assert cols["run_id"] == {"name": "run_id", "strings": [run_id(_row(0))], "fill": 1}
    assert cols["threshold"] == {"name": "threshold", "dtype": "<f8", "fill": struct.pack("<d", 0.25).hex()}
    assert cols["label"] == {"name": "label", "dtype": "<i8", "store": "|u1"}
    assert cols["split"]["codes"] == "|u1" and cols["id"]["codes"] == "<u2"  # 709 ids + missing need 2 bytes
    assert bl == 709 * (1 + 2 + 1 + 8 * 2)  # split, id, label, p[normal], p[pneumonia]: nothing else per row


def _v1_record(head: dict, body: bytes) -> bytes:
    h = json.dumps(head, separators=(",", ":"), allow_nan=True).encode()
    return struct.pack("<4sIQQ", b"REC1", zlib.crc32(body, zlib.crc32(h)), len(h), len(body)) + h + body


def _v1_log(runs) -> bytes:
    """A run log as featpipe wrote it before the narrow layout (version 1: every column in the body, int32 text
    codes, -1 missing; lists of more than 64 strings in shared records). Checked byte for byte against the
    writer of that version (main at 418d85a) when this test was written. ``runs``: (row, frame, curves, ns)."""
    out, shared = [b"FPRUNS1\n"], set()
    for row, frame, curves, written in runs:
        full = prediction_table(row, frame)
        columns, parts = [], []
        for name in full.columns:
            col = full[name]
            if col.dtype.kind in "biuf":
                columns.append({"name": name, "dtype": col.to_numpy().dtype.str})
                parts.append(np.ascontiguousarray(col.to_numpy()).tobytes())
                continue
            codes, uniques = pd.factorize(col, use_na_sentinel=True)
            values = [str(v) for v in uniques]
            if len(values) > 64:
                text = json.dumps(values, ensure_ascii=False).encode()
                key = hashlib.sha256(text).hexdigest()[:32]
                if key not in shared:
                    out.append(_v1_record({"kind": "strings", "key": key}, text))
                    shared.add(key)
                values = key
            columns.append({"name": name, "strings": values})
            parts.append(codes.astype(np.int32).tobytes())
        head = {"kind": "run", "run_id": run_id(row), "written": written, "rows": len(full), "columns": columns,
                "curves": curves}
        out.append(_v1_record(head, b"".join(parts)))
    return b"".join(out)


def test_a_log_of_the_previous_format_reads_back_as_it_was_written(tmp_path):
    rng = np.random.default_rng(6)
    recs = [_record(s, rng, threshold=None if s == 1 else 0.25) for s in range(3)]
    recs[2].predictions["patient_id"] = [None, *("p%d" % (i % 70) for i in range(len(recs[2].predictions) - 1))]
    (tmp_path / "old" / PREDICTIONS_DIR).mkdir(parents=True)
    old = tmp_path / "old" / PREDICTIONS_DIR / f"{1:020d}-1.fpruns"
    old.write_bytes(_v1_log([(r.row, r.predictions, r.curves, 10 + i) for i, r in enumerate(recs)]))
    for r in recs:
        write_predictions(tmp_path / "csv", r.row, r.predictions)
    a, b = read_predictions(tmp_path / "csv"), read_predictions(tmp_path / "old")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert b["label"].dtype == np.int64 and b["p[pneumonia]"].dtype == np.float64
    assert b[b["run_id"] == run_id(recs[2].row)]["patient_id"].isna().sum() == 1  # the missing value kept
    assert read_curves(tmp_path / "old") == {run_id(r.row): r.curves for r in recs}
    new = _record(0, rng)
    write_files(tmp_path / "old", new)  # a newer write of run 0 wins over the old log's
    got = read_predictions(tmp_path / "old")
    assert got["run_id"].nunique() == 3
    assert np.array_equal(got[got["run_id"] == run_id(new.row)]["p[pneumonia]"].to_numpy(),
                          new.predictions["p[pneumonia]"].to_numpy())
    damaged = bytearray(old.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # the old layout's checksums are still checked
    old.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=rf"predictions file {old} is damaged"):
        read_predictions(tmp_path / "old")


def test_a_log_of_a_newer_format_says_to_upgrade(tmp_path):
    write_files(tmp_path, _record(0, np.random.default_rng(7)))
    (log,) = (tmp_path / PREDICTIONS_DIR).iterdir()
    log.write_bytes(b"FPRUNS9\n" + log.read_bytes()[8:])
    with pytest.raises(DataError, match=rf"predictions file {log} was written by a newer featpipe .*upgrade"):
        read_predictions(tmp_path)
