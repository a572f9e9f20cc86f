"""What every browser test module shares: the studio served on the embedded model (one server and one
study per test module), Debian's Chromium driven by Playwright, a fresh page per test once its load
events have filled the form, and waits on conditions in the page (never fixed sleeps).

``tests/conftest.py`` loads this module as a plugin, so the fixtures (``served``, ``browser``, ``page``,
``far_apart_runs``) need no import; test modules import the helpers they use and mark themselves
``pytestmark = needs_chromium``. Screenshots go to ``SHOTS`` (``artifacts/screenshots/``) at 1400x900.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from live import free_port

try:
    import playwright.sync_api as playwright
except ImportError:  # the marker below skips every browser test and says why
    playwright = None
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    playwright is None or CHROMIUM is None,
    reason="needs playwright (requirements-test.txt) and Debian's chromium (scripts/install.sh installs both)")

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
REF = {"sampler": "DPM++ 2M", "steps": 10}
UI_MS = 120_000  # a page reacting to a click or a load event, on a busy machine
RUN_MS = 600_000  # a generation or sweep: the first loads the model and makes the reference
VIEWPORT = {"width": 1400, "height": 900}  # the size screenshots are taken and judged at


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
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(UI_MS)
    pg.goto(served.url)
    playwright.expect(pg.locator("#generate-btn")).to_be_enabled()
    playwright.expect(pg.locator("body")).to_contain_text("own scheduler")  # the model line from the load event
    yield pg
    context.close()


def ok_runs(served) -> list[dict]:
    return [r for r in served.studio.store.runs() if r["status"] == "ok"]


def add_run(served, steps: int) -> dict:
    """One run as the Generate tab would make it, through the study service behind the page."""
    row = served.studio.service.run({"model": "emoji-sd", "prompts": ["grinning face"], "seeds": [0],
                                     "steps": steps, "warmup": 1, "repeats": 1})
    assert row["status"] == "ok", row.get("error")
    return row


@pytest.fixture(scope="module")
def far_apart_runs(served) -> list[dict]:
    """Two runs of this module far apart on the frontier (4 and 16 steps), whatever else ran before; they
    also give the sweep's estimate past runs of the model to go on."""
    return [add_run(served, 4), add_run(served, 16)]


def tab(page, name):
    page.get_by_role("tab", name=name).click()
    playwright.expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")


def set_value(page, elem_id, value):
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")
    playwright.expect(box).to_have_value(str(value))


def images_loaded(page, selector: str, at_least: int = 1) -> None:
    """Wait until ``at_least`` images match and all have loaded; gradio's images are lazy, loading only
    near the screen (and the page may have scrolled away from them), so each is scrolled to first."""
    page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length >= n", arg=[selector, at_least])
    for image in page.locator(selector).all():
        image.scroll_into_view_if_needed()
    page.wait_for_function("sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)",
                           arg=selector)


POINTS_JS = """() => {
  const gd = document.querySelector('#frontier-plot .js-plotly-plot');
  if (!gd || !gd._fullData || !gd._fullLayout.xaxis) { return null; }
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  const out = [];
  gd._fullData.filter(t => t.mode === 'markers').forEach(t => t.x.forEach((x, k) => out.push({
    id: t.customdata[k], x: box.left + xa._offset + xa.l2p(x), y: box.top + ya._offset + ya.l2p(t.y[k])})));
  const ring = gd._fullData.find(t => t.name === 'selected');
  return {points: out, ringed: ring ? ring.x.length : 0};
}"""

HOVERED_JS = """(id) => {
  const gd = document.querySelector('#frontier-plot .js-plotly-plot');
  return !!(gd && gd._hoverdata && gd._hoverdata.some(p => String(p.customdata) === String(id)));
}"""


def frontier_points(page, runs: int, ringed: int) -> list[dict]:
    """The frontier's run points once it shows ``runs`` of them with ``ringed`` selected (redraws done)."""
    handle = page.wait_for_function(f"() => {{ const s = ({POINTS_JS})();"
                                    f" return s && s.points.length === {runs} && s.ringed === {ringed} && s; }}")
    return handle.json_value()["points"]


def click_point(page, run_id: int, runs: int, ringed: int) -> None:
    """Hover, then click one run point (plotly takes the clicked point from its hover, which it updates
    on a throttle: the hover must have landed first); wait until it is selected and ringed."""
    def where() -> dict:
        return next(p for p in frontier_points(page, runs, ringed) if p["id"] == run_id)

    # the mouse reaches only what is on screen: bring the point to the middle of the viewport
    page.evaluate("y => window.scrollBy(0, y - window.innerHeight / 2)", where()["y"])
    point = where()
    page.mouse.move(point["x"], point["y"])
    page.wait_for_function(HOVERED_JS, arg=run_id)
    page.mouse.click(point["x"], point["y"])
    playwright.expect(page.locator("#frontier-selection")).to_contain_text(f"{run_id}: ")
    frontier_points(page, runs, ringed + 1)


def select_two_far_apart_points(page, runs: int) -> list[int]:
    """Click the leftmost run point and the one farthest from it on screen (never two overlapping points)."""
    points = frontier_points(page, runs, 0)
    first = min(points, key=lambda p: (p["x"], p["y"]))
    second = max(points, key=lambda p: (p["x"] - first["x"]) ** 2 + (p["y"] - first["y"]) ** 2)
    click_point(page, first["id"], runs, 0)
    click_point(page, second["id"], runs, 1)
    return [first["id"], second["id"]]


TOAST_JS = """(message) => {
  const toast = [...document.querySelectorAll('[data-testid=toast-body]')].find(e => e.innerText.includes(message));
  if (!toast || getComputedStyle(toast).opacity !== '1') { return false; }  // not yet faded in
  const text = [...toast.querySelectorAll('[data-testid=toast-text]')].find(e => e.innerText.includes(message));
  return text ? text.innerText : false;
}"""
