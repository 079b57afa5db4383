"""The report's interactive charts, kept in the one self-contained page: a small SVG script of featpipe's own
(``interactive.js``, inlined; no library, no CDN, no network) and the data it draws, embedded as JSON.

:func:`chart_data` is the data (per metric and configuration: the table's mean, 95% interval, spread and n per
shot count, the same numbers as :func:`featpipe.report.plots.by_config` and the all-configurations table);
:func:`chart` a chart's placeholder with its static fallback (the PNGs, shown until the script has drawn the
chart, and without scripts); :func:`data_script` the embedded JSON; :data:`SCRIPT` the code.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.colors import to_hex

from featpipe.report import plots

SCRIPT = (Path(__file__).with_name("interactive.js")).read_text(encoding="utf-8")
CSS = """
.fp-chart{margin:8px 0 14px}.fp-controls{font-size:13px;margin-bottom:6px}.fp-controls button,.fp-controls select{
margin-left:8px;font-size:12px}.fp-plot{position:relative;max-width:900px}.fp-plot svg{display:block;background:#fff;
user-select:none}.fp-tip{display:none;position:absolute;background:#fff;border:1px solid #99a;border-radius:4px;
padding:5px 8px;font-size:12px;pointer-events:none;box-shadow:0 1px 4px rgba(0,0,0,.2);max-width:320px}
.fp-legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin-top:6px}.fp-item{cursor:pointer}
.fp-swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px;vertical-align:-1px}
"""
BOUNDED = {"accuracy", "balanced_accuracy", "macro_f1", "auroc", "auprc", "sensitivity", "specificity"}


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def chart_data(runs: pd.DataFrame, metrics: Sequence[str], default: str) -> dict:
    """What the charts draw: {"metric": default, "labels", "percent", "bounded": per metric; "configs": [{"name",
    "color", "marker", "finetune"}] in the figures' order and looks; "points": {metric: {config: [{"k", "x", "mean",
    "lo", "hi", "spread", "n"}]}}; "xs", "xlabel", "fraction", "zero": the x axis}."""
    looks = plots.looks(runs)
    points, xs = {}, set()
    for m in dict.fromkeys([default, *metrics]):
        if m not in runs.columns or not runs[m].notna().any():
            continue
        t = plots.by_config(runs, m)
        points[m] = {name: [{"k": int(r["shots"]), "x": float(r["x"]), "mean": _num(r["mean"]), "lo": _num(r["ci_low"]),
                             "hi": _num(r["ci_high"]), "spread": _num(r["spread"]), "n": int(r["n"])}
                            for r in g.sort_values("x").to_dict("records")]
                     for name, g in t.groupby("config", sort=True)}
        xs |= set(t["x"].astype(float))
        xlabel = plots.x_label(t)
    return {"metric": default, "labels": {m: plots.METRIC_LABELS.get(m, m) for m in points},
            "percent": {m: m in BOUNDED or m.startswith(("f1[", "precision[", "recall[")) for m in points},
            "bounded": {m: m in BOUNDED or m.startswith(("f1[", "precision[", "recall[")) for m in points},
            "configs": [{"name": n, "color": to_hex(look["color"]), "marker": look["marker"], "finetune": plots.is_finetune(n)}
                        for n, look in looks],
            "points": points, "xs": sorted(xs), "xlabel": xlabel if points else "",
            "fraction": bool(points) and xlabel.startswith("fraction"), "zero": 0.0 in xs}


def data_script(data: dict) -> str:
    """The data as ``<script type="application/json" id="featpipe-data">``: ``<``, ``>`` and ``&`` escaped as
    JSON unicode escapes, so that no name (a class, a configuration) can end the element or start markup."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="featpipe-data">{text}</script>'


def chart(kind: str, key: str, fallback: str) -> str:
    """A chart's placeholder (``kind``: "curve" or "spread") and its static fallback HTML (``fallback``: the
    PNG figures), shown until the script has drawn the chart."""
    fid = f"fallback-{html.escape(key)}"
    return (f'<div class="fp-chart" data-kind="{html.escape(kind)}" data-fallback="{fid}"></div>'
            f'<div class="fp-fallback" id="{fid}">{fallback}</div>')
