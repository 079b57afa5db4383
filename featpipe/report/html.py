"""A plain, self-contained HTML page: inline CSS, images as data URIs, no scripts, no network."""

from __future__ import annotations

import html
import time
from typing import Sequence

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d3557;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}
nav{padding:8px 32px;background:#e9edf3;font-size:13px}nav a{margin-right:14px;color:#1d3557}
main{padding:8px 32px 40px;max-width:1200px}section{background:#fff;border-radius:8px;padding:14px 22px;margin:16px 0;
box-shadow:0 1px 2px rgba(0,0,0,.08)}h2{font-size:18px;color:#1d3557;border-bottom:1px solid #e3e6ea;padding-bottom:6px}
h3{font-size:15px;margin-top:18px}table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #dde1e7;padding:4px 9px;text-align:left;max-width:480px;overflow-wrap:anywhere}th{background:#f0f3f7}tr:nth-child(even) td{background:#fafbfc}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}figure img{max-width:100%;border:1px solid #e3e6ea}
figcaption{font-size:12px;color:#5a6272}pre{background:#f0f3f7;padding:10px;font-size:12px;overflow:auto;max-height:420px}
code{background:#f0f3f7;padding:1px 4px;border-radius:3px}
tr.degenerate td{color:#8a8f98;background:#eceef1}.note{color:#5a6272;font-size:13px}
"""


def table(header: Sequence[str], rows: Sequence[Sequence], *, row_classes: Sequence[str] | None = None) -> str:
    """An HTML table (cells escaped); ``row_classes`` gives a CSS class per row (e.g. "degenerate": grey)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    classes = row_classes or [""] * len(rows)
    body = "".join((f'<tr class="{html.escape(k)}">' if k else "<tr>")
                   + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r, k in zip(rows, classes))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, dataset: str, sections: Sequence[tuple[str, str]]) -> str:
    anchors = [(f"s{i}", name) for i, (name, _) in enumerate(sections)]
    nav = "".join(f'<a href="#{a}">{html.escape(n)}</a>' for a, n in anchors)
    body = "".join(f'<section id="{a}"><h2>{html.escape(name)}</h2>{content}</section>'
                   for (a, _), (name, content) in zip(anchors, sections))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1><p>data set <b>{html.escape(dataset)}</b> · generated {stamp} by featpipe</p></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>\n")
