"""The Frontier, Compare and Runs tabs as a person reads them, in a real Chromium (``browser_kit``).

The module's study holds four cheap runs of the embedded model: its own sampler asked for as "default"
and as "DDIM", DeepCache on top of it (three repeats, so it has a spread to draw), and Euler. The tests
read what the page shows (plotly's hover texts and traces, the tables' header cells, the Compare
view) and never wait a fixed time. They save ``3-frontier.png``, ``4-compare.png`` (three runs) and
``5-runs.png`` to ``artifacts/screenshots/``.
"""

import re

import pytest
from browser_kit import SHOTS, frontier_points, images_loaded, needs_chromium, ok_runs, playwright, tab

pytestmark = needs_chromium

BASE = {"model": "emoji-sd", "prompts": ["grinning face"], "seeds": [0], "warmup": 1, "repeats": 1}
BAD = ("nan", "None", "{")  # never in text a person reads

TRACES_JS = """() => {
  const gd = document.querySelector('#frontier-plot .js-plotly-plot');
  if (!gd || !gd._fullData) { return null; }
  return gd._fullData.map(t => ({name: t.name, mode: t.mode, hovertext: t.hovertext || [],
                                 bars: !!(t.error_x && t.error_x.visible && t.error_x.array &&
                                          t.error_x.array.some(v => v > 0))}));
}"""

# each header cell's text: on how many lines it is drawn, and whether it is in view or its table scrolls
HEADERS_JS = """(sel) => [...document.querySelectorAll(sel + ' th')].filter(th => th.innerText.trim()).map(th => {
  const text = [...th.querySelectorAll('*'), th].flatMap(e => [...e.childNodes])
    .find(n => n.nodeType === 3 && n.textContent.trim());
  const range = document.createRange();
  range.selectNodeContents(text);
  const lines = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top))).size;
  let scroller = th.parentElement;
  while (scroller && scroller !== document.body && !(scroller.scrollWidth > scroller.clientWidth + 1 &&
         ['auto', 'scroll'].includes(getComputedStyle(scroller).overflowX))) { scroller = scroller.parentElement; }
  return {text: th.innerText.trim(), lines, inView: th.getBoundingClientRect().right <= window.innerWidth,
          scrolls: !!scroller && scroller !== document.body};
})"""


@pytest.fixture(scope="module")
def runs(served) -> list[dict]:
    """The model's own sampler as "default" and as "DDIM", DeepCache on it (three repeats), and Euler."""
    specs = [{"steps": 4}, {"steps": 3, "sampler": "DDIM"},
             {"steps": 4, "knobs": {"deepcache": {"interval": 2}}, "repeats": 3}, {"steps": 2, "sampler": "Euler"}]
    rows = [served.studio.service.run({**BASE, **spec}) for spec in specs]
    assert [r["status"] for r in rows] == ["ok"] * 4, [r.get("error") for r in rows]
    return rows


def _traces(page) -> list[dict]:
    return [t for t in page.evaluate(TRACES_JS) if t["mode"] == "markers"]


def _pick(page, elem_id: str, option: str) -> None:
    """Choose an option of a single-choice dropdown by its label."""
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=True).click()
    playwright.expect(page.locator(f"#{elem_id} input")).to_have_value(option)


def _compare(page, ids: list[int]) -> None:
    """Put these runs in the Compare picker (clearing it first) and press Compare."""
    clear = page.locator("#compare-ids .remove-all")
    if clear.count():
        clear.click()
    page.click("#compare-ids input")
    for run_id in ids:
        page.get_by_role("option", name=re.compile(f"^{run_id}: ")).click()
    page.keyboard.press("Escape")
    page.click("#compare-btn")
    for run_id in ids:
        playwright.expect(page.locator("#compare-metrics")).to_contain_text(f"run {run_id}")
    playwright.expect(page.locator("#compare-view")).to_contain_text(f"run {ids[-1]}")


def test_frontier_hovers_read_as_text_fit_beside_the_point_and_one_sampler_is_one_series(page, served, runs):
    tab(page, "Frontier")
    n = len(ok_runs(served))
    points = frontier_points(page, n, 0)
    hovers = [h for t in _traces(page) for h in t["hovertext"]]
    assert len(hovers) == n
    for text in hovers:
        assert not any(bad in text for bad in BAD), text
    assert any("DeepCache N=2" in h for h in hovers) and not any("did nothing" in h for h in hovers)
    # coloured by configuration (the default), DeepCache is its own series; by sampler, "default" and "DDIM"
    # are one: the model's own sampler
    assert "DDIM (model default)<br>DeepCache N=2" in {t["name"] for t in _traces(page)}
    _pick(page, "f-color", "sampler")
    page.wait_for_function(f"() => ({TRACES_JS})().filter(t => t.mode === 'markers').length === 2")
    series = {t["name"]: len(t["hovertext"]) for t in _traces(page)}
    assert series == {"DDIM (model default)": 3, "Euler": 1}
    # the hover box of the rightmost point stays inside the figure (long hovers were clipped at its left)
    right = max(points, key=lambda p: p["x"])
    page.evaluate("y => window.scrollBy(0, y - window.innerHeight / 2)", right["y"])
    right = max(frontier_points(page, n, 0), key=lambda p: p["x"])
    page.mouse.move(right["x"], right["y"])
    page.wait_for_selector("#frontier-plot .hoverlayer .hovertext")
    box, figure = page.evaluate("""() => [document.querySelector('#frontier-plot .hoverlayer .hovertext'),
                                          document.querySelector('#frontier-plot .js-plotly-plot')]
                                         .map(e => e.getBoundingClientRect().toJSON())""")
    assert figure["left"] <= box["left"] and box["right"] <= figure["right"], (box, figure)


