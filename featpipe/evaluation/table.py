"""The results table ``results/runs.csv`` and the per-run files beside it: what every run writes.

One row per (dataset, backbone, weights, weights_id, layer, head, head_params, shots, seed,
split_sha256): writing a row whose key is already there **replaces** it (a re-run never duplicates);
a run on another split or other weights is another row, never a replacement. Writes take a lock file beside the
table, go to a temporary file and are renamed into place, so a crash or a concurrent writer (the
fine-tuning stage writes rows with ``head = "finetune:<strategy>"``) never leaves a half-written table.

Per run, the per-image val and test outputs (``run_id, split, id, label, p[<class>]..., threshold``) and, with
``fit.curves``, the test ROC/PR points (thinned) are appended to a run log beside the table,
``<results>/predictions/<time_ns>-<pid>.fpruns`` (:mod:`featpipe.evaluation.runlog`: one columnar, append-only file
per writing command, not two small files per run). ROC/PR, bootstrap intervals, comparisons and the report read
them through :func:`read_predictions` and :func:`read_curves` only; per-run ``<run>-<run_id>.csv.gz`` files of
older versions (:func:`write_predictions`) are read too, and the latest write of a run wins. Files whose runs were
all written again are removed (:func:`prune_predictions`).

**Full precision.** The table is written with the shortest text that reads back as the same float64 (Python's
``repr``) and read back exactly (:data:`EXACT_FLOATS`); the run log keeps the arrays' bytes. So metrics recomputed
from the kept predictions equal the row of ``runs.csv`` bit for bit, and a threshold compares the same numbers
it was chosen on. :func:`write_records` writes both for records made by
:func:`featpipe.evaluation.record.record_run`.

What is derived from the table (summaries, ``metrics.json``, statistics, comparisons) lives in
:mod:`featpipe.results`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError
from featpipe.core.fileio import atomic_write
from featpipe.core.locks import build_lock, clean_leftovers, pid_alive, say
from featpipe.core.names import canonical_params, config_name, params_tag
from featpipe.evaluation.metrics import SCALAR_METRICS
from featpipe.evaluation.runlog import SUFFIX as LOG_SUFFIX
from featpipe.evaluation.runlog import Entry, RunLog, read_entry, scan

KEY_COLUMNS = ("dataset", "backbone", "weights", "weights_id", "layer", "head", "head_params", "shots", "seed",
               "split_sha256")
STR_KEYS = ("dataset", "backbone", "weights", "weights_id", "layer", "head", "split_sha256")
PROVENANCE_COLUMNS = ("run_id", "ids_sha256", "n_classes", "n_train", "n_test", "degenerate", "degenerate_reason")
RUNS_CSV = "runs.csv"
INTERNAL = "internal"  # the test_set of a row scored on the study's own test split (rows without the column too)
EXTERNAL_RESULTS = Path("results/external")  # rows, predictions and curves per external set: <this>/<name>/
PREDICTIONS_DIR = "predictions"
CURVES_DIR = "curves"


def external_test_set(name: str) -> str:
    """The ``test_set`` of rows scored on the external set ``name`` (:data:`INTERNAL` for the study's own split)."""
    return f"external:{name}"


VAL_METRICS = tuple(f"val_{m}" for m in SCALAR_METRICS if m != "threshold")
# read_csv keywords that parse every float64 written by repr back to the same bits (pandas 3's default parser does;
# pandas 2's default "high" parser can be off by one unit in the last place)
EXACT_FLOATS: dict = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def key_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with its key columns normalised (strings, canonical head params, integer shots/seed)."""
    df = df.copy()
    for k in ("weights_id", "split_sha256"):  # tables written before these were key columns
        if k not in df.columns:
            df[k] = ""
    for k in KEY_COLUMNS:
        if k not in df.columns:
            raise ValueError(f"a results row needs the key column '{k}'")
    df = df.copy()
    for k in STR_KEYS:
        df[k] = df[k].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)).astype(object)
    df["head_params"] = df["head_params"].map(canonical_params).astype(object)
    df["shots"] = df["shots"].astype(np.int64)
    df["seed"] = df["seed"].astype(np.int64)
    return df


def read_runs(path: str | Path) -> pd.DataFrame:
    """The table (empty frame with the key columns when it does not exist yet). A table that cannot be parsed,
    lacks a key column or a metric column, or has non-integer shots/seeds is a one-line :class:`DataError`."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(KEY_COLUMNS))
    try:
        df = pd.read_csv(path, dtype={k: str for k in (*STR_KEYS, "head_params", "run_id", "degenerate_reason")},
                         keep_default_na=True, **EXACT_FLOATS)
    except pd.errors.EmptyDataError:
        raise DataError(f"results table {path} is empty (not even a header): delete it, or restore it, "
                        "and re-run the stages that write it") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"results table {path} is damaged ({first}): restore it, or delete it and re-run the "
                        "stages that write it") from None
    _check_table(df, path)
    for k in STR_KEYS:
        if k in df.columns:
            df[k] = df[k].fillna("").astype(object)
    return df


