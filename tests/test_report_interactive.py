"""The interactive report in headless Chromium: one self-contained offline file whose charts render with no
console error, draw the all-configurations table's numbers, hide a configuration on a click, switch the metric,
show exact values on hover, zoom, and fall back to the static images without scripts.

Chromium is Debian's (``apt-get install -y chromium``; `.ci/run` installs it), driven by Python playwright
without any browser download. A missing browser fails the test with the line saying how to install it."""

from __future__ import annotations

import json
import re
import shutil
import tempfile

import pandas as pd
import pytest

from featpipe.report.html import page as html_page
from featpipe.report.html import Section
from featpipe.report.interactive import CSS, SCRIPT, chart, chart_data, data_script
from tests.report_fixtures import study  # noqa: F401 (the session's study fixture)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Python playwright is missing: pip install -e '.[test]' (or pip install playwright)", pytrace=False)
    exe = CHROMIUM if shutil.which(CHROMIUM) else shutil.which("chromium")
    if not exe:
        pytest.fail("Chromium not found at /usr/bin/chromium: install it with 'apt-get install -y chromium' "
                    "(as .ci/run does)", pytrace=False)
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=exe, args=ARGS, headless=True,
                                                   viewport={"width": 1300, "height": 900})
        yield ctx
        ctx.close()


@pytest.fixture
def page(browser, study):
    """The study's report loaded from its file:// URL; ``page.errors`` collects console errors and page
    exceptions, ``page.requests`` every URL the page asked for."""
    pg = browser.new_page()
    pg.errors, pg.requests = [], []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.goto(study["report"].as_uri())
    yield pg
    pg.close()


def _table(study, column: int) -> dict:
    """{(configuration, k): data-v} of one column of the all-configurations table."""
    t = study["tables"].tables["all-configurations"]
    return {(r[0], int(r[1])): float(v[column]) for r, v in zip(t["rows"], t["values"])}


def _points(page, kind: str) -> dict:
    return {(c, int(k)): float(y) for c, k, y in page.eval_on_selector_all(
        f'div.fp-chart[data-kind="{kind}"] .fp-point',
        "els => els.map(e => [e.dataset.config, e.dataset.k, e.dataset.y])")}


def test_the_page_loads_offline_with_no_console_error_and_every_chart_renders(page, study):
    assert page.errors == []
    assert all(u.startswith(("file://", "data:")) for u in page.requests), page.requests  # nothing fetched
    assert not re.search(r"<(script|img|link)[^>]+(src|href)=\"?https?:", study["html"])
    charts = page.eval_on_selector_all("div.fp-chart", "els => els.map(e => [e.dataset.kind, e.dataset.rendered, "
                                       "e.querySelectorAll('g.fp-series').length, getComputedStyle("
                                       "document.getElementById(e.dataset.fallback)).display])")
    configs = {c for c, _ in _table(study, 4)}
    assert charts == [["curve", "true", len(configs), "none"], ["spread", "true", len(configs), "none"]]
    # every configuration x k of the table is one point, at the table's test mean (the chart's default metric)
    assert _points(page, "curve") == pytest.approx(_table(study, 4), abs=1e-5)
    runs = study["runs"]
    spread = runs.groupby(["config", "shots"])["macro_f1"].agg(lambda s: s.max() - s.min())
    assert _points(page, "spread") == pytest.approx({(c, int(k)): v for (c, k), v in spread.items()}, abs=1e-6)


def test_tables_fit_the_page_and_sort_on_a_click(page, study):
    """No table is wider than its section on a 1300-px window, the page never scrolls sideways (a 900-px window
    included), and a click on a header of the all-configurations table sorts its rows by that column."""
    wide = page.eval_on_selector_all("table", "ts => ts.filter(t => t.getBoundingClientRect().right > "
                                     "t.closest('section').getBoundingClientRect().right + 1).map(t => t.id)")
    assert wide == []
    for width in (1300, 900):
        page.set_viewport_size({"width": width, "height": 900})
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    table = "#all-configurations"
    header = page.locator(f"{table} th").nth(4)  # test macro F1
    values = lambda: [float(v) for v in page.eval_on_selector_all(f"{table} tbody tr", "rs => rs.map(r => r.cells[4].dataset.v)")]
    header.click()
    assert values() == sorted(values()) and len(values()) == 8
    header.click()
    assert values() == sorted(values(), reverse=True)
    assert sorted(values()) == sorted(_table(study, 4).values())
    assert page.errors == []


