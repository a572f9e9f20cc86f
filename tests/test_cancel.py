"""Work follows its client: a generation whose client goes away (page closed, request abandoned) or whose
session presses Cancel leaves the line while it waits, and stops after the denoiser step in progress while it
runs, recorded ``cancelled`` with the reason; the line counts only requests whose clients are still there.

Served for real through ``app.py``'s ``main`` (see tests/test_serving.py), with gradio_client and raw HTTP
clients that give up the way a browser tab or a script does.
"""

import json
import threading

import httpx
import pytest
from live import wait_until
from test_serving import REF, started

from app.clients import GONE
from studio_core.errors import RunCancelled, StoreError, StudioBusy
from studio_core.measure.engine import Engine
from studio_core.store.store import RunStore
from studio_core.study.service import DeviceQueue, StudyService

MAX_WAITING = 2
LONG = {"steps": 800, "sampler": "DDIM", "warmup": 20, "repeats": 100}  # within the caps, hours here: a cancel ends it


def _spec(model, **kw):
    return {"model": model, "prompts": ["grinning face"], "seeds": [0], "steps": 2, "guidance": 2.0, "repeats": 1,
            **kw}


# ------------------------------------------------------------------------------------------ in process
def test_a_stop_reason_cancels_the_run_after_the_denoiser_step_in_progress(tmp_path, tiny_pipeline_dir):
    engine = Engine(RunStore(tmp_path / "study"))
    steps: list[int] = []

    def stop():
        steps.append(1)
        return "the client went away" if len(steps) > 3 else None

    result = engine.run(_spec(str(tiny_pipeline_dir), steps=50, repeats=3), reference=REF, stop=stop)
    row = engine.store.get_run(result.run_id)
    assert result.status == row["status"] == "cancelled" and result.images is None
    assert row["error"] == "the client went away (after denoiser step 3)"  # checked before the call, then per step
    assert row["latency_median_ms"] is None and row["images"] is None and row["finished_at"]
    assert len(steps) == 4  # nothing ran after the reason was given
    # the next run on the same engine is whole: the knobs and the pipeline were left as they were
    assert engine.run(_spec(str(tiny_pipeline_dir)), reference=REF).status == "ok"
    engine.store.close()


def test_the_line_counts_only_requests_whose_clients_are_there():
    line = DeviceQueue(2)
    gone = {"a": False}
    with line.admit(lambda: GONE if gone["a"] else None), line.admit():
        with pytest.raises(StudioBusy, match=r"\(limit 2\)"):
            with line.admit():
                pass
        gone["a"] = True  # its client left: its place is free at once, before it has left the line
        assert line.admitted == 2 and line.present() == 1
        with line.admit():
            assert line.admitted == 3
    assert line.admitted == 0


def test_a_waiting_generation_whose_client_goes_leaves_the_line_and_records_nothing(tmp_path, tiny_pipeline_dir):
    service = StudyService(RunStore(tmp_path / "study"), reference=REF)
    gone, outcome = threading.Event(), {}

    def waiter():
        try:
            service.run(_spec(str(tiny_pipeline_dir)), stop=lambda: GONE if gone.is_set() else None)
        except RunCancelled as exc:
            outcome["error"] = str(exc)

    with service.device.hold("another run"):
        thread = threading.Thread(target=waiter)
        thread.start()
        wait_until(lambda: service.device.admitted == 1, what="the generation to wait in line")
        gone.set()
        thread.join(300)
    assert outcome["error"] == f"{GONE} before it started: nothing ran"
    assert service.device.admitted == 0 and service.store.run_count() == 0
    service.store.close()


# ------------------------------------------------------------------------------------------ served
@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_pipeline_dir):
    """``python app.py --data-dir D --max-waiting 2`` on the tiny pipeline; yields (demo, url, model)."""
    data_dir = tmp_path_factory.mktemp("study")
    with started(["--data-dir", str(data_dir), "--model", str(tiny_pipeline_dir),
                  "--max-waiting", str(MAX_WAITING)]) as (demo, url, _err):
        demo.studio.service.reference = REF
        yield demo, url, str(tiny_pipeline_dir)


def _client(url, tmp_path):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(tmp_path))


def _newest(store, status=None):
    rows = store.runs()
    return rows[-1] if rows and (status is None or rows[-1]["status"] == status) else None