def _check_table(df: pd.DataFrame, path: Path) -> None:
    need = [k for k in KEY_COLUMNS if k not in ("weights_id", "split_sha256")]
    if len(df):
        need += [m for m in SCALAR_METRICS if m != "threshold"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"results table {path} is damaged: no column {', '.join(map(repr, missing[:4]))}; "
                        "restore it, or delete it and re-run the stages that write it")
    for k in ("shots", "seed"):
        v = pd.to_numeric(df[k], errors="coerce")
        bad = (v.isna() | (v != v.round())).to_numpy()
        if bad.any():
            raise DataError(f"results table {path} is damaged: column '{k}' is not an integer on line "
                            f"{int(bad.argmax()) + 2}; restore it, or delete it and re-run the stages that write it")


def _order(columns: Iterable[str]) -> list[str]:
    cols = list(dict.fromkeys(columns))
    first = [c for c in (*KEY_COLUMNS, *PROVENANCE_COLUMNS, *SCALAR_METRICS, *VAL_METRICS) if c in cols]
    last = [c for c in ("model_path",) if c in cols]
    middle = [c for c in cols if c not in first and c not in last]
    return first + middle + last


def upsert_runs(path: str | Path, rows: Iterable[Mapping]) -> pd.DataFrame:
    """Insert ``rows`` into the table at ``path``, replacing rows with the same key; returns the table.

    A row is a mapping with at least :data:`KEY_COLUMNS` (``layer`` may be None/"" and
    ``head_params`` a dict), usually also :data:`PROVENANCE_COLUMNS`, the metrics of
    :func:`featpipe.evaluation.metrics.score` (scalars only) and ``model_path``.
    """
    path = Path(path)
    new = pd.DataFrame([dict(r) for r in rows])
    if new.empty:
        return read_runs(path)
    new = key_frame(new)
    if new.duplicated(list(KEY_COLUMNS)).any():
        raise ValueError("two rows with the same key in one write")
    path.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(path, what="the results table"):
        for d in (path.parent, path.parent / PREDICTIONS_DIR, path.parent / CURVES_DIR):
            clean_leftovers(d)  # temporary files of writers killed before their rename, reported
        old = read_runs(path)
        journals = dead_journals(path)
        parts = [key_frame(f) for f in (old, *(j[1] for j in journals), new) if len(f)]
        df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        df = df.drop_duplicates(list(KEY_COLUMNS), keep="last")
        df = df.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)
        df = df[_order(df.columns)]
        atomic_write(path, df.to_csv(index=False, lineterminator="\n"))  # floats as repr: exact round trip
        for jpath, rows in journals:
            jpath.unlink(missing_ok=True)
            say(f"recovered {len(rows)} row(s) of an interrupted run from {jpath.name} into {path}")
    return df