def test_the_latency_spread_toggle_draws_quartile_bars(page, served, runs):
    tab(page, "Frontier")
    frontier_points(page, len(ok_runs(served)), 0)
    assert not any(t["bars"] for t in _traces(page))
    page.click("#f-spread input")
    page.wait_for_function(f"() => ({TRACES_JS})().some(t => t.bars)")
    assert page.locator("#frontier-plot g.errorbar").count() >= 1
    assert "bars: latency Q1 to Q3" in page.inner_text("#frontier-plot")
    deepcache = next(p for p in frontier_points(page, len(ok_runs(served)), 0) if p["id"] == runs[2]["id"])
    page.mouse.move(deepcache["x"], deepcache["y"])
    playwright.expect(page.locator("#frontier-plot .hoverlayer .hovertext")).to_contain_text("DeepCache N=2")
    page.screenshot(path=str(SHOTS / "3-frontier.png"), full_page=True)


def test_compare_fits_three_runs_with_one_heatmap_scale(page, served, runs):
    tab(page, "Compare")
    playwright.expect(page.locator("#compare-view")).to_contain_text("Pick two to four runs above")
    playwright.expect(page.locator("#compare-metrics")).to_be_hidden()  # no placeholder headers "1 2 3"
    ids = [r["id"] for r in runs[:3]]
    _compare(page, ids)
    images_loaded(page, "#compare-view img", 3 + 2 + 1)  # three images, two heatmaps, the colour bar
    assert page.locator("#compare-view img").first.bounding_box()["width"] >= 200  # images use the width
    for table in ("#compare-metrics", "#compare-settings"):
        headers = {h["text"]: h for h in page.evaluate(HEADERS_JS, table)}
        for run_id in ids:  # every run shown, its header on one line ("run 9", never "ru / n / 9")
            h = headers[f"run {run_id}"]
            assert h["lines"] == 1 and (h["inView"] or h["scrolls"]), h
    metrics, settings = page.inner_text("#compare-metrics"), page.inner_text("#compare-settings")
    assert "DeepCache N=2" in settings and "ms (" in metrics
    for text in (metrics, settings):
        assert not any(bad in text for bad in (*BAD, "e+", "-0%")), text
    scale = page.locator("#compare-view .heat-scale")
    playwright.expect(scale).to_have_count(1)
    first_scale = scale.inner_text()
    assert "64+ of 255" in first_scale
    page.screenshot(path=str(SHOTS / "4-compare.png"), full_page=True)
    _compare(page, [runs[0]["id"], runs[3]["id"]])  # a pair far more different: the scale stays
    assert page.locator("#compare-view .heat-scale").inner_text() == first_scale


def test_runs_table_puts_the_key_columns_first(page, served, runs):
    tab(page, "Runs")
    rows = page.locator("#runs-table [role=row]")
    playwright.expect(rows).to_have_count(len(served.studio.store.runs()) + 1)
    headers = [h["text"] for h in page.evaluate(HEADERS_JS, "#runs-table")]
    assert headers[:5] == ["run", "configuration", "steps", "median latency (ms)", "latency IQR (ms)"], headers
    assert headers.index("PSNR (pooled, dB)") < headers.index("peak memory (MiB)") < headers.index("status") \
        < headers.index("created"), headers
    assert "prompt set" not in headers and "sweep" not in headers  # blank for every run here
    cells = [c.strip() for row in rows.all_inner_texts()[1:] for c in re.split(r"[\t\n]", row)]
    assert "DDIM (model default) · DeepCache N=2" in cells
    assert not any(c in ("nan", "None", "NaN") or "{" in c for c in cells), cells
    newest = runs[-1]["id"]
    rows.nth(1).locator(":scope > *").nth(2).click()  # a row click shows that run (its id is the first cell)
    playwright.expect(page.locator("#run-id textarea")).to_have_value(str(newest))
    page.wait_for_function("() => document.querySelector('#run-details').innerText.length > 80")  # its card
    page.screenshot(path=str(SHOTS / "5-runs.png"), full_page=True)
