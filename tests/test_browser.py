"""The studio in a real Chromium (Debian's, driven by Playwright) on the embedded model.

One server and one browser serve the module (``browser_kit``); every test opens its own page, waits until the page's
load events have filled the form, and makes the runs it needs, so each passes alone and in any order:
generate, sweep, frontier, compare, runs, then bad input. Every wait is on a condition in the page
(``expect``, ``wait_for_function``) with generous timeouts, because the machine may be loaded; none
sleeps for a fixed time. Toasts are read, never clicked: they dismiss themselves.

Generate, Sweep and bad input are saved to ``artifacts/screenshots/`` (Frontier, Compare and Runs by
``test_browser_views.py``); the click-to-image time of two generations from the
Generate tab goes to ``artifacts/browser-timings.json``.
"""

import json
import re
import time

import pandas as pd
import pytest
from browser_kit import (
    ROOT,
    RUN_MS,
    SHOTS,
    TOAST_JS,
    add_run,
    frontier_points,
    images_loaded,
    needs_chromium,
    ok_runs,
    playwright,
    select_two_far_apart_points,
    set_value,
    tab,
)

pytestmark = needs_chromium

TIMINGS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _write_timings():
    yield
    if TIMINGS:
        (ROOT / "artifacts" / "browser-timings.json").write_text(json.dumps(TIMINGS, indent=2))


def test_generate_shows_the_image_the_metrics_and_a_new_frontier_point(page, served):
    store = served.studio.store
    set_value(page, "prompts", "grinning face")
    page.locator("#measurement").get_by_text("Measurement").click()
    set_value(page, "repeats", 3)  # a fixed count (the default, 0, repeats until the median settles)
    TIMINGS["runs_before"] = store.db["runs"].count  # 0: the first click loads the model and makes the reference
    for key in ("first", "second"):
        n = store.db["runs"].count
        t0 = time.perf_counter()
        page.click("#generate-btn")
        playwright.expect(page.locator("#metrics-card")).to_contain_text(f"Run {n + 1}: ok", timeout=RUN_MS)
        playwright.expect(page.locator("#gallery img")).to_have_count(1)
        images_loaded(page, "#gallery img")
        TIMINGS[f"click_to_image_s_{key}"] = round(time.perf_counter() - t0, 2)
    last = store.runs()[-1]
    TIMINGS["config"] = (f"emoji-sd defaults: 1 prompt x 1 seed, {last['steps']} steps, guidance {last['guidance']:g}, "
                         "warm-up 1 + 3 timed repeats")
    card = page.inner_text("#metrics-card")
    for part in ("ms median of 3 timed repeats", "IQR", "Breakdown", "Peak memory", "PSNR", "Setup"):
        assert part in card
    assert not re.search(r"\bnan\b|\bNone\b|\{", card), card  # 1-generate.png: test_browser_generate.py
    tab(page, "Frontier")
    points = frontier_points(page, len(ok_runs(served)), 0)
    assert {r["id"] for r in store.runs()[-2:]} <= {p["id"] for p in points}


def test_a_2x2_sweep_shows_the_annotated_grid(page, served, far_apart_runs):
    store = served.studio.store  # the estimate is made from this model's past runs: far_apart_runs
    page.locator("#measurement").get_by_text("Measurement").first.click()
    set_value(page, "repeats", 1)  # cheap: 2 and 4 steps, one timed repeat
    tab(page, "Sweep")
    set_value(page, "values-x", "2, 4")
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
        assert cells.nth(i).locator("img").get_attribute("width") == "128"  # the default thumbnail size
    grid = page.inner_text("#sweep-grid")
    assert "steps = 4" in grid and "sampler = DPM++ 2M" in grid
    # the model's own sampler is named as the baseline it is, never flagged as a knob that did nothing
    assert grid.count("DDIM (model default)") >= 2 and "did nothing" not in grid
    sweep = store.sweeps()[-1]
    assert len(store.sweep_runs(sweep["id"])) == 4
    # the recorded sweeps list it at once, and name it as the sweep the grid shows (no reload)
    playwright.expect(page.locator("#sweep-pick input")).to_have_value(
        f"{sweep['id']}: ui sweep: steps x sampler (done, 4 runs)")
    page.locator("#sweep-spec-box").get_by_text("Sweep spec as YAML").click()
    playwright.expect(page.locator("#sweep-spec")).to_contain_text("sampler: [DDIM, DPM++ 2M]")
    images_loaded(page, "#sweep-grid img", 4)
    page.screenshot(path=str(SHOTS / "2-sweep.png"), full_page=True)


def test_frontier_updates_and_a_clicked_point_is_shown_and_selected(page, served, far_apart_runs):
    tab(page, "Frontier")
    before = len(ok_runs(served))
    frontier_points(page, before, 0)
    add_run(served, 12)  # the page polls the study: the new run appears without a reload
    runs = len(ok_runs(served))
    assert runs == before + 1
    ids = select_two_far_apart_points(page, runs)
    assert ids[0] != ids[1]
    playwright.expect(page.locator("#frontier-thumb img").first).to_be_visible()
    images_loaded(page, "#frontier-thumb img")
    assert "latency" in page.inner_text("#frontier-point")


def test_compare_shows_images_differences_and_deltas(page, served, far_apart_runs):
    tab(page, "Frontier")
    select_two_far_apart_points(page, len(ok_runs(served)))
    page.click("#to-compare")
    playwright.expect(page.get_by_role("tab", name="Compare")).to_have_attribute("aria-selected", "true")
    images_loaded(page, "#compare-view img", 3)
    text = page.inner_text("#compare-view")
    assert "seed 0" in text and "|run" in text and "mean |Δ|" in text


def test_runs_table_csv_download_and_details(page, served, far_apart_runs, tmp_path):
    store = served.studio.store
    tab(page, "Runs")
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





@pytest.mark.parametrize("elem_id, value, message", [
    ("setting-steps", 0, "steps=0 is not allowed"),
    ("prompts", "", "prompts=[] is not allowed"),
    ("seeds", "7-2", "seeds='7-2' is not allowed: a range low-high"),
    ("seeds", "lucky", "seeds='lucky' is not allowed"),
    ("setting-height", 33, "height=33 is not allowed: a multiple of"),
])
def test_bad_input_shows_a_readable_message_in_the_page(page, elem_id, value, message, bad_inputs):
    set_value(page, "setting-steps", 10)
    set_value(page, "setting-height", 32)
    set_value(page, "seeds", "0")
    set_value(page, "prompts", "grinning face")
    set_value(page, elem_id, value)
    page.click("#generate-btn")
    # read in the same step that finds it, once it has faded in: the toast dismisses itself
    shown = page.wait_for_function(TOAST_JS, arg=message).json_value()
    bad_inputs.append(("UI Generate tab", f"{elem_id} = {value!r}", shown))
    assert "Traceback" not in page.inner_text("body")
    if elem_id == "setting-steps":
        page.screenshot(path=str(SHOTS / "6-bad-input.png"), full_page=True)