def _join(url: str, spec: dict, session: str) -> httpx.Response:
    """A generate request as the page sends it: joined to the queue, then its events read over SSE."""
    config = httpx.get(url + "config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "generate")
    body = {"data": [spec, None], "fn_index": fn_index, "session_hash": session, "event_data": None,
            "trigger_id": None}
    r = httpx.post(url + "gradio_api/queue/join", json=body, timeout=30)
    r.raise_for_status()
    return r


def test_a_closed_page_cancels_its_running_generation_and_frees_its_place(served, tmp_path):
    demo, url, model = served
    store, device = demo.studio.store, demo.studio.service.device
    before = store.run_count()
    _join(url, _spec(model, **LONG), "closed-page")
    with httpx.Client(timeout=30) as http:
        with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": "closed-page"}) as events:
            for line in events.iter_lines():  # the stream ends at the latest with the request's outcome
                assert "process_completed" not in line, line
                if "process_starts" in line:
                    break
            wait_until(lambda: _newest(store, "running"), what="its row to be running")
        # the stream is closed here: the page is gone
    row = wait_until(lambda: _newest(store, "cancelled"), what="the run to be cancelled")
    assert row["error"].startswith(GONE + " (") and store.run_count() == before + 1
    wait_until(lambda: device.admitted == 0, what="its place in line to be freed")


def test_cancel_stops_this_sessions_generation_and_an_abandoned_waiter_never_runs(served, tmp_path, bad_inputs):
    demo, url, model = served
    store, device = demo.studio.store, demo.studio.service.device
    before = store.run_count()
    runner, waiter = _client(url, tmp_path / "a"), _client(url, tmp_path / "b")
    running = runner.submit(_spec(model, **LONG), None, api_name="/generate")
    wait_until(lambda: _newest(store, "running"), what="the first generation to run")
    waiting = waiter.submit(_spec(model, seeds=[7]), None, api_name="/generate")
    wait_until(lambda: device.admitted == 2, what="the second generation to wait in line")
    waiting.cancel()  # the script gave up on it
    wait_until(lambda: device.admitted == 1, what="the abandoned request to leave the line")
    said = runner.predict(api_name="/cancel_generation")  # the Cancel button, from the session that runs it
    assert "stops after the denoiser step in progress" in said
    row = wait_until(lambda: _newest(store, "cancelled"), what="the run to be cancelled")
    assert row["error"].startswith("cancelled by the user (Cancel) (")
    with pytest.raises(Exception, match=f"run {row['id']} was cancelled") as told:
        running.result(timeout=300)
    bad_inputs.append(("API /cancel_generation", "Cancel while a generation of 800 steps x 120 passes runs",
                       str(told.value)))
    wait_until(lambda: device.admitted == 0, what="the line to empty")
    assert store.run_count() == before + 1  # the abandoned waiter never ran: no row of seed 7
    assert all(json.loads(r["seeds"]) != [7] for r in store.raw_rows("runs"))
    # the line is whole again: a new generation runs to the end
    assert "Run " in runner.predict(_spec(model, seeds=[3]), None, api_name="/generate")[1]


def test_sigterm_stops_a_running_generation_and_records_it_cancelled(tmp_path, tiny_pipeline_dir):
    """How systemd and docker stop the server: the run in progress stops after its denoiser step and says why,
    instead of being found "running" by the next start and called a crash."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from live import ROOT, free_port

    study, port = tmp_path / "study", free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    env = {k: v for k, v in env.items() if not k.startswith("GRADIO_") or k == "GRADIO_ANALYTICS_ENABLED"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--data-dir", str(study), "--model",
                             str(tiny_pipeline_dir), "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def listening():
            assert proc.poll() is None, proc.stderr.read()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, what="the studio to listen")
        client = _client(f"http://127.0.0.1:{port}/", tmp_path / "dl")
        client.submit(_spec(str(tiny_pipeline_dir), **LONG), None, api_name="/generate")
        store = RunStore(study, read_only=True)
        wait_until(lambda: _newest(store, "running"), what="the generation to run")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(300) == 0
        row = wait_until(lambda: _newest(store, "cancelled"), what="the run to be recorded cancelled")
        assert row["error"].startswith("the server stopped (SIGTERM or Ctrl-C) (")
        store.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_sigterm_stops_a_cli_run_and_the_row_says_so(tmp_path, tiny_pipeline_dir):
    """A scheduler's ``kill`` (SIGTERM) stops a CLI run like Ctrl-C: the row is ``interrupted`` "stopped by
    SIGTERM" at once, not left ``running`` for the next start to call a crash."""
    import signal
    import subprocess
    import sys

    from live import ROOT

    study = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "studio_core", "--data-dir", str(study), "run", "--model",
                             str(tiny_pipeline_dir), "--prompt", "grinning face", "--steps", "800", "--sampler", "DDIM",
                             "--warmup", "20", "--repeats", "100"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        def running():
            assert proc.poll() is None, proc.stderr.read()
            if not (study / "studio.db").exists():
                return None
            try:
                store = RunStore(study, read_only=True)
            except StoreError:  # the CLI has made the file and not yet its tables
                return None
            try:
                return _newest(store, "running")
            finally:
                store.close()

        wait_until(running, what="the CLI run to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(300) == 128 + signal.SIGTERM
        assert "stopped by SIGTERM; the interrupted run is marked interrupted" in proc.stderr.read()
        store = RunStore(study, read_only=True)
        row = _newest(store)
        assert row["status"] == "interrupted" and row["error"] == "stopped by SIGTERM"
        store.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
