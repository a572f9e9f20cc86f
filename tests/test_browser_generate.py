"""The Generate tab in Chromium at 1400x900: a form that fits the eye, progress beside the button, and a
card that compares the run with a baseline run the user pins.

The knobs sit in closed groups under a one-line summary, so the Generate button is on screen when the page
opens; a run's progress shows once, in the box beside the button; the card of a run made after pinning a
baseline gives latency ×, PSNR Δ and memory Δ against it, and never reads ``nan``, ``None`` or a raw dict.
Saves ``1-generate-first-load.png`` (the viewport as the page opens) and ``1-generate.png`` (the whole
page after a run against a pinned baseline). Waits are on conditions in the page, never fixed sleeps.
"""

import re

from browser_kit import RUN_MS, SHOTS, VIEWPORT, add_run, images_loaded, needs_chromium, playwright, set_value

pytestmark = needs_chromium
expect = playwright.expect if playwright else None

# every status tracker that shows progress (a bar or a timer) is recorded by the id of the component it sits in
WATCH_PROGRESS_JS = """() => {
  window.__progressOn = new Set();
  const look = () => document.querySelectorAll('[data-testid=status-tracker]').forEach(t => {
    if (t.querySelector('.progress-text, .progress-level, .meta-text')) {
      window.__progressOn.add((t.closest('[id]') || {id: '?'}).id);
    }
  });
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


def _card_is_readable(text: str) -> None:
    for bad in (r"\bnan\b", r"\bNone\b", r"\{", r"\}"):
        assert not re.search(bad, text), (bad, text)


def _pin(page, run_id: int) -> None:
    """Pick a run in the Baseline run dropdown (its choices arrive when it is focused)."""
    page.locator("#baseline-run input").click()
    page.get_by_role("option", name=re.compile(rf"^{run_id}: ")).click()
    expect(page.locator("#baseline-run input")).to_have_value(re.compile(rf"^{run_id}: "))


def test_the_generate_button_is_in_view_on_first_load_under_closed_knob_groups(page):
    assert page.evaluate("window.scrollY") == 0
    box = page.locator("#generate-btn").bounding_box()
    assert box is not None
    assert 0 <= box["y"] and box["y"] + box["height"] <= VIEWPORT["height"], box
    assert 0 <= box["x"] and box["x"] + box["width"] <= VIEWPORT["width"], box
    # the knobs are grouped and closed; one line says that none is on
    expect(page.locator("#active-knobs")).to_contain_text("Active: none")
    for group in ("sampling", "caching-tokens", "precision-quantization", "compile-memory"):
        expect(page.locator(f"#group-{group}")).to_be_visible()
    for hidden in ("use-deepcache", "setting-sampler", "setting-knobs-quantization-scheme"):
        expect(page.locator(f"#{hidden}")).to_be_hidden()
    page.screenshot(path=str(SHOTS / "1-generate-first-load.png"))


def test_the_active_line_names_the_knobs_turned_on(page):
    page.locator("#group-caching-tokens").get_by_text("Caching & tokens").click()
    page.locator("#use-deepcache input").check()
    expect(page.locator("#active-knobs")).to_contain_text("DeepCache N=3")
    set_value(page, "setting-knobs-deepcache-interval", 5)
    expect(page.locator("#active-knobs")).to_contain_text("DeepCache N=5")
    page.locator("#group-sampling").get_by_text("Sampling").click()
    page.locator("#setting-sampler input").click()
    page.get_by_role("option", name="DPM++ 2M", exact=True).click()
    expect(page.locator("#active-knobs")).to_contain_text("Active: DPM++ 2M · DeepCache N=5")
    # choices read as words, and are not cut off
    page.locator("#group-precision-quantization").get_by_text("Precision & quantization").click()
    scheme = page.locator("#setting-knobs-quantization-scheme input")
    expect(scheme).to_have_value("int8 weight-only")
    assert scheme.evaluate("e => e.scrollWidth <= e.clientWidth"), "the dropdown's value is cut off"


def test_progress_shows_beside_the_button_and_the_card_compares_with_the_pinned_baseline(page, served):
    store = served.studio.store
    baseline = add_run(served, 8)  # also loads the model and makes the reference these runs share
    _pin(page, baseline["id"])
    expect(page.locator("#metrics-card")).to_contain_text("Generate to see")  # nothing shown yet: nothing to compare
    set_value(page, "setting-steps", 4)
    page.locator("#measurement").get_by_text("Measurement").click()
    set_value(page, "repeats", 1)
    page.evaluate(WATCH_PROGRESS_JS)
    n = store.db["runs"].count
    page.click("#generate-btn")
    card = page.locator("#metrics-card")
    expect(card).to_contain_text(f"Run {n + 1}: ok", timeout=RUN_MS)
    # the progress showed once, beside the button, and nowhere else
    assert page.evaluate("[...window.__progressOn]") == ["generate-progress"]
    expect(card).to_contain_text(f"Against the baseline, run {baseline['id']}")
    text = card.inner_text()
    assert re.search(r"\d+\.\d\d× the baseline's latency", text), text
    assert re.search(r"PSNR [+−]\d+\.\d\d dB", text) and re.search(r"peak memory [+−]\d+\.\d MiB", text), text
    assert any(word in text for word in ("within noise", "faster", "slower")), text
    assert "Breakdown" in text and "reference (DPM++ 2M, 10 steps, fp32)" in text
    _card_is_readable(text)
    # the time bar and the run's image beside its reference are drawn in the card
    expect(card.locator("[title='time breakdown of the median pass'] span")).to_have_count(4)
    images_loaded(page, "#metrics-card img", 2)
    images_loaded(page, "#gallery img")
    # pinning the shown run itself redraws the card at once
    _pin(page, n + 1)
    expect(card).to_contain_text("this is the pinned baseline")
    _pin(page, baseline["id"])
    expect(card).to_contain_text(f"Against the baseline, run {baseline['id']}")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "1-generate.png"), full_page=True)


def test_cancel_stops_a_running_generation_and_the_page_says_so(page, served):
    """A generation the user no longer wants stops after the denoiser step in progress, is recorded
    ``cancelled`` with the reason, and the page says which run was cancelled."""
    store = served.studio.store
    set_value(page, "setting-steps", 800)
    page.locator("#measurement").get_by_text("Measurement").click()
    set_value(page, "warmup", 20)
    set_value(page, "repeats", 100)  # within the caps, and hours on this machine: only Cancel ends it
    n = store.db["runs"].count
    page.click("#generate-btn")
    running = lambda: (rows := store.runs()) and len(rows) > n and rows[-1]["status"] == "running"  # noqa: E731
    expect(page.locator("#generate-progress")).to_contain_text("warm-up", timeout=RUN_MS)
    assert running()
    page.click("#cancel-generate")
    expect(page.locator("body")).to_contain_text(f"run {n + 1} was cancelled: cancelled by the user (Cancel)",
                                                 timeout=RUN_MS)
    row = store.get_run(n + 1)
    assert row["status"] == "cancelled" and row["error"].startswith("cancelled by the user (Cancel) (")
    assert served.studio.service.device.admitted == 0
