"""The studio in a real Chromium (Debian's, driven by Playwright) on the embedded model.

The tests run in file order on one page, as a user would: generate, sweep, frontier, compare, runs,
then bad input. Each tab is saved to ``artifacts/screenshots/``; the click-to-image time of the first
and a second generation goes to ``artifacts/browser-timings.json``.
"""

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pandas as pd
import pytest

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-test.txt)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/install.sh installs it)")

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
REF = {"sampler": "DPM++ 2M", "steps": 10}
TIMINGS: dict = {}


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.layout import build_demo

    demo = build_demo("emoji-sd", tmp_path_factory.mktemp("study"), reference=REF, timer_s=1.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/", demo.studio.store
    demo.close()


@pytest.fixture(scope="module")
def page(app_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        pg.set_default_timeout(60_000)
        pg.goto(app_url[0])
        pg.wait_for_selector("#generate-btn")
        yield pg
        browser.close()
    if TIMINGS:
        (ROOT / "artifacts" / "browser-timings.json").write_text(json.dumps(TIMINGS, indent=2))


def _tab(page, name):
    page.get_by_role("tab", name=name).click()


def _set(page, elem_id, value):
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")


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


def _click_point(page, i: int) -> int:
    """Hover and click the i-th run point of the frontier (positions from plotly's own axes, so the
    selection ring drawn over a clicked point is never clicked); returns its run id once selected."""
    for _ in range(5):
        state = page.evaluate(_POINTS_JS)
        points = sorted(state["points"], key=lambda p: (p["x"], p["y"])) if state else []
        if len(points) > i and state["ringed"] == i:  # the redraw after the previous click is done
            p = points[i]
            page.mouse.move(p["x"], p["y"])
            page.wait_for_timeout(300)
            page.mouse.click(p["x"], p["y"])
            try:
                page.wait_for_function(f"document.querySelector('#frontier-selection').innerText"
                                       f".includes('{p['id']}: ')", timeout=5000)
                return p["id"]
            except playwright.Error:
                pass
        page.wait_for_timeout(1000)
    raise AssertionError(f"clicking frontier point {i} never selected it")


def test_generate_shows_the_image_the_metrics_and_a_new_frontier_point(page, app_url):
    store = app_url[1]
    _set(page, "prompts", "grinning face")
    for key in ("first", "second"):  # first: loads the model and makes the reference; second: both kept
        n = store.db["runs"].count
        t0 = time.perf_counter()
        page.click("#generate-btn")
        page.wait_for_function(f"document.querySelector('#metrics-card').innerText.includes('Run {n + 1}: ok')",
                               timeout=300_000)
        page.wait_for_selector("#gallery img")
        TIMINGS[f"click_to_image_s_{key}"] = round(time.perf_counter() - t0, 2)
    TIMINGS["config"] = "emoji-sd defaults: 1 prompt x 1 seed, 50 steps, guidance 3, warm-up 1 + 3 timed repeats"
    card = page.inner_text("#metrics-card")
    for part in ("ms median of 3 timed repeats", "IQR", "Breakdown", "Peak memory", "PSNR", "Setup"):
        assert part in card
    assert page.locator("#gallery img").count() == 1
    page.screenshot(path=str(SHOTS / "1-generate.png"), full_page=True)
    _tab(page, "Frontier")
    page.wait_for_function("document.querySelectorAll('#frontier-plot .scatterlayer .point').length >= 2")


def test_a_2x2_sweep_shows_the_annotated_grid(page, app_url):
    store = app_url[1]
    _tab(page, "Sweep")
    page.wait_for_function("document.querySelector('#sweep-estimate').innerText.includes('4 runs')")
    assert "estimated" in page.inner_text("#sweep-estimate")
    page.click("#start-sweep")
    page.wait_for_function("document.querySelector('#sweep-status').innerText.includes('finished')",
                           timeout=300_000)
    cells = page.locator("#sweep-grid td")
    assert cells.count() == 4
    for i in range(4):
        text = cells.nth(i).inner_text()
        assert " ms" in text and "PSNR" in text and "SSIM" in text and "IQR" in text
        assert cells.nth(i).locator("img").count() == 1
    assert "steps = 8" in page.inner_text("#sweep-grid") and "sampler = DPM++ 2M" in page.inner_text("#sweep-grid")
    assert len(store.sweep_runs(store.sweeps()[-1]["id"])) == 4
    page.screenshot(path=str(SHOTS / "2-sweep.png"), full_page=True)


def test_frontier_updates_and_a_clicked_point_is_shown_and_selected(page):
    _tab(page, "Frontier")
    page.wait_for_function("document.querySelectorAll('#frontier-plot .scatterlayer .point').length >= 6")
    page.wait_for_timeout(1500)  # let the timer's redraw settle
    ids = [_click_point(page, i) for i in (0, 1)]
    assert ids[0] != ids[1]
    page.wait_for_selector("#frontier-thumb img")
    assert "latency" in page.inner_text("#frontier-point")
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "3-frontier.png"), full_page=True)


def test_compare_shows_images_differences_and_deltas(page):
    page.click("#to-compare")
    page.wait_for_function("document.querySelectorAll('#compare-view img').length >= 3")
    text = page.inner_text("#compare-view")
    assert "seed 0" in text and "|run" in text and "mean |Δ|" in text
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "4-compare.png"), full_page=True)


def test_runs_table_csv_download_and_details(page, app_url, tmp_path):
    store = app_url[1]
    _tab(page, "Runs")
    n = store.db["runs"].count
    rows = "#runs-table [role=row]"  # the header row, then one per run (newest first)
    page.wait_for_function(f"document.querySelectorAll('{rows}').length > {n}")
    with page.expect_download() as info:
        page.click("#download-csv")
    path = tmp_path / "runs.csv"
    info.value.save_as(path)
    frame = pd.read_csv(path)
    assert sorted(frame["id"]) == [r["id"] for r in store.runs()] and "config_json" in frame
    page.locator(rows).nth(1).locator(":scope > *").nth(1).click()
    page.wait_for_function("document.querySelector('#run-details').innerText.includes('Latency')")
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "5-runs.png"), full_page=True)


@pytest.mark.parametrize("elem_id, value, message", [
    ("setting-steps", 0, "steps=0 is not allowed"),
    ("prompts", "", "prompts=[] is not allowed"),
    ("seeds", "7-2", "seeds='7-2' is not allowed: a range low-high"),
    ("seeds", "lucky", "seeds='lucky' is not allowed"),
    ("setting-height", 33, "height=33 is not allowed: a multiple of"),
])
def test_bad_input_shows_a_readable_message_in_the_page(page, elem_id, value, message, bad_inputs):
    _tab(page, "Generate")
    _set(page, "setting-steps", 10)
    _set(page, "setting-height", 32)
    _set(page, "seeds", "0")
    _set(page, "prompts", "grinning face")
    _set(page, elem_id, value)
    page.click("#generate-btn")
    toast = page.get_by_text(message).first
    toast.wait_for()
    bad_inputs.append(("UI Generate tab", f"{elem_id} = {value!r}", toast.inner_text()))
    assert "Traceback" not in page.inner_text("body")
    if elem_id == "setting-steps":
        page.screenshot(path=str(SHOTS / "6-bad-input.png"), full_page=True)
    for close in page.locator(".toast-close").all():
        close.click()
