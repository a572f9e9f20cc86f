"""The studio served for real and driven through its named API with ``gradio_client``."""

import json
import os

import pandas as pd
import pytest
from live import free_port, wait_until

from app import compare
from studio_core.store.store import RunStore

REF = {"sampler": "DPM++ 2M", "steps": 6}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_pipeline_dir):
    """The app on a free port over a fresh study folder; yields (client, store, model folder)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client

    from app.layout import build_demo

    data_dir = tmp_path_factory.mktemp("study")
    demo = build_demo(str(tiny_pipeline_dir), data_dir, reference=REF)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False,
                    download_files=str(tmp_path_factory.mktemp("downloads")))
    store = RunStore(data_dir)
    yield client, store, str(tiny_pipeline_dir)
    store.close()
    demo.close()


def _spec(model, **kw):
    return {"model": model, "prompts": ["grinning face"], "seeds": [0, 1], "steps": 2, "guidance": 2.0,
            "repeats": 1, **kw}


def test_generate_returns_images_and_a_card_and_logs_a_row(served):
    client, store, model = served
    before = store.db["runs"].count
    gallery, card = client.predict(_spec(model, sampler="Euler"), api_name="/generate")
    assert len(gallery) == 2 and all(os.path.isfile(item["image"]) for item in gallery)
    assert [item["caption"] for item in gallery] == ["grinning face · seed 0", "grinning face · seed 1"]
    assert "ms median of 1 timed repeat (" in card and "PSNR" in card and "Setup" in card
    assert store.db["runs"].count == before + 1
    row = store.runs()[-1]
    assert row["status"] == "ok" and row["sampler"] == "Euler" and f"Run {row['id']}: ok" in card


def test_a_2x2_sweep_logs_four_runs_and_returns_the_annotated_grid(served):
    client, store, model = served
    sweep = {"name": "client 2x2", "base": _spec(model, seeds=[0]), "grid": {"steps": [2, 3],
                                                                             "sampler": ["DDIM", "Euler"]},
             "reference": REF}
    grid, status = client.predict(sweep, False, api_name="/sweep")
    assert "finished" in status and "4 runs now" in status
    sweep_id = store.sweeps()[-1]["id"]
    rows = store.sweep_runs(sweep_id)
    assert sorted(r["sweep_index"] for r in rows) == [0, 1, 2, 3] and {r["status"] for r in rows} == {"ok"}
    assert grid.count("data-sweep-index") == 4 and grid.count("<img") == 4
    assert grid.count(" ms</b>") == 4 and grid.count("PSNR") == 4 and grid.count("SSIM") == 4
    assert "steps = 3" in grid and "sampler = Euler" in grid
    assert "DDIM (model default)" in grid and "did nothing" not in grid  # DDIM on a DDIM model: the baseline
    assert grid.count('width="128"') == 4  # thumbnails at the page's default size
    small = client.predict(sweep_id, 64, api_name="/sweep_grid")  # any recorded sweep, at another size
    assert small.count('width="64"') == 4 and small.count("data-run-id") == 4
    with pytest.raises(Exception, match="thumbnail size '1000': one of 64, 128, 256 px"):
        client.predict(sweep_id, 1000, api_name="/sweep_grid")


def test_csv_export_downloads_the_filtered_rows(served):
    client, store, _model = served
    path = client.predict("ok", "(all)", "(all)", api_name="/export_csv")
    frame = pd.read_csv(path)
    ok = store.runs("status = 'ok'")
    assert sorted(frame["id"]) == [r["id"] for r in ok] and len(frame) >= 5
    assert {"config_json", "latency_median_ms", "psnr", "knob_report"} <= set(frame.columns)
    table, csv_path = client.predict("ok", "(all)", "(all)", api_name="/runs")
    assert len(pd.read_csv(csv_path)) == len(frame)


def test_frontier_compare_and_runs_read_as_text_over_the_api(served):
    client, store, model = served
    for kw in ({"sampler": "DDIM"}, {"sampler": "Euler", "steps": 3, "repeats": 3}):
        client.predict(_spec(model, **kw), api_name="/generate")
    ids = [r["id"] for r in store.runs("status = 'ok'")][-2:]
    # the colour and symbol names the API has always taken still work; the spread toggle comes last
    plot = client.predict("psnr", "latency_median_ms", "knobs_label", "height", "(all)", "(all)", "(all)", [], False,
                          True, api_name="/plot_frontier")
    figure = json.loads(plot["plot"])
    points = [t for t in figure["data"] if t.get("mode") == "markers"]
    hovers = [h for t in points for h in t["hovertext"]]
    assert hovers and not any(bad in h for h in hovers for bad in ("nan", "None", "{"))
    assert {t["name"] for t in points} >= {"no knobs / 32×32"} and any(t["error_x"]["array"] for t in points)
    view, settings, deltas = client.predict(ids, api_name="/compare_runs")
    assert compare.SCALE_TEXT in view and "(baseline)" in view
    cells = [c for row in settings["data"] + deltas["data"] for c in row]
    assert not any(bad in c for c in cells for bad in ("nan", "None", "{", "e+", "-0%")), cells
    assert [row[0] for row in deltas["data"]][:1] == ["median latency"] and " ms (" in deltas["data"][0][2]
    view, _settings, _deltas = client.predict(ids[:1], api_name="/compare_runs")
    assert compare.EMPTY in view
    table, _csv = client.predict("ok", "(all)", "(all)", api_name="/runs")
    assert table["headers"][:4] == ["run", "configuration", "steps", "median latency (ms)"]
    assert sorted(int(r[0]) for r in table["data"])[-2:] == ids


@pytest.mark.parametrize("change, message", [
    ({"steps": 0}, "steps=0 is not allowed: a whole number from 1 to 1000"),
    ({"prompts": []}, "prompts=[] is not allowed"),
    ({"sampler": "Eular"}, "sampler='Eular' is not allowed"),
    ({"model": "/no/such/folder"}, "model folder not found"),
])
def test_bad_input_comes_back_as_a_readable_error(served, change, message):
    client, store, model = served
    before = store.db["runs"].count
    with pytest.raises(Exception, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        client.predict({**_spec(model), **change}, api_name="/generate")
    assert "Traceback" not in str(err.value)
    assert store.db["runs"].count == before


def test_cancel_stops_a_sweep_between_runs(served):
    client, store, model = served
    sweep = {"name": "to cancel", "base": _spec(model, seeds=[0], repeats=2),
             "grid": {"steps": [2, 3, 4], "guidance": [1.0, 2.0]}, "reference": REF}
    job = client.submit(sweep, False, api_name="/sweep")
    sweep_id = wait_until(lambda: [s["id"] for s in store.sweeps() if s["name"] == "to cancel"],
                          what="the sweep to be recorded")[0]
    wait_until(lambda: store.sweep_runs(sweep_id), what="the sweep's first run to start")
    assert "Cancelling" in client.predict(api_name="/cancel_sweep")
    grid, status = job.result(timeout=600)
    assert "cancelled" in status
    runs = store.sweep_runs(sweep_id)
    assert 1 <= len(runs) < 6 and all(r["status"] == "ok" for r in runs)  # the run in progress finished
    assert store.get_sweep(sweep_id)["status"] == "cancelled"
