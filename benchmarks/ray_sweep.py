"""The sampler shootout on a Ray cluster of this machine: 2 CPU workers of 1 thread, then a worker killed mid-cell,
then the driver killed, each ending with every cell finished exactly once.

A Ray cluster is started here (``ray start --head --num-cpus 2``) and the studio's own command line runs the sweep on
it, each scenario on a fresh study::

    python -m studio_core sweep presets/sampler-shootout.yaml --ray auto --cpus-per-task 1

* **in process**: the same sweep without Ray (this process, torch's default threads), for comparison;
* **Ray**: the sweep as it is;
* **worker killed**: one Ray worker process running a cell is killed (SIGKILL) once 4 cells are done;
* **driver killed**: the command is killed (SIGKILL) once 10 cells are done, then run again, which resumes.

The study is then read from outside: finished runs per cell (none lost, none twice), interrupted rows and why, the
references made (one per study: made once, shared by both workers) and where each run ran.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import ROOT, add_publish_args, check_tree, print_table, publish  # noqa: E402
from benchmarks.dispatch_scale import RAY, stop_cluster, task_processes  # noqa: E402

PRESET = "presets/sampler-shootout.yaml"


def rows(db: Path) -> list[dict]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(
            "SELECT id, sweep_index, status, error, node, worker_device, dispatch, shared_cpu, threads, psnr, "
            "latency_median_ms, reference_id, created_at, finished_at FROM runs")]
    except sqlite3.OperationalError:  # the schema is being made
        return []
    finally:
        conn.close()


def refs(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM refs").fetchone()[0]
    finally:
        conn.close()


def ok_count(db: Path) -> int:
    return sum(1 for r in rows(db) if r["status"] == "ok")


def sweep_command(data: Path, ray: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "studio_core", "--data-dir", str(data), "sweep", PRESET]
    if ray:
        cmd += ["--ray", "auto", "--cpus-per-task", "1"]
    return subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the sweep failed ({proc.returncode}): {err[-2000:]}")


def scenario(name: str, data: Path, cells: int) -> dict:
    t0 = time.time()
    extra: dict = {}
    if name == "in process":
        finish(sweep_command(data, ray=False))
    elif name == "Ray":
        finish(sweep_command(data, ray=True))
    elif name == "worker killed":
        proc = sweep_command(data, ray=True)
        while ok_count(data / "studio.db") < 4:
            time.sleep(0.2)
        while not (victims := task_processes()):
            time.sleep(0.05)
        os.kill(victims[0].pid, signal.SIGKILL)
        extra["killed_pid"] = victims[0].pid
        finish(proc)
    else:
        first = sweep_command(data, ray=True)
        while ok_count(data / "studio.db") < 10:
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait()
        extra["driver_killed_at_ok"] = ok_count(data / "studio.db")
        finish(sweep_command(data, ray=True))
    wall = time.time() - t0
    found = rows(data / "studio.db")
    done: dict[int, int] = {}
    for r in found:
        if r["status"] in ("ok", "failed"):
            done[r["sweep_index"]] = done.get(r["sweep_index"], 0) + 1
    ok = [r for r in found if r["status"] == "ok"]
    return {"wall_s": wall, "rows": len(found), "ok": len(ok),
            "lost": sum(1 for i in range(cells) if i not in done), "twice": sum(1 for n in done.values() if n > 1),
            "interrupted": [r["error"] for r in found if r["status"] == "interrupted"],
            "references": refs(data / "studio.db"), "workers": sorted({str(r["worker_device"]) for r in ok}),
            "shared_cpu": sorted({r["shared_cpu"] for r in ok}, key=str), "threads": sorted({r["threads"] for r in ok}),
            "psnr": {r["sweep_index"]: r["psnr"] for r in ok}, **extra}


def main() -> int:
    p = add_publish_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    a = p.parse_args()
    tree = check_tree(a.dirty)
    from studio_core.study.sweep import load_preset

    cells = len(load_preset(ROOT / PRESET))
    stop_cluster()
    subprocess.run([RAY, "start", "--head", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = {}
    try:
        with tempfile.TemporaryDirectory(prefix="ray-sweep-") as tmp:
            for name in ("in process", "Ray", "worker killed", "driver killed"):
                print(f"{name} ...", file=sys.stderr)
                out[name] = scenario(name, Path(tmp) / name.replace(" ", "-"), cells)
                print(json.dumps({k: v for k, v in out[name].items() if k != "psnr"}), file=sys.stderr)
    finally:
        stop_cluster()
    import ray

    base = out["in process"]["psnr"]
    table_rows = []
    for name, r in out.items():
        diff = max(abs(r["psnr"][i] - base[i]) for i in base if i in r["psnr"]) if name != "in process" else 0.0
        table_rows.append([name, str(cells), str(cells - r["lost"] - r["twice"]), str(r["lost"]), str(r["twice"]),
                           str(len(r["interrupted"])), str(r["references"]), ", ".join(r["workers"]),
                           ", ".join(map(str, r["threads"])), ", ".join(map(str, r["shared_cpu"])),
                           f"{r['wall_s']:.0f}",
                           "" if name == "in process" else f"{diff:.3f}"])
    table = print_table(["scenario", "cells", "finished once", "lost", "twice", "interrupted rows", "references made",
                         "worker device", "threads", "shared CPU", "wall (s)", "max |ΔPSNR| vs in process (dB)"],
                        "lrrrrrrlrrrr", table_rows)
    setup = {"preset": PRESET, "cells": cells, "ray": ray.__version__, "cpu_count": os.cpu_count()}
    setup_text = (f"Setup: `{PRESET}` ({cells} cells, emoji-8, seed 0, 1 warm-up, 3 repeats, reference DPM++ 2M at "
                  f"200 steps) through `python -m studio_core sweep`; a local Ray {ray.__version__} cluster "
                  f"(`ray start --head --num-cpus 2`) on {os.cpu_count()} cores, `--ray auto --cpus-per-task 1`: 2 "
                  f"workers of 1 torch thread. Commit {tree['commit'][:10]}.")
    print(setup_text)
    notes = [f"Interrupted rows, {name}: " + "; ".join(sorted(set(r["interrupted"])))
             for name, r in out.items() if r["interrupted"]]
    ray_psnr = out["Ray"]["psnr"]
    among = max(abs(r["psnr"][i] - ray_psnr[i]) for name, r in out.items() if name != "in process"
                for i in ray_psnr if i in r["psnr"])
    notes.append("ΔPSNR against the in-process sweep: that one ran on torch's default threads, the workers on 1 "
                 "each, and float sums depend on the thread count. Among the three Ray scenarios the largest "
                 f"PSNR difference of a cell is {among:.4f} dB.")
    publish("ray_sweep", setup, {name: [r["wall_s"]] for name, r in out.items()}, table, setup_text=setup_text,
            notes=notes, scenarios=out)
    return 0 if all(not r["lost"] and not r["twice"] for r in out.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