# --------------------------------------------------------------------------- journal of a run in progress


def _journal_name(table: Path, pid: int) -> Path:
    return table.with_name(f".{table.name}.journal-{pid}.jsonl")


def _plain(v):
    return v.item() if isinstance(v, np.generic) else str(v)


def _read_journal(path: Path) -> pd.DataFrame:
    """The complete rows of a journal (a line torn by a kill is dropped)."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return pd.DataFrame(rows)


def dead_journals(table: str | Path) -> list[tuple[Path, pd.DataFrame]]:
    """(file, rows) of the journals beside ``table`` left by processes that died before writing their rows
    into it (call with the table's lock held)."""
    table = Path(table)
    out = []
    for f in sorted(table.parent.glob(f".{table.name}.journal-*.jsonl")):
        pid = f.name.rsplit("-", 1)[-1].split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            out.append((f, _read_journal(f)))
    return out


class RunJournal:
    """The rows of a command that runs many fits, kept as they finish so that an interrupted command loses
    nothing it computed: :meth:`add` writes a run's predictions and curves and appends its row to
    ``<results>/.runs.csv.journal-<pid>.jsonl`` (flushed to disk); :meth:`commit` upserts the rows into
    ``runs.csv`` and removes the journal. A journal left by a killed process is merged into the table by the
    next write to it (:func:`upsert_runs`), which says so. Opening one fails at once (before any fit) where
    the results folder cannot be written."""

    def __init__(self, results_dir: str | Path):
        self.dir = Path(results_dir)
        self.table = self.dir / RUNS_CSV
        read_runs(self.table)  # a damaged table fails now, not after every fit
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = _journal_name(self.table, os.getpid())
        self._fh = open(self.path, "a", encoding="utf-8")
        self.log = RunLog(self.dir / PREDICTIONS_DIR)
        self.rows: list[dict] = []
        self._synced = 0.0

    def add(self, record) -> None:
        """Write one finished run (a record with ``row``, ``predictions``, ``curves``): its predictions and curves
        to this command's run log, then its row to the journal, both flushed to the OS (a killed process keeps
        them); the journal is also synced to disk at most once a second (a power cut loses at most that)."""
        write_files(self.dir, record, log=self.log)
        self._fh.write(json.dumps(dict(record.row), default=_plain) + "\n")
        self._fh.flush()
        if time.monotonic() - self._synced >= 1.0:
            os.fsync(self._fh.fileno())
            self._synced = time.monotonic()
        self.rows.append(dict(record.row))

    def commit(self) -> pd.DataFrame:
        """Upsert the rows into the table; the journal is removed once they are in it; predictions files every
        run of which was written again since are removed. Returns the table."""
        self._fh.close()
        self.log.close()
        table = upsert_runs(self.table, self.rows) if self.rows else read_runs(self.table)
        self.path.unlink(missing_ok=True)
        prune_predictions(self.dir)
        return table


def _key_value(row: Mapping, k: str) -> str:
    """One key column of ``row`` normalised as :func:`key_frame` normalises it, as text."""
    if k not in row:
        if k in ("weights_id", "split_sha256"):  # rows written before these were key columns
            return ""
        raise ValueError(f"a results row needs the key column '{k}'")
    v = row[k]
    if k == "head_params":
        return canonical_params(v)
    if k in ("shots", "seed"):
        return str(int(v))
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def run_id(row: Mapping) -> str:
    """12 hex digits naming one run: a hash of its key (split and weights identity included), normalised as
    :func:`key_frame` does (without building a frame: this runs several times per run), and of its ``test_set``
    when that is an external set."""
    parts = [_key_value(row, k) for k in KEY_COLUMNS]
    test_set = str(row.get("test_set") or INTERNAL)
    if test_set != INTERNAL:  # the same run scored on an external set: its own id (internal ids unchanged)
        parts.append(test_set)
    text = json.dumps(parts, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _stem(row: Mapping) -> str:
    return config_name(row, with_seed=True).replace("/", "-").replace(":", "_")


def write_curves(curves_dir: str | Path, row: Mapping, data: Mapping) -> Path:
    """ROC/PR points of one run as ``<curves_dir>/<config>-s<seed>-<paramshash>.json``."""
    d = Path(curves_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{_stem(row)}-{params_tag(row.get('head_params'))}.json"
    atomic_write(path, json.dumps({"config": config_name(row), "seed": int(row["seed"]), "curves": data}))
    return path


def prediction_table(row: Mapping, frame: pd.DataFrame) -> pd.DataFrame:
    """One run's per-image outputs as its predictions file holds them: ``run_id`` first, ``threshold`` last."""
    out = frame.copy()
    out.insert(0, "run_id", run_id(row))
    thr = row.get("threshold")
    out["threshold"] = thr if thr is not None else math.nan
    return out


def write_predictions(results_dir: str | Path, row: Mapping, frame: pd.DataFrame) -> Path:
    """Per-image outputs of one run as ``<results_dir>/predictions/<config>-s<seed>-<run_id>.csv.gz``.

    ``frame`` has ``split`` (val | test), ``id``, ``label`` and ``p[<class>]`` columns; ``run_id`` and
    ``threshold`` are added. Floats are written as ``repr`` (float64 round trip, never rounded). gzip level 1
    (7x faster than level 9 for files 7% larger: a sweep writes one per run) with a fixed mtime: the same
    predictions give the same bytes."""
    d = Path(results_dir) / PREDICTIONS_DIR
    out = prediction_table(row, frame)
    rid = str(out["run_id"].iat[0]) if len(out) else run_id(row)
    text = out.to_csv(index=False, lineterminator="\n").encode()
    d.mkdir(parents=True, exist_ok=True)
    return atomic_write(d / f"{_stem(row)}-{rid}.csv.gz", gzip.compress(text, compresslevel=1, mtime=0))


def write_files(results_dir: str | Path, record, *, log: RunLog | None = None) -> None:
    """One record's predictions and curves, appended to ``log`` (default: a run log of its own under
    ``<results_dir>/predictions``); a record without predictions writes its curves file alone."""
    rdir = Path(results_dir)
    if record.predictions is None:
        if record.curves:
            write_curves(rdir / CURVES_DIR, record.row, record.curves)
        return
    own = log is None
    log = RunLog(rdir / PREDICTIONS_DIR) if own else log
    try:
        thr = record.row.get("threshold")  # the columns prediction_table adds, without copying the frame
        log.add(run_id(record.row), record.predictions, record.curves or None,
                first={"run_id": run_id(record.row)}, last={"threshold": thr if thr is not None else math.nan})
    finally:
        if own:
            log.close()


def write_records(results_dir: str | Path, records: Sequence) -> pd.DataFrame:
    """Every record's predictions and curves (:func:`write_files`, one run log) and its row upserted into
    ``<results_dir>/runs.csv`` (one write); returns the table. A record has ``row``, ``predictions`` and
    ``curves`` (:class:`featpipe.evaluation.record.RunRecord`, or a run result that carries them)."""
    log = RunLog(Path(results_dir) / PREDICTIONS_DIR)
    try:
        for r in records:
            write_files(results_dir, r, log=log)
    finally:
        log.close()
    table = upsert_runs(Path(results_dir) / RUNS_CSV, [r.row for r in records])
    prune_predictions(results_dir)
    return table


def _sources(results_dir: str | Path) -> dict[str, tuple[int, Path | Entry]]:
    """{run_id: (when written, source)} of the current predictions of every run under ``results_dir`` (any
    depth): a run written again (in a run log or a per-run ``.csv.gz`` file of older versions) is the latest."""
    out: dict[str, tuple[int, Path | Entry]] = {}
    root = Path(results_dir)
    for f in sorted(root.rglob(f"{PREDICTIONS_DIR}/*.csv.gz")):
        rid, when = f.name[: -len(".csv.gz")].rsplit("-", 1)[-1], f.stat().st_mtime_ns
        if rid not in out or when >= out[rid][0]:
            out[rid] = (when, f)
    for f in sorted(root.rglob(f"{PREDICTIONS_DIR}/*{LOG_SUFFIX}")):
        for e in scan(f)[0]:
            if e.run_id not in out or e.written >= out[e.run_id][0]:
                out[e.run_id] = (e.written, e)
    return out


def prediction_files(results_dir: str | Path) -> dict[str, Path]:
    """{run_id: file} of every run with predictions under ``results_dir`` (any depth): the file that holds its
    current predictions (a run log, or an older version's per-run ``.csv.gz``)."""
    return {r: (src.path if isinstance(src, Entry) else src) for r, (_, src) in _sources(results_dir).items()}


def read_predictions(results_dir: str | Path, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """The per-image predictions of ``run_ids`` (default: every run) found under ``results_dir``: ``run_id,
    split, id, label, p[<class>]..., threshold`` (floats exactly as computed), one run after another."""
    sources = _sources(results_dir)
    want = list(sources) if run_ids is None else [r for r in run_ids if r in sources]
    if not want:
        return pd.DataFrame(columns=["run_id", "split", "id", "label", "threshold"])
    frames = []
    for r in want:
        src = sources[r][1]
        frames.append(read_entry(src, scan(src.path)[1]) if isinstance(src, Entry) else _read_prediction_file(src))
    return pd.concat(frames, ignore_index=True)


def read_curves(results_dir: str | Path, run_ids: Iterable[str] | None = None) -> dict[str, dict]:
    """{run_id: ROC/PR points of its test outputs (:func:`featpipe.evaluation.metrics.curves`)} of the runs
    (default: every run) whose current predictions carry curves (``fit.curves``) under ``results_dir``."""
    sources = _sources(results_dir)
    want = list(sources) if run_ids is None else [r for r in run_ids if r in sources]
    entries = {r: sources[r][1] for r in want if isinstance(sources[r][1], Entry)}
    return {r: c for r, c in ((r, e.curves) for r, e in entries.items()) if c}


def prune_predictions(results_dir: str | Path) -> list[Path]:
    """Remove the predictions files under ``results_dir`` none of whose runs is current any more (each was
    written again since), but not run logs a live process may still be writing; returns them. Where a file
    cannot be read nothing is removed (its readers say which file and what to do)."""
    try:
        current = {src.path if isinstance(src, Entry) else src for _, src in _sources(results_dir).values()}
    except DataError:
        return []
    removed = []
    root = Path(results_dir)
    for f in [*root.rglob(f"{PREDICTIONS_DIR}/*.csv.gz"), *root.rglob(f"{PREDICTIONS_DIR}/*{LOG_SUFFIX}")]:
        pid = f.stem.rsplit("-", 1)[-1]
        if f in current or (f.suffix == LOG_SUFFIX and pid.isdigit() and int(pid) != os.getpid()
                            and pid_alive(int(pid))):
            continue
        f.unlink(missing_ok=True)
        removed.append(f)
    return removed


def _read_prediction_file(path: Path) -> pd.DataFrame:
    """One predictions file; a damaged one (not gzip, torn, unparsable, without its columns) is one line."""
    try:
        df = pd.read_csv(path, dtype={"run_id": str, "id": str, "split": str}, **EXACT_FLOATS)
    except (OSError, EOFError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"predictions file {path} is damaged ({first}): delete it and re-run its run "
                        "(fit, sweep or finetune)") from None
    missing = [c for c in ("run_id", "split", "id", "label") if c not in df.columns]
    if missing:
        raise DataError(f"predictions file {path} is damaged (no column {missing[0]!r}): delete it and re-run "
                        "its run (fit, sweep or finetune)")
    return df
