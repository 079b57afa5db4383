"""``featpipe collect``: merge the results of the per-stage folders into one table and its summary.

Under DVC every fit and fine-tuning stage writes its own ``runs.csv`` (two stages may not share an
output); ``collect`` reads them all (a damaged one is a one-line error before anything is written),
upserts them, in a fixed order, into ``results/runs.csv`` and recomputes ``results/metrics.json`` from it.
Rows keep their key, so the merged table is the same as if every run had written to one table. Rows
already in ``results/runs.csv`` (written there by a ``fit``, ``sweep`` or ``finetune`` run) are kept
unless a source has a row with the same key. The new table is written beside the old one and renamed
into place: there is never a moment without a ``runs.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from featpipe.core.errors import DataError
from featpipe.evaluation.table import KEY_COLUMNS, RUNS_CSV, key_frame, read_runs, upsert_runs
from featpipe.results.summary import write_metrics_json


def collect(sources: Sequence[str | Path], out_dir: str | Path, *, clinical, split_sha256: str | None = None,
            select_metric: str | None = None) -> pd.DataFrame:
    """Upsert the ``runs.csv`` files of ``sources`` (files, or folders searched recursively) into
    ``<out_dir>/runs.csv`` (its own rows kept where no source has their key; replaced atomically), then
    recompute ``<out_dir>/metrics.json``; returns the table."""
    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(p.rglob(RUNS_CSV)))
        else:
            raise DataError(f"results {p} not found: run the fit and fine-tuning stages first")
    out = Path(out_dir) / RUNS_CSV
    files = [f for f in files if f.resolve() != out.resolve()]
    if not files:
        raise DataError(f"no {RUNS_CSV} under {', '.join(map(str, sources))}")
    rows = pd.concat([read_runs(f) for f in files], ignore_index=True)
    rows = key_frame(rows).drop_duplicates(list(KEY_COLUMNS), keep="last")  # as if each file had been upserted in turn
    table = upsert_runs(out, rows.to_dict("records"))
    write_metrics_json(out_dir, clinical=clinical, split_sha256=split_sha256, select_metric=select_metric)
    return table
