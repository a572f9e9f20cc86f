"""The Sweep tab in a real Chromium on the embedded model: the check that follows every change, "off" on a
knob's axis, recorded sweeps and the sweep filters that follow a sweep without a reload, and a grid cell
that opens its images at full size.

One server for the module (``browser_kit``); runs are cheap: one prompt, one seed, 2 to 4 steps, one
warm-up call and one timed repeat. Every wait is on a condition in the page.
"""

import threading

from browser_kit import RUN_MS, SHOTS, needs_chromium, playwright, set_value, tab

pytestmark = needs_chromium

BASE = {"model": "emoji-sd", "prompts": ["grinning face"], "seeds": [0], "warmup": 1, "repeats": 1}


def pick(page, elem_id: str, label: str) -> None:
    """Choose ``label`` in a dropdown as a person does: open it, type to filter, click the option."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(label)
    page.locator("ul[role=listbox] li", has_text=label).first.click()
    playwright.expect(box).to_have_value(label)


def cheap_form(page, steps: int) -> None:
    """The Generate form as the sweeps here use it: one prompt, one seed, ``steps`` steps, one timed repeat."""
    set_value(page, "prompts", "grinning face")
    set_value(page, "seeds", "0")
    set_value(page, "setting-steps", steps)
    page.locator("#measurement").get_by_text("Measurement").first.click()
    set_value(page, "repeats", 1)


def sweep_in_background(served, steps: list[int]) -> threading.Thread:
    """A sweep started outside this page (another session, a script), run to its end in a thread."""
    sweep = {"name": f"background {steps}", "base": BASE, "grid": {"steps": steps}}
    worker = threading.Thread(target=served.studio.service.run_sweep, args=(sweep,),
                              kwargs={"new": True, "progress": False}, daemon=True)
    worker.start()
    return worker


def test_a_corrected_value_clears_the_error_at_once_and_the_spec_follows(page):
    tab(page, "Sweep")
    estimate = page.locator("#sweep-estimate")
    playwright.expect(estimate).to_contain_text("4 runs")
    set_value(page, "values-y", "DDIM, Foo")
    playwright.expect(estimate).to_contain_text("Cannot run this grid yet: sampler = 'Foo' is not allowed")
    set_value(page, "values-y", "DDIM, Euler")  # nothing else is typed: the check itself clears the message
    playwright.expect(estimate).to_contain_text("4 runs")
    playwright.expect(estimate).not_to_contain_text("Cannot run")
    # the axis and its values changed back to back: the newest check always lands last
    pick(page, "axis-y", "guidance")
    set_value(page, "values-y", "1, 2.5")
    playwright.expect(estimate).to_contain_text("4 runs")
    playwright.expect(estimate).not_to_contain_text("Cannot run")
    # a base setting on the Generate tab is part of the check too
    tab(page, "Generate")
    set_value(page, "seeds", "lucky")
    tab(page, "Sweep")
    playwright.expect(estimate).to_contain_text("Cannot run this grid yet: seeds = 'lucky'")
    tab(page, "Generate")
    set_value(page, "seeds", "0, 1")
    tab(page, "Sweep")
    playwright.expect(estimate).to_contain_text("4 runs")
    # the spec is shown before the start, as a YAML preset, and follows the inputs
    set_value(page, "sweep-question", "Where does guidance stop paying?")
    page.locator("#sweep-spec-box").get_by_text("Sweep spec as YAML").click()
    spec = page.locator("#sweep-spec")
    playwright.expect(spec).to_contain_text("# Question: Where does guidance stop paying?")
    playwright.expect(spec).to_contain_text("guidance: [1.0, 2.5]")
    playwright.expect(spec).to_contain_text("seeds: [0, 1]")


def test_off_on_a_knob_axis_puts_the_baseline_in_the_same_grid(page, served):
    store = served.studio.store
    cheap_form(page, 4)
    tab(page, "Sweep")
    pick(page, "axis-x", "DeepCache: interval")
    set_value(page, "values-x", "off, 2")
    pick(page, "axis-y", "(none)")
    playwright.expect(page.locator("#sweep-estimate")).to_contain_text("2 runs")
    page.click("#start-sweep")
    playwright.expect(page.locator("#sweep-status")).to_contain_text("finished", timeout=RUN_MS)
    headers = page.locator("#sweep-grid th").all_inner_texts()
    assert "DeepCache: interval = off" in headers and "DeepCache: interval = 2" in headers
    sweep = store.sweeps()[-1]
    off, on = sorted(store.sweep_runs(sweep["id"]), key=lambda r: r["sweep_index"])
    assert (off["status"], on["status"]) == ("ok", "ok")
    assert off["knobs"] == {} and on["knobs"]["deepcache"]["interval"] == 2
    # the "off" cell is the plain run: the same configuration as a run of the form without the knob
    plain = served.studio.service.run({**BASE, "steps": 4, "warmup": 0})  # the form's warm-up: auto
    assert plain["config_hash"] == off["config_hash"]
    text = page.inner_text("#sweep-grid")
    assert "DeepCache N=2" in text and "nan" not in text and "None" not in text and "{" not in text
    page.screenshot(path=str(SHOTS / "2-sweep-off.png"), full_page=True)


def test_recorded_sweeps_and_filters_follow_a_sweep_without_a_reload(page, served):
    tab(page, "Sweep")  # the page stays open throughout: never reloaded
    worker = sweep_in_background(served, [2, 3])
    worker.join(RUN_MS / 1000)
    assert not worker.is_alive()
    sweep = served.studio.store.sweeps()[-1]
    label = f"{sweep['id']}: {sweep['name']} (done, 2 runs)"
    lists(page, page.locator("#sweep-pick input"), label)
    tab(page, "Runs")
    lists(page, dropdown(page, "Sweep"), label)
    tab(page, "Frontier")
    lists(page, dropdown(page, "Sweep"), label)
    # the Runs tab's Refresh brings a sweep in at once, whatever the poll does
    worker = sweep_in_background(served, [2, 4])
    worker.join(RUN_MS / 1000)
    newest = served.studio.store.sweeps()[-1]
    tab(page, "Runs")
    page.get_by_role("button", name="Refresh").click()
    lists(page, dropdown(page, "Sweep"), f"{newest['id']}: {newest['name']} (done, 2 runs)")


def dropdown(page, label: str):
    """The input of the dropdown labelled ``label`` in the open tab."""
    return page.get_by_label(label, exact=True).locator("visible=true").first


def lists(page, box, label: str) -> None:
    """Open a dropdown and wait until it lists ``label`` (an open list follows its choices as they change)."""
    box.click()
    playwright.expect(page.locator("ul[role=listbox] li", has_text=label)).to_be_visible()
    page.keyboard.press("Escape")


def test_a_click_on_a_grid_cell_opens_its_images_at_full_size(page, served):
    worker = sweep_in_background(served, [3, 4])
    worker.join(RUN_MS / 1000)
    sweep = served.studio.store.sweeps()[-1]
    tab(page, "Sweep")
    pick(page, "sweep-pick", f"{sweep['id']}: {sweep['name']} (done, 2 runs)")
    cells = page.locator("#sweep-grid td[data-run-id]")
    playwright.expect(cells).to_have_count(2)
    assert page.locator("#sweep-grid img").first.get_attribute("width") == "128"
    page.locator("#thumb-size").get_by_text("256").click()
    playwright.expect(page.locator("#sweep-grid img").first).to_have_attribute("width", "256")
    cells.nth(1).click()
    gallery = page.locator("#grid-cell img")
    playwright.expect(gallery.first).to_be_visible()
    playwright.expect(page.locator("#grid-cell")).to_contain_text("full size")
    page.wait_for_function("() => [...document.querySelectorAll('#grid-cell img')].some(i => i.naturalWidth >= 512)")
    page.screenshot(path=str(SHOTS / "2-sweep-cell.png"), full_page=True)
