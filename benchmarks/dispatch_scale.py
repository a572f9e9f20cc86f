"""Sweeps on Ray at simulated scale: many small CPU workers, a stand-in engine, workers and the driver killed.

No cluster is at hand, so this starts a Ray cluster on this machine (``ray start --head --num-cpus W``) and runs a
sweep of N cells through the studio's real dispatch code (``studio_core.study.dispatch.RayCluster`` and
``run_cells``, the driver writing a real SQLite study) with the workers' stand-in engine: each cell sleeps a fixed
time and returns a made-up row, so no model runs and the figures are the dispatch's own.

Two runs, each on a fresh study:

* **clean**: no faults. Throughput in the steady part (the 10th to the 90th percentile of finish times) against
  the ideal W / cost, and the dispatch overhead per cell that the gap amounts to: W / throughput - cost.
* **faults**: the same sweep while ``--kill-fraction`` of the W workers are killed (SIGKILL) mid-task, spread over
  the run, and the driver is killed once (SIGKILL at 40% done) and started again, which resumes the sweep.

Then the study is checked from outside: every cell has exactly one finished run (none lost, none twice), and the
interrupted rows name why.

    .venv/bin/python benchmarks/dispatch_scale.py                  # 64 workers, 2,000 cells of 1 s
    .venv/bin/python benchmarks/dispatch_scale.py --workers 8 --cells 200 --dirty   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import ROOT, add_publish_args, check_tree, print_table, publish  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


def stand_in_sweep(cells: int) -> dict:
    """``cells`` cells of the embedded model differing in steps and guidance (the stand-in never loads it)."""
    steps = list(range(1, 51))
    guidance = [round(1 + 0.25 * i, 2) for i in range(-(-cells // len(steps)))]
    return {"name": f"stand-in-{cells}", "base": {"model": "emoji-sd", "prompt_set": "emoji-4", "seeds": [0],
                                                  "warmup": 0, "repeats": 1},
            "grid": [{"guidance": guidance, "steps": steps}]}


def driver(address: str, data: str, cells: int, ms: int) -> int:
    """One driver process: the sweep through ``RayCluster`` on the stand-in engine; prints a JSON summary."""
    from studio_core.store.store import RunStore
    from studio_core.study.dispatch import RayCluster
    from studio_core.study.sweep import run_sweep, sweep_from_dict

    sweep = sweep_from_dict(stand_in_sweep(cells))
    sweep = dataclasses.replace(sweep, cells=sweep.cells[:cells], specs=sweep.specs[:cells])
    store = RunStore(data)
    started = time.time()
    cluster = RayCluster(address, engine=f"stand-in:{ms}")
    connected = time.time()
    try:
        out = run_sweep(None, sweep, store=store, backend=cluster, progress=False)
    finally:
        cluster.close()
    print(json.dumps({**out, "slots": cluster.slots, "connect_s": connected - started,
                      "sweep_s": time.time() - connected}))
    return 0


def start_cluster(workers: int) -> str:
    port = 6390 + random.randrange(500)
    subprocess.run([RAY, "start", "--head", f"--num-cpus={workers}", f"--port={port}", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return "auto"  # the cluster this machine runs (an explicit address would also need its token: see the README)


def stop_cluster() -> None:
    subprocess.run([RAY, "stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def task_processes() -> list:
    """Ray worker processes executing a studio cell now (Ray titles them ``ray::ray_cell``)."""
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::ray_cell"):
            out.append(p)
    return out


def finished_rows(db: Path) -> list[tuple]:
    import sqlite3

    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT sweep_index, status, finished_at, error FROM runs").fetchall()
    finally:
        conn.close()


def check(db: Path, cells: int) -> dict:
    rows = finished_rows(db)
    done: dict[int, int] = {}
    for index, status, _, _ in rows:
        if status in ("ok", "failed"):
            done[index] = done.get(index, 0) + 1
    statuses = [r[1] for r in rows]
    return {"rows": len(rows), "ok": statuses.count("ok"), "failed": statuses.count("failed"),
            "interrupted": statuses.count("interrupted"), "running": statuses.count("running"),
            "lost": sum(1 for i in range(cells) if i not in done), "duplicated": sum(1 for n in done.values() if n > 1),
            "interrupted_reasons": sorted({(r[3] or "")[:160] for r in rows if r[1] == "interrupted"})[:6]}


def steady(db: Path, workers: int, ms: int) -> dict:
    """Throughput between the 10th and 90th percentile of the ok runs' finish times, and the overhead it implies."""
    from datetime import datetime

    times = sorted(datetime.fromisoformat(r[2]).timestamp() for r in finished_rows(db) if r[1] == "ok")
    lo, hi = times[len(times) // 10], times[(len(times) * 9) // 10]
    n = (len(times) * 9) // 10 - len(times) // 10
    throughput = n / (hi - lo)
    ideal = workers / (ms / 1000)
    return {"throughput": throughput, "ideal": ideal, "overhead_ms": workers / throughput * 1000 - ms,
            "first_to_last_s": times[-1] - times[0]}


def run_driver(address: str, data: Path, cells: int, ms: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--driver", address, str(data), str(cells), str(ms)],
                            stdout=subprocess.PIPE, text=True, cwd=str(ROOT))


def clean_run(address: str, data: Path, cells: int, ms: int, workers: int) -> dict:
    t0 = time.time()
    proc = run_driver(address, data, cells, ms)
    out = json.loads(proc.communicate()[0].strip().splitlines()[-1])
    return {"wall_s": time.time() - t0, "driver": out, **check(data / "studio.db", cells),
            **steady(data / "studio.db", workers, ms)}


def fault_run(address: str, data: Path, cells: int, ms: int, workers: int, kills: int) -> dict:
    db = data / "studio.db"
    ok = lambda: sum(1 for r in finished_rows(db) if r[1] == "ok")  # noqa: E731
    killed: list[dict] = []
    stop = threading.Event()
    marks = [int(cells * (i + 1) / (kills + 2)) for i in range(kills)]  # spread over the run, clear of the ends

    def killer() -> None:
        rng = random.Random(0)
        for mark in marks:
            while not stop.is_set() and ok() < mark:
                time.sleep(0.2)
            while not stop.is_set():
                procs = task_processes()
                if procs:
                    p = rng.choice(procs)
                    try:
                        os.kill(p.pid, signal.SIGKILL)
                        killed.append({"pid": p.pid, "at_ok": ok()})
                        break
                    except ProcessLookupError:
                        continue
                time.sleep(0.05)

    t0 = time.time()
    first = run_driver(address, data, cells, ms)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    while ok() < int(cells * 0.4) and first.poll() is None:
        time.sleep(0.2)
    driver_killed_at = ok()
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = run_driver(address, data, cells, ms)
    out = json.loads(second.communicate()[0].strip().splitlines()[-1])
    stop.set()
    thread.join()
    return {"wall_s": time.time() - t0, "driver": out, "workers_killed": len(killed), "kills": killed,
            "driver_killed_at_ok": driver_killed_at, **check(db, cells)}


def main() -> int:
    p = add_publish_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--cells", type=int, default=2000)
    p.add_argument("--ms", type=int, default=1000, help="the stand-in's cost per cell (ms)")
    p.add_argument("--kill-fraction", type=float, default=0.1)
    p.add_argument("--driver", nargs=4, metavar=("ADDRESS", "DATA", "CELLS", "MS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.driver:
        return driver(a.driver[0], a.driver[1], int(a.driver[2]), int(a.driver[3]))
    tree = check_tree(a.dirty)
    kills = max(1, math.ceil(a.workers * a.kill_fraction))
    stop_cluster()
    address = start_cluster(a.workers)
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="dispatch-scale-") as tmp:
            print(f"clean run: {a.workers} workers, {a.cells} cells of {a.ms} ms", file=sys.stderr)
            results["clean"] = clean_run(address, Path(tmp) / "clean", a.cells, a.ms, a.workers)
            print(json.dumps(results["clean"], indent=1), file=sys.stderr)
            print(f"fault run: {kills} workers killed mid-task, the driver killed once", file=sys.stderr)
            results["faults"] = fault_run(address, Path(tmp) / "faults", a.cells, a.ms, a.workers, kills)
            print(json.dumps(results["faults"], indent=1), file=sys.stderr)
    finally:
        stop_cluster()
    import ray

    c, f = results["clean"], results["faults"]
    table = print_table(
        ["run", "cells", "workers killed", "driver killed", "finished once", "lost", "twice", "interrupted rows",
         "wall (s)", "steady throughput (cells/s)", "ideal (cells/s)", "overhead per cell (ms)"], "lrrrrrrrrrrr",
        [["clean", f"{a.cells:,}", "0", "no", f"{a.cells - c['lost'] - c['duplicated']:,}", str(c["lost"]),
          str(c["duplicated"]), str(c["interrupted"]), f"{c['wall_s']:.0f}", f"{c['throughput']:.1f}",
          f"{c['ideal']:.1f}", f"{c['overhead_ms']:.0f}"],
         ["faults", f"{a.cells:,}", f"{f['workers_killed']} of {a.workers}",
          f"once, at {f['driver_killed_at_ok']:,} done",
          f"{a.cells - f['lost'] - f['duplicated']:,}", str(f["lost"]), str(f["duplicated"]), str(f["interrupted"]),
          f"{f['wall_s']:.0f}", "", "", ""]])
    setup = {"workers": a.workers, "cells": a.cells, "stand_in_ms": a.ms, "kills": kills, "cpu_count": os.cpu_count(),
             "ray": ray.__version__, "python": sys.version.split()[0]}
    setup_text = (f"Setup: a local Ray {ray.__version__} cluster (`ray start --head --num-cpus {a.workers}`) on "
                  f"{os.cpu_count()} cores; {a.cells:,} cells of the stand-in engine ({a.ms} ms sleep each), one CPU "
                  f"slot per task, so {a.workers} at once; the driver a separate process writing a SQLite study. "
                  f"Commit {tree['commit'][:10]}.")
    print(setup_text)
    notes = [f"Overhead per cell = workers / steady throughput - {a.ms} ms; steady = the 10th to 90th percentile of "
             "finish times, so the workers' start-up is left out (the wall time includes it).",
             f"Interrupted rows in the fault run: {f['interrupted']} (the cells of the killed workers, handed out "
             "again once, and the cells in flight when the driver was killed, marked at its restart)."]
    publish("dispatch_scale", setup, {"clean_finish_s": [c["first_to_last_s"]]}, table, setup_text=setup_text,
            notes=notes, runs=results)
    return 0 if not (c["lost"] or c["duplicated"] or f["lost"] or f["duplicated"]) else 1


if __name__ == "__main__":
    sys.exit(main())