def test_a_click_hides_a_configuration_and_the_metric_chooser_plots_the_tables_values(page, study):
    chart = 'div.fp-chart[data-kind="curve"]'
    name = sorted({c for c, _ in _table(study, 4)})[1]
    page.locator(f'{chart} label.fp-item[data-config="{name}"] input').click()
    shown = page.eval_on_selector_all(f"{chart} g.fp-series", "els => els.map(e => e.dataset.config)")
    assert len(shown) == 3 and name not in shown
    page.locator(f'{chart} label.fp-item[data-config="{name}"] input').click()
    page.select_option(f"{chart} select.fp-metric", "accuracy")
    assert _points(page, "curve") == pytest.approx(_table(study, 7), abs=1e-5)  # the table's test accuracy
    page.select_option(f"{chart} select.fp-metric", "auroc")
    assert _points(page, "curve") == pytest.approx(_table(study, 8), abs=1e-5)
    assert page.errors == []


def test_hover_shows_exact_values_and_n_and_a_dragged_rectangle_zooms(page, study):
    chart = 'div.fp-chart[data-kind="curve"]'
    dot = page.locator(f"{chart} .fp-point").first
    config, k, y = dot.get_attribute("data-config"), int(dot.get_attribute("data-k")), float(dot.get_attribute("data-y"))
    dot.hover()
    tip = page.locator(f"{chart} .fp-tip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert config in text and f"{k} shots" in text and f"{100 * y:.1f}%" in text and "n = 3 seeds" in text
    box = page.locator(f"{chart} rect.fp-overlay").bounding_box()
    before = dot.get_attribute("cx")
    page.mouse.move(box["x"] + 0.02 * box["width"], box["y"] + 0.05 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.95 * box["height"], steps=5)
    page.mouse.up()
    after = page.locator(f"{chart} .fp-point").first.get_attribute("cx")
    assert float(after) != pytest.approx(float(before))  # the x axis now spans the dragged part only
    page.locator(f"{chart} button.fp-reset").click()
    assert float(page.locator(f"{chart} .fp-point").first.get_attribute("cx")) == pytest.approx(float(before))
    assert page.errors == []


def test_without_scripts_the_static_images_are_shown(browser, study):
    ctx = browser.browser.new_context(java_script_enabled=False) if browser.browser else None
    pg = ctx.new_page() if ctx else browser.new_page()
    if ctx is None:  # a persistent context has no browser object: disable scripts through the page's CDP session
        pg.context.new_cdp_session(pg).send("Emulation.setScriptExecutionDisabled", {"value": True})
    pg.goto(study["report"].as_uri())
    shown = pg.eval_on_selector_all("div.fp-fallback", "els => els.map(e => [getComputedStyle(e).display, "
                                    "e.querySelectorAll('img').length, e.querySelector('img').naturalWidth > 0])")
    assert shown == [["block", 5, True], ["block", 1, True]]  # five learning-curve PNGs, the spread PNG
    assert pg.eval_on_selector_all("g.fp-series", "els => els.length") == 0
    pg.close()


def test_embedded_data_cannot_end_its_script_element():
    hostile = '</script><script>alert(1)</script><!--'
    text = data_script({"name": hostile, "x": [1.5, None]})
    body = text[text.index(">") + 1:-len("</script>")]
    assert "<" not in body and ">" not in body
    assert json.loads(body) == {"name": hostile, "x": [1.5, None]}


def test_twelve_configurations_stay_readable(browser, study, tmp_path):
    """12 configurations: 12 distinct looks (ten colours, then the next marker), intervals hidden until a
    configuration is highlighted (no cloud of 12 bands), and hovering a legend entry dims the others."""
    runs = study["runs"].drop(columns="config")
    many = pd.concat([runs.assign(head_params=json.dumps({"C": c}), macro_f1=runs["macro_f1"] + 0.01 * i)
                      for i, c in enumerate((1, 2, 3))], ignore_index=True)
    data = chart_data(many, ["macro_f1"], "macro_f1")
    names = [c["name"] for c in data["configs"]]
    assert len(set(names)) == 12 and len({(c["color"], c["marker"]) for c in data["configs"]}) == 12
    f = tmp_path / "twelve.html"
    f.write_text(html_page("t", "d", [Section("Learning curves", chart("curve", "c", "<p>static</p>"))],
                           data=data_script(data), scripts=[SCRIPT], css=CSS))
    pg = browser.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(f.as_uri())
    assert pg.eval_on_selector_all("g.fp-series", "els => els.length") == 12
    assert pg.eval_on_selector_all(".fp-point", "els => els.length") == 12 * 2
    assert pg.eval_on_selector_all("polygon.fp-band", "els => els.length") == 0
    pg.locator(f'label.fp-item[data-config="{names[11]}"]').hover()
    assert pg.eval_on_selector_all("polygon.fp-band", "els => els.map(e => e.dataset.config)") == [names[11]]
    dims = pg.eval_on_selector_all("g.fp-series", "els => els.map(e => [e.dataset.config, e.getAttribute('opacity')])")
    assert sorted(n for n, o in dims if o == "1") == [names[11]]
    assert errors == []
    pg.close()
