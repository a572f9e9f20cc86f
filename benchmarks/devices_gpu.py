"""GPU check of ``sweep --devices``: the same cells in this process and on one pinned worker (``--devices cuda:0``),
each on a fresh study, with the dispatch overhead per cell and whether the images match.

Needs a CUDA device (exits 2 without one). The cells are the sampler shootout's at emoji-8 (``--cells`` of them),
so both runs make their own reference and time the same work; the overhead is what the worker costs per cell:
(wall with the worker - wall in process) / cells, the worker's start-up included once.

    .venv/bin/python benchmarks/devices_gpu.py --cells 8
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import ROOT, add_publish_args, check_tree, print_table, publish  # noqa: E402


def main() -> int:
    p = add_publish_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--cells", type=int, default=8)
    a = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("error: needs a CUDA device", file=sys.stderr)
        return 2
    tree = check_tree(a.dirty)
    from studio_core.measure.engine import Engine
    from studio_core.store.store import RunStore
    from studio_core.study.dispatch import DevicePool
    from studio_core.study.sweep import load_preset, run_sweep

    sweep = load_preset(ROOT / "presets/sampler-shootout.yaml")
    specs = [dataclasses.replace(s, device="cuda") for s in sweep.specs[:a.cells]]
    sweep = dataclasses.replace(sweep, cells=sweep.cells[:a.cells], specs=tuple(specs))
    out = {}
    with tempfile.TemporaryDirectory(prefix="devices-gpu-") as tmp:
        for name in ("in process", "--devices cuda:0"):
            store = RunStore(Path(tmp) / name.replace(" ", "-").replace(":", ""))
            t0 = time.perf_counter()
            if name == "in process":
                run_sweep(Engine(store), sweep, progress=False)
            else:
                pool = DevicePool(["cuda:0"])
                try:
                    run_sweep(None, sweep, store=store, backend=pool, progress=False)
                finally:
                    pool.close()
            wall = time.perf_counter() - t0
            frame = store.runs_frame().sort_values("sweep_index")
            out[name] = {"wall_s": wall, "ok": int((frame["status"] == "ok").sum()),
                         "images": list(frame["images"]), "latency_ms": list(frame["latency_median_ms"]),
                         "device_name": str(frame["device_name"].iloc[0])}
    base, spread = out["in process"], out["--devices cuda:0"]
    same = sum(x == y for x, y in zip(base["images"], spread["images"]))
    overhead = (spread["wall_s"] - base["wall_s"]) / a.cells * 1000
    ratios = [s / b for s, b in zip(spread["latency_ms"], base["latency_ms"]) if b]
    table = print_table(["run", "cells ok", "wall (s)", "same images as in process", "median latency ratio"],
                        "lrrrr", [["in process", str(base["ok"]), f"{base['wall_s']:.1f}", "", ""],
                                  ["--devices cuda:0", str(spread["ok"]), f"{spread['wall_s']:.1f}",
                                   f"{same} of {a.cells}", f"{sorted(ratios)[len(ratios) // 2]:.3f}"]])
    setup_text = (f"Setup: the first {a.cells} cells of presets/sampler-shootout.yaml on {base['device_name']}, each "
                  f"run on a fresh study; commit {tree['commit'][:10]}. Dispatch overhead: {overhead:.0f} ms per cell "
                  "(the worker's start-up included once).")
    print(setup_text)
    publish("devices_gpu", {"cells": a.cells, "device_name": base["device_name"]},
            {k: [v["wall_s"]] for k, v in out.items()}, table, setup_text=setup_text, overhead_ms_per_cell=overhead,
            runs={k: {kk: vv for kk, vv in v.items() if kk != "images"} for k, v in out.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
