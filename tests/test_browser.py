"""The studio in a real Chromium (Debian's, driven by Playwright) on the embedded model.

One server and one browser serve the module; every test opens its own page, waits until the page's
load events have filled the form, and makes the runs it needs, so each passes alone and in any order:
generate, sweep, frontier, compare, runs, then bad input. Every wait is on a condition in the page
(``expect``, ``wait_for_function``) with generous timeouts, because the machine may be loaded; none
sleeps for a fixed time. Toasts are read, never clicked: they dismiss themselves.

Each tab is saved to ``artifacts/screenshots/``; the click-to-image time of two generations from the
Generate tab goes to ``artifacts/browser-timings.json``.
"""

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from live import free_port

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-test.txt)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/install.sh installs it)")

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
REF = {"sampler": "DPM++ 2M", "steps": 10}
UI_MS = 120_000  # a page reacting to a click or a load event, on a busy machine
RUN_MS = 600_000  # a generation or sweep: the first loads the model and makes the reference
TIMINGS: dict = {}


@dataclass
class Served:
    url: str
    studio: object  # app.handlers.Studio: the service and store behind the page


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.layout import build_demo

    demo = build_demo("emoji-sd", tmp_path_factory.mktemp("study"), reference=REF, timer_s=1.0)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    yield Served(f"http://127.0.0.1:{port}/", demo.studio)
    demo.close()
    if TIMINGS:
        (ROOT / "artifacts" / "browser-timings.json").write_text(json.dumps(TIMINGS, indent=2))


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    playwright.expect.set_options(timeout=UI_MS)
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, served):
    """A fresh page on the studio, once its load events have put the model's defaults into the form (so
    nothing a test types is overwritten by them)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(UI_MS)
    pg.goto(served.url)
    playwright.expect(pg.locator("#generate-btn")).to_be_enabled()
    playwright.expect(pg.locator("body")).to_contain_text("own scheduler")  # the model line from the load event
    yield pg
    context.close()


def _ok_runs(served) -> list[dict]:
    return [r for r in served.studio.store.runs() if r["status"] == "ok"]


def _add_run(served, steps: int) -> dict:
    """One run as the Generate tab would make it, through the study service behind the page."""
    row = served.studio.service.run({"model": "emoji-sd", "prompts": ["grinning face"], "seeds": [0],
                                     "steps": steps, "repeats": 1})
    assert row["status"] == "ok", row.get("error")
    return row


@pytest.fixture(scope="module")
def far_apart_runs(served) -> list[dict]:
    """Two runs of this module far apart on the frontier (4 and 16 steps), whatever else ran before; they
    also give the sweep's estimate past runs of the model to go on."""
    return [_add_run(served, 4), _add_run(served, 16)]


def _tab(page, name):
    page.get_by_role("tab", name=name).click()
    playwright.expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")


def _set(page, elem_id, value):
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")
    playwright.expect(box).to_have_value(str(value))


def _images_loaded(page, selector: str, at_least: int = 1) -> None:
    """Wait until ``at_least`` images match and all have loaded; gradio's images are lazy, loading only
    near the screen (and the page may have scrolled away from them), so each is scrolled to first."""
    page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length >= n", arg=[selector, at_least])
    for image in page.locator(selector).all():
        image.scroll_into_view_if_needed()
    page.wait_for_function("sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)",
                           arg=selector)


_POINTS_JS = """() => {
  const gd = document.querySelector('#frontier-plot .js-plotly-plot');
  if (!gd || !gd._fullData || !gd._fullLayout.xaxis) { return null; }
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  const out = [];
  gd._fullData.filter(t => t.mode === 'markers').forEach(t => t.x.forEach((x, k) => out.push({
    id: t.customdata[k], x: box.left + xa._offset + xa.l2p(x), y: box.top + ya._offset + ya.l2p(t.y[k])})));
  const ring = gd._fullData.find(t => t.name === 'selected');
  return {points: out, ringed: ring ? ring.x.length : 0};
}"""

_HOVERED_JS = """(id) => {
  const gd = document.querySelector('#frontier-plot .js-plotly-plot');
  return !!(gd && gd._hoverdata && gd._hoverdata.some(p => String(p.customdata) === String(id)));
}"""


