"""A plain, self-contained HTML page: inline CSS and scripts, images as data URIs, no network.

The page is a list of sections (:class:`Section`); every table reads without scripts, and the one small inline
script (:data:`SORT_JS`) only adds click-to-sort to tables marked sortable.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from typing import Sequence

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d3557;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}
nav{padding:8px 32px;background:#e9edf3;font-size:13px}nav a{margin-right:14px;color:#1d3557}
main{padding:8px 24px 40px;max-width:1240px}section{background:#fff;border-radius:8px;padding:12px 16px;margin:16px 0;
box-shadow:0 1px 2px rgba(0,0,0,.08);overflow-wrap:break-word}h2{font-size:18px;color:#1d3557;border-bottom:1px solid #e3e6ea;padding-bottom:6px}
h3{font-size:15px;margin-top:18px}table{border-collapse:collapse;font-size:12.5px;margin:8px 0}
.tw{max-width:100%;overflow-x:auto}
th,td{border:1px solid #dde1e7;padding:4px 6px;text-align:left;max-width:480px;overflow-wrap:break-word}
td.long,td summary,td code{overflow-wrap:anywhere}
th{background:#f0f3f7}tr:nth-child(even) td{background:#fafbfc}
table.sortable th{cursor:pointer}table.sortable th::after{content:" \\21C5";color:#9aa3b0;font-size:11px}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top;max-width:100%}figure img{max-width:100%;border:1px solid #e3e6ea}
figcaption{font-size:12px;color:#5a6272}pre{background:#f0f3f7;padding:10px;font-size:12px;overflow:auto;max-height:420px;
white-space:pre-wrap}
code{background:#f0f3f7;padding:1px 4px;border-radius:3px}details{margin:8px 0}summary{cursor:pointer;color:#1d3557}
tr.degenerate td{color:#8a8f98;background:#eceef1}tr.chosen td{font-weight:600}.note{color:#5a6272;font-size:13px}
.summary{border-left:4px solid #1d3557}.summary ul{margin:4px 0 8px 18px;padding:0}.warn{color:#9a3412}
"""

# Click a header of a table.sortable to sort its rows by that column (again: the other way). Cells sort by their
# data-v attribute (numbers) when present, else by their text. Without scripts the table reads as written.
SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows),dir=th.dataset.dir==='1'?-1:1;
      t.querySelectorAll('th').forEach(function(h){delete h.dataset.dir;});th.dataset.dir=dir===1?'1':'-1';
      function key(r){var c=r.cells[i],v=c.getAttribute('data-v');return v!==null&&v!==''?parseFloat(v):c.textContent;}
      rows.sort(function(a,b){var x=key(a),y=key(b);
        if(typeof x==='number'&&typeof y==='number'){if(isNaN(x))return 1;if(isNaN(y))return -1;return dir*(x-y);}
        return dir*String(x).localeCompare(String(y),undefined,{numeric:true});});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"""


class Raw(str):
    """A table cell that is already HTML (built with escaping by the caller): written as is."""


@dataclass(frozen=True)
class Cell:
    """A table cell with a sort key (``data-v``, a number) beside its shown text."""

    text: str
    value: float | None = None


@dataclass
class Section:
    """One section of the page: its title (the nav entry) and its HTML. Sections are listed in page order; a
    lane adding a section appends or inserts one :class:`Section`."""

    title: str
    html: str
    key: str = ""


LONG_WORD = 32  # a cell with a longer unbroken token (an id, a path) may break it anywhere: no table wider than the page


def percent(x, pct: bool = True) -> str:
    """A table number: ``100 x`` with one decimal (``pct``) or ``x`` with three; "–" for a missing value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def _cell(c) -> str:
    text = str(c.text if isinstance(c, Cell) else c)
    long = "" if isinstance(c, Raw) or max(map(len, text.split()), default=0) <= LONG_WORD else ' class="long"'
    if isinstance(c, Cell):
        v = "" if c.value is None or c.value != c.value else f' data-v="{c.value:.6g}"'
        return f"<td{long}{v}>{html.escape(text)}</td>"
    return f"<td>{c}</td>" if isinstance(c, Raw) else f"<td{long}>{html.escape(text)}</td>"


def table(header: Sequence[str], rows: Sequence[Sequence], *, row_classes: Sequence[str] | None = None,
          sortable: bool = False, attrs: str = "") -> str:
    """An HTML table (cells escaped unless :class:`Raw`; :class:`Cell` adds a numeric sort key); ``row_classes``
    gives a CSS class per row (e.g. "degenerate": grey); ``sortable``: click a header to sort (:data:`SORT_JS`).
    Wrapped in a ``div.tw`` that scrolls the table, never the page, on a screen too narrow for it."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    classes = row_classes or [""] * len(rows)
    body = "".join((f'<tr class="{html.escape(k)}">' if k else "<tr>") + "".join(_cell(c) for c in r) + "</tr>"
                   for r, k in zip(rows, classes))
    cls = ' class="sortable"' if sortable else ""
    return f'<div class="tw"><table{cls}{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def details(summary: str, content: str, *, open_: bool = False) -> str:
    """A collapsed block: ``summary`` (escaped) is shown, ``content`` (HTML) on a click."""
    return f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>{content}</details>"


def folded(text: str, limit: int = 40) -> Raw:
    """A long value (e.g. head params JSON) as a cell: its first ``limit`` characters, the whole in a details
    element (wrapped), so that no table is wider than the page."""
    text = str(text)
    if len(text) <= limit:
        return Raw(html.escape(text))
    return Raw(f"<details><summary>{html.escape(text[:limit])}…</summary><code>{html.escape(text)}</code></details>")


def script_tag(code: str) -> str:
    """An inline script; ``</`` is escaped so that no string in it ends the element."""
    return "<script>" + code.replace("</", "<\\/") + "</script>"


def page(title: str, dataset: str, sections: Sequence[Section], *, scripts: Sequence[str] = (), data: str = "",
         css: str = "") -> str:
    """The whole page: header, nav (one entry per section), the sections in order, then ``data`` (HTML: e.g.
    embedded JSON) and the inline scripts; ``css`` is added to the page's style."""
    anchors = [s.key or f"s{i}" for i, s in enumerate(sections)]
    nav = "".join(f'<a href="#{a}">{html.escape(s.title)}</a>' for a, s in zip(anchors, sections))
    body = "".join(f'<section id="{a}"{" class=summary" if a == "summary" else ""}><h2>{html.escape(s.title)}</h2>'
                   f'{s.html}</section>' for a, s in zip(anchors, sections))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    js = "".join(script_tag(c) for c in (SORT_JS, *scripts))
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}{css}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1><p>data set <b>{html.escape(dataset)}</b> · generated {stamp} by featpipe</p></header>"
            f"<nav>{nav}</nav><main>{body}</main>{data}{js}</body></html>\n")
