"""Command line: ``python -m studio_core {run,sweep,export,frontier,knobs,runs,bundle}``.

Every command takes ``--data-dir`` (default ``STUDIO_DATA_DIR`` or ``<project>/data``). Bad input
exits with status 2 and one line naming the field, the value and what is allowed. ``run`` and
``sweep`` reach the engine the way the page does, through ``studio_core.study.service``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from studio_core.errors import ModelLoadError, SpecError, StoreError, SweepBusy, UnsafePath

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "run": "run one configuration, time and score it, and log it",
    "sweep": "run (or resume) a YAML sweep preset with a progress bar",
    "export": "write the run log (every column) to CSV",
    "frontier": "print the Pareto-optimal runs for a quality metric against a cost",
    "runs": "print the run log",
    "knobs": "list the registered knobs, their settings, and the samplers",
    "bundle": "pack the study (or some sweeps) into a folder the studio serves read-only",
}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studio_core", description="Diffusion Efficiency Studio engine")
    p.add_argument("--data-dir", help="study folder (default: $STUDIO_DATA_DIR or <project>/data)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help=COMMANDS["run"])
    r.add_argument("--model", default="emoji-sd", help="'emoji-sd', a diffusers folder, or a cached repo id")
    r.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    r.add_argument("--prompt-set", help="a named prompt set (emoji-gallery, emoji-8, emoji-4)")
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--steps", type=int)
    r.add_argument("--sampler", default="default")
    r.add_argument("--timestep-spacing")
    r.add_argument("--guidance", type=float)
    r.add_argument("--height", type=int)
    r.add_argument("--width", type=int)
    r.add_argument("--batch-size", type=int)
    r.add_argument("--precision", default="fp32")
    r.add_argument("--device", default="auto")
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--knob", action="append", default=[], metavar="NAME.SETTING=VALUE",
                   help="a knob setting, e.g. --knob deepcache.interval=3 (repeatable)")
    r.add_argument("--json", action="store_true", help="print the stored row as JSON")

    s = sub.add_parser("sweep", help=COMMANDS["sweep"])
    s.add_argument("preset", help="a YAML preset, e.g. presets/sampler-shootout.yaml")
    s.add_argument("--new", action="store_true", help="run again even if this sweep already completed")
    s.add_argument("--dry-run", action="store_true", help="check every configuration and print the grid")

    e = sub.add_parser("export", help=COMMANDS["export"])
    e.add_argument("--csv", required=True, metavar="FILE")
    e.add_argument("--sweep", type=int, help="only runs of this sweep id")
    e.add_argument("--status", choices=["running", "ok", "failed", "interrupted"])

    f = sub.add_parser("frontier", help=COMMANDS["frontier"])
    f.add_argument("--metric", default="psnr", help="quality column (psnr, ssim, lpips, fidelity_top1, fidelity_top5)")
    f.add_argument("--cost", default="latency_median_ms",
                   help="cost column (latency_median_ms, per_image_ms, peak_mem_bytes, step_mean_ms)")
    f.add_argument("--sweep", type=int, help="only runs of this sweep id (default: all ok runs)")
    f.add_argument("--model", help="only runs of this model")
    f.add_argument("--prompt-set", help="only runs of this prompt set")

    ls = sub.add_parser("runs", help=COMMANDS["runs"])
    ls.add_argument("--sweep", type=int)
    ls.add_argument("--limit", type=int, default=50)

    sub.add_parser("knobs", help=COMMANDS["knobs"])

    b = sub.add_parser("bundle", help=COMMANDS["bundle"])
    b.add_argument("out", metavar="OUT", help="a new (or empty) folder for the bundle")
    b.add_argument("--sweep", type=int, action="extend", nargs="+", metavar="ID",
                   help="only runs of these sweep ids (default: every run)")
    b.add_argument("--archive", action="store_true", help="also write OUT.tar.gz")
    b.add_argument("--keep-paths", action="store_true",
                   help="keep host names, pids and model paths (by default they are scrubbed for sharing)")
    return p


def _spec_from_args(a) -> dict:
    knobs: dict = {}
    for item in a.knob:
        name, _, value = item.partition("=")
        if "." not in name or not _:
            raise SpecError("--knob", item, "NAME.SETTING=VALUE, e.g. deepcache.interval=3")
        knob, setting = name.split(".", 1)
        knobs.setdefault(knob, {})[setting] = _value(value)
    return {"model": a.model, "prompts": a.prompt, "prompt_set": a.prompt_set, "seeds": a.seeds, "steps": a.steps,
            "sampler": a.sampler, "timestep_spacing": a.timestep_spacing, "guidance": a.guidance,
            "height": a.height, "width": a.width, "batch_size": a.batch_size, "precision": a.precision,
            "device": a.device, "knobs": knobs, "warmup": a.warmup, "repeats": a.repeats}


SUMMARY = ["id", "status", "sampler", "steps", "guidance", "precision", "knobs_label", "latency_median_ms",
           "latency_iqr_ms", "step_mean_ms", "peak_mem_bytes", "psnr", "ssim", "fidelity_top5", "knobs_inactive",
           "error"]


def _table(frame, columns=SUMMARY) -> str:
    import pandas as pd

    cols = [c for c in columns if c in frame.columns]
    view = frame[cols].copy()
    if "peak_mem_bytes" in view:
        view["peak_mem_bytes"] = (view["peak_mem_bytes"] / 2**20).round(1)
        view = view.rename(columns={"peak_mem_bytes": "peak_mem_MiB"})
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 60,
                           "display.float_format", "{:.4g}".format):
        return view.to_string(index=False)


def cmd_run(a, store) -> int:
    from studio_core.study.service import StudyService

    row = StudyService(store).run(_spec_from_args(a), on_stage=lambda s: print(f"  {s}...", file=sys.stderr))
    if a.json:
        print(json.dumps(row, indent=2, default=str))
    else:
        import pandas as pd

        print(_table(pd.DataFrame([row])))
        for r in row.get("knob_report") or []:
            print(f"  {r['knob']}: {r['summary']}" + ("" if r["active"] else "  [did nothing]"))
        if row.get("metrics_note"):
            print(f"  note: {row['metrics_note']}")
    if row["status"] != "ok":
        print(f"error: run {row['id']} failed: {row.get('error')}", file=sys.stderr)
        return 1
    return 0


def cmd_sweep(a, store) -> int:
    from studio_core.study.sweep import load_preset

    sweep = load_preset(a.preset)
    print(f"{sweep.name}: {len(sweep)} configurations" + (f" - {sweep.question}" if sweep.question else ""),
          file=sys.stderr)
    if a.dry_run:
        for cell in sweep.cells:
            print("  " + ", ".join(f"{k}={v}" for k, v in cell.items()))
        return 0
    from studio_core.study.service import StudyService

    out = StudyService(store).run_sweep(sweep, new=a.new)
    if out.get("note"):
        print(out["note"], file=sys.stderr)
    if out["interrupted"]:
        print(f"interrupted earlier (rerun now): runs {out['interrupted']}", file=sys.stderr)
    runs = store.runs_frame(matching={"sweep_id": out["sweep_id"]})
    print(_table(runs))
    print(f"sweep {out['sweep_id']}: {out['status']}; ran {out['ran']}, already done {out['skipped']}")
    return 0


def cmd_export(a, store) -> int:
    matching = {k: v for k, v in {"sweep_id": a.sweep, "status": a.status}.items() if v is not None}
    n = store.export_csv(a.csv, matching=matching)
    print(f"wrote {n} runs to {a.csv}")
    return 0


def cmd_frontier(a, store) -> int:
    from studio_core.study.frontier import COSTS, QUALITIES, frontier_table

    if a.metric not in QUALITIES:
        raise SpecError("--metric", a.metric, f"one of {', '.join(QUALITIES)}")
    if a.cost not in COSTS:
        raise SpecError("--cost", a.cost, f"one of {', '.join(COSTS)}")
    filters = {k: v for k, v in {"model": a.model, "prompt_set": a.prompt_set}.items() if v is not None}
    front = frontier_table(store, a.cost, a.metric, sweep_id=a.sweep, filters=filters)
    if front.empty:
        print("no successful runs with both values yet")
        return 0
    print(f"Pareto front: {a.metric} ({'higher' if QUALITIES[a.metric] else 'lower'} is better) vs {a.cost}; "
          f"{len(front)} runs")
    print(_table(front, ["id", "sampler", "steps", "guidance", "precision", "knobs_label", a.cost,
                         "latency_iqr_ms", a.metric, "device_name"]))
    return 0


def cmd_runs(a, store) -> int:
    frame = store.runs_frame(matching={"sweep_id": a.sweep} if a.sweep is not None else None).tail(a.limit)
    print(_table(frame) if len(frame) else "no runs yet")
    return 0


def cmd_knobs(a, store) -> int:
    from dataclasses import fields

    from studio_core.knobs import KNOBS
    from studio_core.knobs.sampler import SAMPLERS

    for knob in sorted(KNOBS.values(), key=lambda k: k.order):
        settings = ", ".join(f.name for f in fields(knob.Settings))
        where = f"--{knob.builtin_field.replace('_', '-')}" if knob.builtin_field else f"--knob {knob.name}.SETTING=V"
        print(f"{knob.name:<12} {knob.title}: {knob.description}\n{'':<12} settings: {settings}; CLI: {where}")
    print("\nsamplers: " + ", ".join(SAMPLERS))
    return 0


def cmd_bundle(a, store) -> int:
    from studio_core.store.bundle import bundle_study

    info = bundle_study(store, a.out, a.sweep, archive=a.archive, keep_paths=a.keep_paths)
    counts = ", ".join(f"{n} {what}" for what, n in info["counts"].items())
    print(f"bundled {counts} ({_size(info['bytes'])}) into {info['path']}")
    if a.archive:
        print(f"archive: {info['archive']} ({_size(info['archive_bytes'])})")
    return 0


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def main(argv: list[str] | None = None) -> int:
    from studio_core.store.store import RunStore

    a = _parser().parse_args(argv)
    try:
        # bundle only reads its study: opened read-only, it neither migrates nor writes the source
        store = RunStore(a.data_dir, read_only=a.command == "bundle") if a.command != "knobs" else None
        return globals()[f"cmd_{a.command}"](a, store)
    except (SpecError, ModelLoadError, StoreError, SweepBusy, UnsafePath) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped; the interrupted run is marked interrupted and the sweep resumes when started again",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
