"""Demo mode: ``python app.py --demo STUDY`` serves a finished study read-only.

A small study is made for real (two runs and a 2x1 sweep on the tiny pipeline), then served through
``app.py``'s own ``main`` and driven with ``gradio_client``: every read works, every endpoint that
would run or write answers with the banner's message, and no file of the study changes (each is
hashed before and after). The page is checked in Chromium too: banner, disabled controls, the grid.
"""

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gradio as gr
import httpx
import pandas as pd
import pytest
from live import free_port, load_app_main

from app.layout import build_demo
from studio_core.errors import StoreError
from studio_core.store.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
REF = {"sampler": "DPM++ 2M", "steps": 6}
STUDY = "emoji-study"
BANNER = f"Read-only demo of {STUDY}: generation and sweeps are off"
WRITES = ["/build_spec", "/generate", "/build_sweep", "/sweep", "/cancel_sweep"]


def _spec(model, **kw):
    return {"model": model, "prompts": ["grinning face"], "seeds": [0, 1], "steps": 2, "guidance": 2.0,
            "repeats": 1, **kw}


def fingerprint(folder: Path) -> dict:
    """Every file and folder under ``folder``: size, modification time and SHA-256 of the content."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(folder))] = (st.st_size if path.is_file() else 0, st.st_mtime_ns, digest)
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_pipeline_dir) -> Path:
    """A study folder as the studio leaves it (WAL database): two runs and a finished 2x1 sweep,
    recorded by the engine; the store closed after."""
    from studio_core.measure.engine import Engine
    from studio_core.study.sweep import run_sweep, sweep_from_dict

    data_dir = tmp_path_factory.mktemp("recorded") / STUDY
    store = RunStore(data_dir)
    engine = Engine(store)
    model = str(tiny_pipeline_dir)
    for sampler in ("Euler", "DDIM"):
        assert engine.run(_spec(model, sampler=sampler), reference=REF).status == "ok"
    sweep = sweep_from_dict({"name": "steps x sampler", "base": _spec(model, seeds=[0]),
                             "grid": {"steps": [2, 3], "sampler": ["Euler"]}, "reference": REF})
    assert run_sweep(engine, sweep, progress=False)["status"] == "done"
    store.close()
    return data_dir


@pytest.fixture(scope="module")
def study(recorded, tmp_path_factory) -> Path:
    """That study packed for hosting: ``python -m studio_core --data-dir SRC bundle OUT``."""
    out = tmp_path_factory.mktemp("hosted") / STUDY
    res = subprocess.run([sys.executable, "-m", "studio_core", "--data-dir", str(recorded), "bundle", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def demo_served(study, tmp_path_factory):
    """``app.py --demo STUDY`` in this process; yields (demo, url, client, start log, fingerprint before)."""
    from gradio_client import Client

    before = fingerprint(study)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    saved = os.environ.pop("GRADIO_TEMP_DIR", None)
    port, err = free_port(), io.StringIO()
    with contextlib.redirect_stderr(err):
        demo = load_app_main().main(["--demo", str(study), "--port", str(port)], block=False)
    url = f"http://127.0.0.1:{port}/"
    client = Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    yield demo, url, client, err.getvalue(), before
    demo.close()
    demo.studio.store.close()
    os.environ.pop("GRADIO_TEMP_DIR", None)
    if saved is not None:
        os.environ["GRADIO_TEMP_DIR"] = saved


def _page_values(client, api_name: str) -> list:
    """Every input of an endpoint at its value in the page (None where the widget starts blank)."""
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"][api_name]["parameters"]
    return [p.get("parameter_default") if p.get("parameter_has_default") else None for p in params]


def _ids(study):
    store = RunStore(study, read_only=True)
    try:
        return [r["id"] for r in store.runs()], store.sweeps()
    finally:
        store.close()


def test_the_demo_opens_the_study_read_only_without_an_engine(demo_served, study):
    demo, _url, _client, err, _before = demo_served
    assert demo.studio.service.engine is None and demo.studio.read_only and demo.studio.store.read_only
    assert f"demo of study {STUDY}" in err and "integrity check ok, 4 runs" in err


def test_every_read_works(demo_served, study):
    _demo, _url, client, _err, _before = demo_served
    ids, sweeps = _ids(study)
    table, csv_path = client.predict("(all)", "(all)", "(all)", api_name="/runs")
    assert sorted(int(r[0]) for r in table["data"]) == ids
    frame = pd.read_csv(client.predict("ok", "(all)", "(all)", api_name="/export_csv"))
    assert sorted(frame["id"]) == ids and len(pd.read_csv(csv_path)) == 4
    plot = client.predict("psnr", "latency_median_ms", "sampler", "precision", "(all)", "(all)", "(all)", [],
                          False, api_name="/plot_frontier")
    assert plot and "plot" in str(plot)
    card, gallery, config = client.predict(ids[0], api_name="/run_details")
    assert f"Run {ids[0]}: ok" in card and len(gallery) == 2 and config["sampler"] == "Euler"
    view, settings, deltas = client.predict(ids[:2], api_name="/compare_runs")
    assert view.count("<img") >= 4 and "sampler" in str(settings)
    grid = client.predict(sweeps[0]["id"], api_name="/sweep_grid")
    assert grid.count("data-sweep-index") == 2 and grid.count("<img") == 2 and "steps = 3" in grid
    assert f"Sweep {sweeps[0]['id']}: steps x sampler (done)" in grid
    with pytest.raises(Exception, match=f"run 999 does not exist in {STUDY}") as no_run:
        client.predict(999, api_name="/run_details")
    assert str(study) not in str(no_run.value)


def test_every_write_is_refused_with_the_banner_and_no_file_changes(demo_served, study, tiny_pipeline_dir):
    demo, _url, client, _err, before = demo_served
    ids, _sweeps = _ids(study)
    model = str(tiny_pipeline_dir)
    calls = {
        "/build_spec": _page_values(client, "/build_spec"), "/build_sweep": _page_values(client, "/build_sweep"),
        "/generate": (_spec(model),),
        "/sweep": ({"name": "x", "base": _spec(model), "grid": {"steps": [2, 3]}, "reference": REF}, True),
        "/cancel_sweep": (),
    }
    assert set(calls) == set(WRITES)
    for api_name, args in calls.items():
        with pytest.raises(Exception, match=BANNER) as err:
            client.predict(*args, api_name=api_name)
        assert "Traceback" not in str(err.value), api_name
    # and the reads once more, so the session has called every endpoint
    client.predict(ids[0], api_name="/run_details")
    client.predict(ids[:2], api_name="/compare_runs")
    client.predict("(all)", "(all)", "(all)", api_name="/runs")
    named = {f.api_name for f in demo.fns.values() if f.api_visibility == "public"}
    assert {w.strip("/") for w in WRITES} <= named
    assert fingerprint(study) == before  # not a byte, not a new file, not a touched time


def test_the_page_names_the_study_by_folder_never_by_server_path(demo_served, study):
    _demo, url, _client, _err, _before = demo_served
    config = httpx.get(url + "config", timeout=30).text
    assert BANNER in config and f"kept in `{STUDY}`" in config
    assert str(study) not in config and str(study.parent) not in config
    comps = {c["props"].get("elem_id"): c["props"] for c in httpx.get(url + "config", timeout=30).json()["components"]}
    assert comps["generate-btn"]["interactive"] is False and comps["start-sweep"]["interactive"] is False
    assert comps["cancel-sweep"]["visible"] is False and comps["prompts"]["interactive"] is False
    assert BANNER in comps["demo-banner"]["value"]


def test_a_study_folder_served_as_it_is_keeps_every_file(recorded):
    """Not bundled: the database is still in WAL mode. The database and every image stay byte for byte
    and untouched; SQLite may add (or touch) its empty -wal and shared-memory index beside a WAL database
    to read it."""
    sidecars = {"studio.db-shm", "studio.db-wal"}
    before = {k: v for k, v in fingerprint(recorded).items() if k not in sidecars}
    demo = build_demo(data_dir=recorded, read_only=True)
    studio = demo.studio
    try:
        ids = [r["id"] for r in studio.store.runs()]
        assert "Run " in studio.details(ids[0])[0] and studio.compare(ids[:2])[0].count("<img") >= 4
        assert len(studio.runs_table("(all)", "(all)", "(all)")[0]) == 4
        assert studio.sweep_grid(studio.store.sweeps()[0]["id"]).count("<img") == 2
        for write in (lambda: studio.generate({"model": "x"}), lambda: list(studio.run_sweep({}, False, None)),
                      lambda: studio.cancel(None)):
            with pytest.raises(gr.Error, match=BANNER):
                write()
    finally:
        studio.store.close()
    after = fingerprint(recorded)
    assert {k: v for k, v in after.items() if k not in sidecars} == before
    assert after.get("studio.db-wal", (0,))[0] == 0


def test_a_missing_study_is_refused_by_name(tmp_path):
    with pytest.raises(StoreError, match=f"study folder {tmp_path / 'gone'} does not exist"):
        build_demo(data_dir=tmp_path / "gone", read_only=True)
    assert not (tmp_path / "gone").exists()


# ------------------------------------------------------------------------------------------ the page
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/install.sh installs it)")
def test_the_demo_page_shows_the_banner_disabled_controls_and_the_grid(demo_served, study):
    playwright = pytest.importorskip("playwright.sync_api")
    _demo, url, _client, _err, before = demo_served
    shots = ROOT / "artifacts" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("#demo-banner")
        assert BANNER in page.inner_text("#demo-banner")
        page.wait_for_function("document.querySelectorAll('#frontier-plot .scatterlayer .point').length >= 4")
        page.screenshot(path=str(shots / "demo-1-frontier.png"), full_page=True)
        page.get_by_role("tab", name="Generate").click()
        page.wait_for_selector("#demo-generate-note")
        assert page.locator("#demo-banner").is_visible()
        assert page.locator("#generate-btn").is_hidden() and page.locator("#prompts").is_hidden()
        page.screenshot(path=str(shots / "demo-2-generate.png"), full_page=True)
        page.get_by_role("tab", name="Sweep").click()
        page.wait_for_function("document.querySelectorAll('#sweep-grid img').length == 2")
        assert page.locator("#demo-banner").is_visible() and page.locator("#start-sweep").is_hidden()
        assert "steps x sampler" in page.input_value("#sweep-pick input")
        assert "Sweep 1: steps x sampler (done)" in page.inner_text("#sweep-grid")
        page.screenshot(path=str(shots / "demo-3-sweep.png"), full_page=True)
        page.get_by_role("tab", name="Runs").click()
        page.wait_for_function("document.querySelectorAll('#runs-table [role=row]').length > 4")
        page.locator("#runs-table [role=row]").nth(1).locator(":scope > *").nth(1).click()
        page.wait_for_function("document.querySelector('#run-details').innerText.includes('Latency')")
        page.screenshot(path=str(shots / "demo-4-runs.png"), full_page=True)
        browser.close()
    assert fingerprint(study) == before