def _frontier(page, runs: int, ringed: int) -> list[dict]:
    """The frontier's run points once it shows ``runs`` of them with ``ringed`` selected (redraws done)."""
    handle = page.wait_for_function(f"() => {{ const s = ({_POINTS_JS})();"
                                    f" return s && s.points.length === {runs} && s.ringed === {ringed} && s; }}")
    return handle.json_value()["points"]


def _click_point(page, run_id: int, runs: int, ringed: int) -> None:
    """Hover, then click one run point (plotly takes the clicked point from its hover, which it updates
    on a throttle: the hover must have landed first); wait until it is selected and ringed."""
    def where() -> dict:
        return next(p for p in _frontier(page, runs, ringed) if p["id"] == run_id)

    # the mouse reaches only what is on screen: bring the point to the middle of the viewport
    page.evaluate("y => window.scrollBy(0, y - window.innerHeight / 2)", where()["y"])
    point = where()
    page.mouse.move(point["x"], point["y"])
    page.wait_for_function(_HOVERED_JS, arg=run_id)
    page.mouse.click(point["x"], point["y"])
    playwright.expect(page.locator("#frontier-selection")).to_contain_text(f"{run_id}: ")
    _frontier(page, runs, ringed + 1)


def _select_two_far_apart_points(page, runs: int) -> list[int]:
    """Click the leftmost run point and the one farthest from it on screen (never two overlapping points)."""
    points = _frontier(page, runs, 0)
    first = min(points, key=lambda p: (p["x"], p["y"]))
    second = max(points, key=lambda p: (p["x"] - first["x"]) ** 2 + (p["y"] - first["y"]) ** 2)
    _click_point(page, first["id"], runs, 0)
    _click_point(page, second["id"], runs, 1)
    return [first["id"], second["id"]]


def test_generate_shows_the_image_the_metrics_and_a_new_frontier_point(page, served):
    store = served.studio.store
    _set(page, "prompts", "grinning face")
    TIMINGS["runs_before"] = store.db["runs"].count  # 0: the first click loads the model and makes the reference
    for key in ("first", "second"):
        n = store.db["runs"].count
        t0 = time.perf_counter()
        page.click("#generate-btn")
        playwright.expect(page.locator("#metrics-card")).to_contain_text(f"Run {n + 1}: ok", timeout=RUN_MS)
        playwright.expect(page.locator("#gallery img")).to_have_count(1)
        _images_loaded(page, "#gallery img")
        TIMINGS[f"click_to_image_s_{key}"] = round(time.perf_counter() - t0, 2)
    last = store.runs()[-1]
    TIMINGS["config"] = (f"emoji-sd defaults: 1 prompt x 1 seed, {last['steps']} steps, guidance {last['guidance']:g}, "
                         "warm-up 1 + 3 timed repeats")
    card = page.inner_text("#metrics-card")
    for part in ("ms median of 3 timed repeats", "IQR", "Breakdown", "Peak memory", "PSNR", "Setup"):
        assert part in card
    page.screenshot(path=str(SHOTS / "1-generate.png"), full_page=True)
    _tab(page, "Frontier")
    points = _frontier(page, len(_ok_runs(served)), 0)
    assert {r["id"] for r in store.runs()[-2:]} <= {p["id"] for p in points}


def test_a_2x2_sweep_shows_the_annotated_grid(page, served, far_apart_runs):
    store = served.studio.store  # the estimate is made from this model's past runs: far_apart_runs
    _tab(page, "Sweep")
    playwright.expect(page.locator("#sweep-estimate")).to_contain_text("4 runs")
    assert "estimated" in page.inner_text("#sweep-estimate")
    page.click("#start-sweep")
    playwright.expect(page.locator("#sweep-status")).to_contain_text("finished", timeout=RUN_MS)
    cells = page.locator("#sweep-grid td")
    playwright.expect(cells).to_have_count(4)
    for i in range(4):
        text = cells.nth(i).inner_text()
        assert " ms" in text and "PSNR" in text and "SSIM" in text and "IQR" in text
        assert cells.nth(i).locator("img").count() == 1
    assert "steps = 8" in page.inner_text("#sweep-grid") and "sampler = DPM++ 2M" in page.inner_text("#sweep-grid")
    assert len(store.sweep_runs(store.sweeps()[-1]["id"])) == 4
    _images_loaded(page, "#sweep-grid img", 4)
    page.screenshot(path=str(SHOTS / "2-sweep.png"), full_page=True)


