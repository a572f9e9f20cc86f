"""Sweeps spread over worker processes (``--devices``) and Ray tasks (``--ray``): the driver writes every outcome
once, a worker killed mid-cell hands its cell out again once (then it is failed with both reasons), a killed driver
resumes, references are made once and shared, and a worker without the model is refused with the path it lacks.

The real engine runs in the worker processes of one test (its results must equal an in-process sweep's, image for
image); the fault tests use the workers' fixed-cost stand-in engine, so they exercise the real dispatch, fault and
resume code in seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pandas as pd
import pytest

from studio_core.errors import SpecError
from studio_core.store.store import RunStore
from studio_core.study.dispatch import DevicePool, make_backend, parse_devices
from studio_core.study.frontier import setup_label, setups
from studio_core.study.sweep import run_sweep, sweep_from_dict
from tests.live import ROOT, wait_until


def stand_in_sweep(n: int, name: str = "stand-in") -> dict:
    """``n`` cells of the embedded model that only differ in steps (the stand-in engine never loads it)."""
    return {"name": name, "base": {"model": "emoji-sd", "prompt_set": "emoji-4", "seeds": [0], "warmup": 0,
                                   "repeats": 1}, "grid": {"steps": list(range(1, n + 1))}}


def finished_once(store: RunStore, sweep_id: int, n: int) -> pd.DataFrame:
    """The sweep's rows, after checking every cell has exactly one ok or failed run (none lost, none twice)."""
    frame = store.runs_frame(matching={"sweep_id": sweep_id})
    done = frame[frame["status"].isin(["ok", "failed"])]
    assert sorted(done["sweep_index"]) == list(range(n)), frame[["id", "sweep_index", "status", "error"]]
    assert not (frame["status"] == "running").any()
    return frame