def test_frontier_updates_and_a_clicked_point_is_shown_and_selected(page, served, far_apart_runs):
    _tab(page, "Frontier")
    before = len(_ok_runs(served))
    _frontier(page, before, 0)
    _add_run(served, 12)  # the page polls the study: the new run appears without a reload
    runs = len(_ok_runs(served))
    assert runs == before + 1
    ids = _select_two_far_apart_points(page, runs)
    assert ids[0] != ids[1]
    playwright.expect(page.locator("#frontier-thumb img").first).to_be_visible()
    _images_loaded(page, "#frontier-thumb img")
    assert "latency" in page.inner_text("#frontier-point")
    page.screenshot(path=str(SHOTS / "3-frontier.png"), full_page=True)


def test_compare_shows_images_differences_and_deltas(page, served, far_apart_runs):
    _tab(page, "Frontier")
    _select_two_far_apart_points(page, len(_ok_runs(served)))
    page.click("#to-compare")
    playwright.expect(page.get_by_role("tab", name="Compare")).to_have_attribute("aria-selected", "true")
    _images_loaded(page, "#compare-view img", 3)
    text = page.inner_text("#compare-view")
    assert "seed 0" in text and "|run" in text and "mean |Δ|" in text
    page.screenshot(path=str(SHOTS / "4-compare.png"), full_page=True)


def test_runs_table_csv_download_and_details(page, served, far_apart_runs, tmp_path):
    store = served.studio.store
    _tab(page, "Runs")
    n = store.db["runs"].count
    rows = page.locator("#runs-table [role=row]")  # the header row, then one per run (newest first)
    playwright.expect(rows).to_have_count(n + 1)
    with page.expect_download() as info:
        page.click("#download-csv")
    path = tmp_path / "runs.csv"
    info.value.save_as(path)
    frame = pd.read_csv(path)
    assert sorted(frame["id"]) == [r["id"] for r in store.runs()] and "config_json" in frame
    rows.nth(1).locator(":scope > *").nth(1).click()
    playwright.expect(page.locator("#run-details")).to_contain_text("Latency")
    page.screenshot(path=str(SHOTS / "5-runs.png"), full_page=True)


_TOAST_JS = """(message) => {
  const toast = [...document.querySelectorAll('[data-testid=toast-body]')].find(e => e.innerText.includes(message));
  if (!toast || getComputedStyle(toast).opacity !== '1') { return false; }  // not yet faded in
  const text = [...toast.querySelectorAll('[data-testid=toast-text]')].find(e => e.innerText.includes(message));
  return text ? text.innerText : false;
}"""


@pytest.mark.parametrize("elem_id, value, message", [
    ("setting-steps", 0, "steps=0 is not allowed"),
    ("prompts", "", "prompts=[] is not allowed"),
    ("seeds", "7-2", "seeds='7-2' is not allowed: a range low-high"),
    ("seeds", "lucky", "seeds='lucky' is not allowed"),
    ("setting-height", 33, "height=33 is not allowed: a multiple of"),
])
def test_bad_input_shows_a_readable_message_in_the_page(page, elem_id, value, message, bad_inputs):
    _set(page, "setting-steps", 10)
    _set(page, "setting-height", 32)
    _set(page, "seeds", "0")
    _set(page, "prompts", "grinning face")
    _set(page, elem_id, value)
    page.click("#generate-btn")
    # read in the same step that finds it, once it has faded in: the toast dismisses itself
    shown = page.wait_for_function(_TOAST_JS, arg=message).json_value()
    bad_inputs.append(("UI Generate tab", f"{elem_id} = {value!r}", shown))
    assert "Traceback" not in page.inner_text("body")
    if elem_id == "setting-steps":
        page.screenshot(path=str(SHOTS / "6-bad-input.png"), full_page=True)