def run_in_thread(target) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def work():
        try:
            out["result"] = target()
        except BaseException as exc:  # raised in the test below
            out["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t, out


def test_device_lists_are_checked_before_any_work():
    assert parse_devices("cuda:0, cuda:1", cuda_count=2) == ["cuda:0", "cuda:1"]
    assert parse_devices("cpu,cpu", cuda_count=0) == ["cpu", "cpu"]
    for text, count, says in [("cuda:2", 2, "cuda:0 to cuda:1"), ("cuda:0", 0, "0 CUDA devices visible"),
                              ("cuda:0,cuda:0", 1, "each GPU once"), ("gpu0", 1, "'cuda:N'"), ("", 1, "comma")]:
        with pytest.raises(SpecError, match=says):
            parse_devices(text, cuda_count=count)
    with pytest.raises(SpecError, match="not both"):
        make_backend(devices="cpu", ray="auto")
    with pytest.raises(SpecError, match="worker threads"):
        make_backend(devices="cpu", worker_threads=0)


def test_device_workers_give_what_an_in_process_sweep_gives(tmp_path, one_torch_thread):
    """Two CPU workers of the real engine: every cell once, the same images and scores as the same sweep run in
    this process on as many threads (float sums depend on the thread count), one reference made and shared, and
    the placement (node, device, shared CPU) recorded."""
    data = {"name": "two-workers", "base": {"model": "emoji-sd", "prompt_set": "emoji-4", "seeds": [0], "warmup": 0,
                                            "repeats": 1},
            "grid": {"sampler": ["DDIM", "Euler"], "steps": [3, 5]}, "reference": {"sampler": "DDIM", "steps": 8}}
    sweep = sweep_from_dict(data)
    local = RunStore(tmp_path / "local")
    from studio_core.measure.engine import Engine

    run_sweep(Engine(local), sweep, progress=False)
    store = RunStore(tmp_path / "spread")
    pool = DevicePool(["cpu", "cpu"], threads=1)
    seen = []
    try:
        out = run_sweep(None, sweep, store=store, backend=pool, progress=lambda d, t, r: seen.append((d, t)))
    finally:
        pool.close()
    assert out["status"] == "done" and out["ran"] == 4 and seen[-1] == (4, 4)
    frame = finished_once(store, out["sweep_id"], 4).sort_values("sweep_index")
    mine = local.runs_frame().sort_values("sweep_index")
    assert list(frame["status"]) == ["ok"] * 4
    assert list(frame["images"]) == list(mine["images"])  # the same PNGs, so the same hashes
    assert list(frame["psnr"].round(6)) == list(mine["psnr"].round(6))
    assert len(store.raw_rows("refs")) == 1 and set(frame["reference_id"]) == {1}
    assert store.reference_images(1).shape == local.reference_images(1).shape
    assert set(frame["dispatch"]) == {"devices"} and set(frame["shared_cpu"]) == {2}
    assert set(frame["worker_device"]) <= {"cpu (worker 1)", "cpu (worker 2)"} and set(frame["threads"]) == {1}
    assert set(frame["pid"]) == {os.getpid()}  # the driver wrote every row
    for digest in frame["images"].iloc[0].strip('[]"').split('", "'):
        store.image_bytes(digest)  # present, and its content matches its name


@pytest.mark.parametrize("family, px", [("sdxl", 64), ("flux", 32)])
def test_a_worker_drives_other_families_as_this_process_does(tmp_path, one_torch_thread, family, px):
    """A user's diffusers folder of another family (tiny SDXL, tiny Flux, built from config) on a pinned worker:
    found at its path, fingerprint checked, and the same images and scores as the same cells in this process."""
    from tiny_families import FAMILIES

    from studio_core.measure.engine import Engine

    folder = FAMILIES[family](tmp_path / family)
    data = {"name": f"{family}-worker", "base": {"model": str(folder), "prompts": ["a red heart"], "seeds": [0],
                                                 "height": px, "width": px, "warmup": 0, "repeats": 1},
            "grid": {"steps": [2, 3]}, "reference": {"steps": 4}}
    sweep = sweep_from_dict(data)
    local = RunStore(tmp_path / "local")
    run_sweep(Engine(local), sweep, progress=False)
    store = RunStore(tmp_path / "spread")
    pool = DevicePool(["cpu"], threads=1)
    try:
        out = run_sweep(None, sweep, store=store, backend=pool, progress=False)
    finally:
        pool.close()
    frame = finished_once(store, out["sweep_id"], 2).sort_values("sweep_index")
    mine = local.runs_frame().sort_values("sweep_index")
    assert list(frame["status"]) == ["ok", "ok"], list(frame["error"])
    assert list(frame["model_family"]) == list(mine["model_family"]) and list(frame["images"]) == list(mine["images"])
    assert list(frame["psnr"].round(6)) == list(mine["psnr"].round(6)) and set(frame["dispatch"]) == {"devices"}


def test_a_worker_killed_mid_cell_hands_the_cell_out_again(tmp_path):
    store = RunStore(tmp_path / "study")
    sweep = sweep_from_dict(stand_in_sweep(6))
    pool = DevicePool(["cpu", "cpu"], engine="stand-in:1500")
    thread, out = run_in_thread(lambda: run_sweep(None, sweep, store=store, backend=pool, progress=False))
    try:
        wait_until(lambda: len(pool.pids()) == 2 and (store.runs_frame()["status"] == "running").any(),
                   what="two workers with a cell running")
        os.kill(pool.pids()[0], signal.SIGKILL)
        thread.join(timeout=300)
    finally:
        pool.close()
    assert "error" not in out, out
    frame = finished_once(store, out["result"]["sweep_id"], 6)
    assert (frame["status"] == "ok").sum() == 6
    lost = frame[frame["status"] == "interrupted"]
    assert len(lost) == 1
    assert "killed by signal 9 (SIGKILL)" in lost["error"].iloc[0] and "handed out again" in lost["error"].iloc[0]


def test_a_cell_whose_worker_dies_twice_is_failed_with_both_reasons(tmp_path):
    store = RunStore(tmp_path / "study")
    sweep = sweep_from_dict(stand_in_sweep(1))
    pool = DevicePool(["cpu"], engine="stand-in:600000")
    thread, out = run_in_thread(lambda: run_sweep(None, sweep, store=store, backend=pool, progress=False))
    try:
        def running(n: int) -> bool:
            frame = store.runs_frame()
            return len(frame) == n and frame["status"].iloc[-1] == "running" and bool(pool.pids())

        for attempt in (1, 2):
            wait_until(lambda: running(attempt), what=f"attempt {attempt} running")
            os.kill(pool.pids()[0], signal.SIGKILL)
        thread.join(timeout=300)
    finally:
        pool.close()
    assert "error" not in out, out
    assert out["result"]["status"] == "done"
    frame = finished_once(store, out["result"]["sweep_id"], 1)
    assert list(frame["status"]) == ["interrupted", "failed"]
    error = frame["error"].iloc[1]
    assert error.count("killed by signal 9") == 2 and "before that" in error
    assert frame["node"].iloc[1] and frame["worker_device"].iloc[1] == "cpu"


DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from studio_core.store.store import RunStore
    from studio_core.study.dispatch import DevicePool
    from studio_core.study.sweep import run_sweep, sweep_from_dict
    from tests.test_dispatch import stand_in_sweep
    pool = DevicePool(["cpu", "cpu"], engine="stand-in:400")
    try:
        run_sweep(None, sweep_from_dict(stand_in_sweep(12)), store=RunStore({data!r}), backend=pool, progress=False)
    finally:
        pool.close()
""")


def test_a_killed_driver_resumes_without_losing_or_repeating_a_cell(tmp_path):
    data = tmp_path / "study"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(root=str(ROOT), data=str(data)), encoding="utf-8")
    driver = subprocess.Popen([sys.executable, str(script)], cwd=str(ROOT))
    try:
        wait_until(lambda: data.joinpath("studio.db").exists() and
                   (RunStore(data, read_only=True).runs_frame()["status"] == "ok").sum() >= 3,
                   what="three cells done by the first driver")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    store = RunStore(data)
    pool = DevicePool(["cpu", "cpu"], engine="stand-in:400")
    try:
        out = run_sweep(None, sweep_from_dict(stand_in_sweep(12)), store=store, backend=pool, progress=False)
    finally:
        pool.close()
    assert out["skipped"] >= 3 and out["ran"] == 12 - out["skipped"]
    frame = finished_once(store, out["sweep_id"], 12)
    assert (frame["status"] == "ok").sum() == 12
    assert len(store.sweeps()) == 1  # resumed, not started over


def test_ray_tasks_survive_a_killed_worker(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (requirements-ray.txt)")
    from studio_core.study.dispatch import RayCluster

    store = RunStore(tmp_path / "study")
    sweep = sweep_from_dict(stand_in_sweep(12))
    cluster = RayCluster("local", local_cpus=3, engine="stand-in:1500")
    try:
        assert cluster.slots == 3
        thread, out = run_in_thread(lambda: run_sweep(None, sweep, store=store, backend=cluster, progress=False))
        running = wait_until(lambda: cluster.running_pids() and
                             (store.runs_frame()["status"] == "ok").sum() >= 1 and cluster.running_pids(),
                             what="a Ray task running after the first finished")
        cell, (pid, node) = next(iter(running.items()))
        os.kill(pid, signal.SIGKILL)
        thread.join(timeout=300)
    finally:
        cluster.close()
    assert not ray.is_initialized()
    assert "error" not in out, out
    frame = finished_once(store, out["result"]["sweep_id"], 12)
    assert (frame["status"] == "ok").sum() == 12
    lost = frame[frame["status"] == "interrupted"]
    assert len(lost) >= 1 and lost["error"].str.contains("WorkerCrashedError|died").all()
    ok = frame[frame["status"] == "ok"]
    assert set(ok["dispatch"]) == {"ray"} and set(ok["shared_cpu"]) == {3} and set(ok["node"]) == {node}


def test_a_worker_without_the_model_says_which_path_it_lacks(tmp_path, tiny_pipeline_dir):
    from studio_core.measure.worker import CellWorker, model_archive
    from studio_core.spec import RunSpec, model_info

    info = model_info(str(tiny_pipeline_dir))
    missing = str(tmp_path / "elsewhere" / "pipe")
    spec = RunSpec(model=missing, prompts=("a red heart",), seeds=(0,), steps=2, height=32, width=32, warmup=0,
                   repeats=1).to_dict()
    payload = {"cell": 0, "spec": spec, "model": {"name": missing, "path": missing, "fingerprint": info.fingerprint},
               "reference": {"sampler": "DDIM", "steps": 3}}
    worker = CellWorker("cpu", 1, "cpu")
    try:
        refused = worker.run(payload)
        assert refused["status"] == "failed" and missing in refused["error"] and "shared filesystem" in refused["error"]
        shipped = worker.run({**payload, "model_archive": model_archive(tiny_pipeline_dir)})
        assert shipped["status"] == "ok", shipped["error"]
        assert len(shipped["images"]) == 1 and len(shipped["references"]) == 1
        assert shipped["results"]["model_fingerprint"] == info.fingerprint
    finally:
        worker.close()


def test_runs_timed_on_a_shared_cpu_get_a_front_of_their_own():
    rows = [{"model": "m", "device_name": "CPU x", "threads": 1, "height": 32, "width": 32, "reference_id": 1,
             "shared_cpu": s} for s in (None, 1, 2, 2)]
    groups = setups(pd.DataFrame(rows))
    assert sorted(len(g) for _, g in groups) == [2, 2]  # None and 1 (the CPU was its own) share; 2 is apart
    keys = [k for k, _ in groups]
    assert sorted(setup_label(k, keys) for k in keys) == ["CPU not shared", "CPU shared by 2 workers"]
    assert setup_label(keys[0]).count("·") == (5 if "shared" in setup_label(keys[0]) else 4)


def test_the_sweep_tab_spreads_a_sweep_and_refuses_a_bad_worker_list(tmp_path, tiny_pipeline_dir):
    import gradio as gr

    from app.handlers import parse_workers
    from app.layout import build_demo

    assert parse_workers("  ") is None and parse_workers("ray:") == {"ray": "auto"}
    assert parse_workers("ray:10.0.0.5:6379") == {"ray": "10.0.0.5:6379"}
    assert parse_workers("cuda:0,cuda:1") == {"devices": "cuda:0,cuda:1"}
    demo = build_demo(str(tiny_pipeline_dir), tmp_path / "study", reference={"sampler": "DDIM", "steps": 3})
    studio = demo.studio
    try:
        base = {"model": str(tiny_pipeline_dir), "prompts": ["red heart"], "seeds": [0], "repeats": 1, "warmup": 0}
        sweep = {"name": "spread", "base": base, "grid": {"steps": [2, 3]}}
        for bad, says in [("cuda:7", "cuda:7"), ("gpu", "'cuda:N'"), (3, "a device list")]:
            with pytest.raises(gr.Error, match=says):
                list(studio.run_sweep(sweep, False, None, 64, bad))
        assert studio.store.run_count() == 0  # refused before any work
        outputs = list(studio.run_sweep(sweep, False, None, 64, "cpu,cpu"))
        assert "Sweep" in outputs[-1][1] and "finished" in outputs[-1][1]
        frame = finished_once(studio.store, outputs[-1][2], 2)
        assert set(frame["dispatch"]) == {"devices"} and set(frame["status"]) == {"ok"}
        # the Studio's frontier reads only the columns it draws: where the run ran is one of them
        figure = studio.frontier("psnr", "latency_median_ms", "configuration", "(none)", None, None, None, [])
        hovers = " ".join(str(t) for trace in figure.data for t in (trace.hovertext or ()))
        assert "(devices)" in hovers and "timed on a CPU shared by 2 workers" in hovers
    finally:
        studio.store.close()


def test_a_hover_says_where_a_spread_run_ran_and_that_its_cpu_was_shared():
    from app.plots import hover_text

    row = {"id": 7, "steps": 4, "latency_median_ms": 100.0, "dispatch": "devices", "node": "vm",
           "worker_device": "cpu (worker 2)", "shared_cpu": 2}
    text = hover_text(row)
    assert "ran on vm · cpu (worker 2) (devices)" in text and "timed on a CPU shared by 2 workers" in text
    alone = hover_text({**row, "shared_cpu": None, "dispatch": None})
    assert "shared" not in alone and "ran on" not in alone
