"""Command line: ``python -m studio_core {run,sweep,export,frontier,knobs,runs,bundle,distill}``.

Every command takes ``--data-dir`` (default ``STUDIO_DATA_DIR`` or ``<project>/data``). Bad input
exits with status 2 and one line naming the field, the value and what is allowed. ``run`` and
``sweep`` reach the engine the way the page does, through ``studio_core.study.service``. ``export``,
``frontier``, ``runs`` and ``bundle`` open the study read-only (``RunStore(read_only=True)``): they
create, migrate and write nothing, so a bundle keeps the hash its ``bundle.json`` records; ``knobs``
does not open it at all. Tables name their columns for people (``COLUMN_LABELS``) and leave a cell
blank where there is no value; ``run --json`` prints the stored row as it is, for programs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import PurePath
from typing import Any, Iterator, Mapping

from studio_core.errors import ModelLoadError, SpecError, StoreError, SweepBusy, UnsafePath
from studio_core.knobs import KNOBS
from studio_core.models import EMBEDDED_MODEL_NAME, EMBEDDED_MODELS
from studio_core.store.rows import is_missing
from studio_core.study.labels import (
    COLUMN_LABELS,
    axis_label,
    axis_value,
    configuration,
    inactive_knobs,
    noisy,
    num,
    psnr_title,
)

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "run": "run one configuration, time and score it, and log it",
    "sweep": "run (or resume) a YAML sweep preset with a progress bar",
    "export": "write the run log (every column) to CSV",
    "frontier": "print the Pareto-optimal runs for a quality metric against a cost",
    "runs": "print the run log",
    "knobs": "list the registered knobs, their settings, and the samplers",
    "bundle": "pack the study (or some sweeps) into a folder the studio serves read-only",
    "distill": "make a few-step student of a model (latent consistency distillation; --lora for LCM-LoRA)",
}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studio_core", description="Diffusion Efficiency Studio engine")
    p.add_argument("--data-dir", help="study folder (default: $STUDIO_DATA_DIR or <project>/data)")
    p.add_argument("--metric-weights", metavar="DIR",
                   help="a folder of locally stored backbones for LPIPS, FID/KID and CLIP-score (alexnet*.pth, "
                        "vgg16*.pth, inception_v3*.pth, clip/; default: $STUDIO_METRIC_WEIGHTS); nothing is downloaded")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help=COMMANDS["run"])
    r.add_argument("--model", default=EMBEDDED_MODEL_NAME,
                   help=f"an embedded model ({', '.join(EMBEDDED_MODELS)}), a diffusers folder, or a cached repo id")
    r.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    r.add_argument("--prompt-set", help="a named prompt set (emoji-gallery, emoji-8, emoji-4)")
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--steps", type=int)
    r.add_argument("--sampler", default="default")
    r.add_argument("--timestep-spacing")
    r.add_argument("--shift", "--flow-shift", dest="flow_shift", type=float, metavar="S",
                   help="a flow-matching model's schedule shift, 0.1 to 20 (default: the model's own, fixed or per "
                        "image size)")
    r.add_argument("--guidance", type=float)
    r.add_argument("--height", type=int)
    r.add_argument("--width", type=int)
    r.add_argument("--batch-size", type=int)
    r.add_argument("--precision", default="fp32")
    r.add_argument("--device", default="auto")
    r.add_argument("--warmup", type=int, default=0, help="warm-up calls; 0 = auto: until two calls agree (default)")
    r.add_argument("--repeats", type=int, default=0,
                   help="timed repeats; 0 = auto: until the median's 95%% CI is within 5%% (default)")
    r.add_argument("--knob", action="append", default=[], metavar="NAME.SETTING=VALUE",
                   help="a knob setting, e.g. --knob deepcache.interval=3 (repeatable)")
    r.add_argument("--distribution", type=int, default=0, metavar="N",
                   help="also generate N images over N training captions (timed apart) for FD-emoji, KID and "
                        "precision/recall (emoji models; 0 = none, the default)")
    r.add_argument("--json", action="store_true", help="print the stored row as JSON")

    s = sub.add_parser("sweep", help=COMMANDS["sweep"])
    s.add_argument("preset", help="a YAML preset, e.g. presets/sampler-shootout.yaml")
    s.add_argument("--new", action="store_true", help="run again even if this sweep already completed")
    s.add_argument("--dry-run", action="store_true", help="check every configuration and print the grid")
    w = s.add_mutually_exclusive_group()
    w.add_argument("--devices", metavar="LIST",
                   help="one worker process per device, e.g. cuda:0,cuda:1 (each pinned with CUDA_VISIBLE_DEVICES); "
                        "cpu,cpu runs two CPU workers, whose timings share the cores and are flagged 'shared CPU'")
    w.add_argument("--ray", metavar="ADDRESS",
                   help="cells as Ray tasks: 'auto' (the cluster 'ray start' runs here), an address, or 'local' (a "
                        "private cluster of this machine's cores); needs requirements-ray.txt")
    s.add_argument("--cpus-per-task", type=int, default=1, metavar="K",
                   help="with --ray on a cluster without GPUs: CPUs (and torch threads) per cell (default 1)")
    s.add_argument("--worker-threads", type=int, default=None, metavar="K",
                   help="with --devices: torch threads of each CPU worker (default: the cores split between them)")

    e = sub.add_parser("export", help=COMMANDS["export"])
    e.add_argument("--csv", required=True, metavar="FILE")
    e.add_argument("--sweep", type=int, help="only runs of this sweep id")
    e.add_argument("--status", choices=["running", "ok", "failed", "interrupted", "cancelled"])

    f = sub.add_parser("frontier", help=COMMANDS["frontier"])
    f.add_argument("--metric", default="psnr", help="quality column: psnr, ssim, lpips, fidelity_top1, fidelity_top5, fd_emoji, kid_emoji, "
                        "precision_emoji, recall_emoji, perceptual_emoji, classifier_top5, dist_classifier_top5, fid, "
                        "clip_score")
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
    from studio_core.distill.cli import add_arguments

    add_arguments(sub.add_parser("distill", help=COMMANDS["distill"]))
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
            "sampler": a.sampler, "timestep_spacing": a.timestep_spacing, "flow_shift": a.flow_shift,
            "guidance": a.guidance, "height": a.height, "width": a.width, "batch_size": a.batch_size,
            "precision": a.precision, "device": a.device, "knobs": knobs, "warmup": a.warmup, "repeats": a.repeats,
            "distribution": a.distribution}


RUN_COLUMNS = ["id", "status", "model", "configuration", "steps", "guidance", "latency_median_ms", "latency_iqr_ms",
               "step_mean_ms", "peak_mem_bytes", "psnr", "ssim", "fidelity_top5", "knobs_inactive", "noise"]
# number columns -> (decimals, divisor): bytes read as MiB; fidelity is a share, read as a percentage
DECIMALS = {"guidance": (1, 1), "latency_median_ms": (1, 1), "latency_iqr_ms": (1, 1), "per_image_ms": (1, 1),
            "step_mean_ms": (2, 1), "peak_mem_bytes": (1, 2**20), "psnr": (2, 1), "ssim": (3, 1), "lpips": (3, 1),
            "fd_emoji": (2, 1), "kid_emoji": (4, 1), "precision_emoji": (3, 1), "recall_emoji": (3, 1),
            "perceptual_emoji": (4, 1), "fid": (2, 1), "clip_score": (2, 1)}
PERCENT = ("fidelity_top1", "fidelity_top5", "classifier_top1", "classifier_top5", "dist_classifier_top5")
WHOLE = ("id", "steps", "sweep_id")


def _cell(row: Mapping, column: str) -> str:
    """One cell as people read it: fixed decimals per column, a model folder by its name, blank for no value."""
    if column == "configuration":
        return configuration(row)
    if column == "knobs_inactive":
        return ", ".join(inactive_knobs(row))
    if column == "noise":
        return "" if noisy(row) is None else f"IQR {num(row['latency_iqr_ms']) / num(row['latency_median_ms']):.0%}"
    value = num(row.get(column)) if column in (*DECIMALS, *PERCENT, *WHOLE) else row.get(column)
    if is_missing(value) or value == "":
        return ""
    if column in DECIMALS:
        digits, divisor = DECIMALS[column]
        return f"{value / divisor:,.{digits}f}"
    if column in PERCENT:
        return f"{value:.0%}"
    if column in WHOLE:
        return str(int(value))
    if column == "model" and str(value).startswith(("/", "~", ".")):
        return PurePath(str(value)).name or str(value)
    return str(value)


def _table(rows: list[Mapping], columns: list[str]) -> str:
    """``rows`` as an aligned text table under ``COLUMN_LABELS`` titles, numbers right-aligned; a column
    that no row has a value for is left out."""
    cells = {c: [_cell(r, c) for r in rows] for c in columns}
    shown = [c for c in columns if any(cells[c])]
    titles = {c: COLUMN_LABELS.get(c, c) for c in shown}
    widths = {c: max(len(titles[c]), *map(len, cells[c])) for c in shown}

    def line(texts: dict[str, str]) -> str:
        return "  ".join(texts[c].rjust(widths[c]) if c in (*DECIMALS, *PERCENT, *WHOLE, "noise")
                         else texts[c].ljust(widths[c]) for c in shown).rstrip()

    return "\n".join([line(titles), *(line({c: cells[c][i] for c in shown}) for i in range(len(rows)))])


def _errors(rows: list[Mapping]) -> list[str]:
    """``run 7 failed: <why>`` for each run that did not finish, its reason's first line."""
    out = []
    for r in rows:
        if r.get("status") in ("failed", "interrupted") and isinstance(r.get("error"), str) and r["error"]:
            out.append(f"run {int(r['id'])} {r['status']}: {r['error'].strip().splitlines()[0]}")
    return out


def _print_runs(frame) -> None:
    rows = frame.to_dict("records")
    print(_table(rows, RUN_COLUMNS))
    for line in _errors(rows):
        print(line)


def _knob_lines(row: Mapping) -> list[str]:
    """What each knob did, titled for people: ``[did nothing]`` for a knob asked to act that changed nothing,
    ``(model default)`` / ``(baseline)`` for one left as the model has it."""
    asked = {k.strip() for k in str(row.get("knobs_inactive") or "").split(",") if k.strip()} - {"sampler"}
    out = []
    for r in row.get("knob_report") or []:
        name = r.get("knob")
        title = KNOBS[name].title if name in KNOBS else str(name)
        flag = "" if r.get("active") else ("  [did nothing]" if name in asked else
                                            "  (model default)" if name == "sampler" else "  (baseline)")
        out.append(f"  {title}: {r.get('summary')}{flag}")
    return out


@contextmanager
def _study(a, read_only: bool) -> Iterator:
    """The study of ``--data-dir``, closed afterwards (so SQLite leaves no side file behind). What its open
    found is said first (rows moved to quarantine); a database SQLite cannot read, met at any point, ends the
    command with one line naming the file and the problem instead of a traceback."""
    from studio_core.store.access import unreadable_reason
    from studio_core.store.store import RunStore

    store = RunStore(a.data_dir, read_only=read_only)
    for note in store.start_notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        yield store
    except Exception as exc:
        if (reason := unreadable_reason(store.path, exc)) is None:
            raise
        raise StoreError(reason) from exc
    finally:
        store.close()


def cmd_run(a) -> int:
    from studio_core.study.service import StudyService

    with _study(a, read_only=False) as store:
        row = StudyService(store).run(_spec_from_args(a), on_stage=lambda s: print(f"  {s}...", file=sys.stderr))
    if a.json:
        print(json.dumps(row, indent=2, default=str))
    else:
        print(_table([row], RUN_COLUMNS))
        print("\n".join(_knob_lines(row)))
        if row.get("metrics_note"):
            print(f"  note: {row['metrics_note']}")
    if row["status"] != "ok":
        print(f"error: run {row['id']} failed: {row.get('error')}", file=sys.stderr)
        return 1
    return 0


def cmd_sweep(a) -> int:
    from studio_core.study.sweep import load_preset

    sweep = load_preset(a.preset)
    print(f"{sweep.name}: {len(sweep)} configurations" + (f" - {sweep.question}" if sweep.question else ""),
          file=sys.stderr)
    if a.dry_run:
        for cell in sweep.cells:
            print("  " + ", ".join(f"{axis_label(k)} = {axis_value(k, v)}" for k, v in cell.items()))
        return 0
    from studio_core.study.service import StudyService

    workers = ({"devices": a.devices, "ray": a.ray, "cpus_per_task": a.cpus_per_task,
                "worker_threads": a.worker_threads} if a.devices or a.ray else None)
    with _study(a, read_only=False) as store:
        out = StudyService(store).run_sweep(sweep, new=a.new, workers=workers)
        if out.get("note"):
            print(out["note"], file=sys.stderr)
        if out["interrupted"]:
            print(f"interrupted earlier (rerun now): runs {out['interrupted']}", file=sys.stderr)
        _print_runs(store.runs_frame(matching={"sweep_id": out["sweep_id"]}))
    print(f"sweep {out['sweep_id']}: {out['status']}; ran {out['ran']}, already done {out['skipped']}")
    return 0


def cmd_export(a) -> int:
    matching = {k: v for k, v in {"sweep_id": a.sweep, "status": a.status}.items() if v is not None}
    with _study(a, read_only=True) as store:
        n = store.export_csv(a.csv, matching=matching)
    print(f"wrote {n} runs to {a.csv}")
    return 0


def cmd_frontier(a) -> int:
    from studio_core.study.frontier import COSTS, QUALITIES, frontier_table

    if a.metric not in QUALITIES:
        raise SpecError("--metric", a.metric, f"one of {', '.join(QUALITIES)}")
    if a.cost not in COSTS:
        raise SpecError("--cost", a.cost, f"one of {', '.join(COSTS)}")
    filters = {k: v for k, v in {"model": a.model, "prompt_set": a.prompt_set}.items() if v is not None}
    with _study(a, read_only=True) as store:
        front = frontier_table(store, a.cost, a.metric, sweep_id=a.sweep, filters=filters)
    if front.empty:
        print("no successful runs with both values yet")
        return 0
    spread = ["latency_iqr_ms"] if a.cost == "latency_median_ms" else []
    n_setups = front["setup"].nunique()
    if n_setups > 1:  # never one front across models, machines, thread counts, sizes or references
        print(f"{n_setups} setups (model · device · threads · size · reference), one Pareto front each")
    for setup, runs in front.groupby("setup", sort=False):
        title = psnr_title(runs.to_dict("records")) if a.metric == "psnr" else COLUMN_LABELS[a.metric]
        on_front = int((runs["front_status"] == "front").sum())
        tied = len(runs) - on_front
        print(f"Pareto front of {setup}: {title}, {'higher' if QUALITIES[a.metric] else 'lower'} "
              f"is better, against {COLUMN_LABELS[a.cost]}: {on_front} run{'s' if on_front > 1 else ''}"
              + (f", and {tied} tied with it within the latency noise" if tied else ""))
        print(_table(runs.to_dict("records"), ["id", "model", "configuration", "steps", "guidance", a.cost, *spread,
                                               a.metric, "device_name", "front_status"]))
    return 0


def cmd_runs(a) -> int:
    with _study(a, read_only=True) as store:
        if a.limit < 1:
            raise SpecError("--limit", a.limit, "a whole number of runs from 1")
        # the newest ``limit`` runs off the id index, not the whole study (which may hold 100k runs)
        frame, total = store.runs_page(matching={"sweep_id": a.sweep} if a.sweep is not None else None,
                                       per_page=a.limit)
    if len(frame):
        _print_runs(frame.iloc[::-1])
        if total > len(frame):
            print(f"the newest {len(frame)} of {total} runs (--limit)")
    else:
        print("no runs yet")
    return 0


def cmd_knobs(a) -> int:
    from dataclasses import fields

    from studio_core.knobs.sampler import SAMPLERS

    for knob in sorted(KNOBS.values(), key=lambda k: k.order):
        settings = ", ".join(f.name for f in fields(knob.Settings))
        where = f"--{knob.builtin_field.replace('_', '-')}" if knob.builtin_field else f"--knob {knob.name}.SETTING=V"
        print(f"{knob.name:<12} {knob.title}: {knob.description}\n{'':<12} settings: {settings}; CLI: {where}")
    print("\nsamplers: " + ", ".join(SAMPLERS))
    return 0


def cmd_bundle(a) -> int:
    from studio_core.store.bundle import bundle_study

    with _study(a, read_only=True) as store:
        info = bundle_study(store, a.out, a.sweep, archive=a.archive, keep_paths=a.keep_paths)
    counts = ", ".join(f"{n} {what}" for what, n in info["counts"].items())
    print(f"bundled {counts} ({_size(info['bytes'])}) into {info['path']}")
    if a.archive:
        print(f"archive: {info['archive']} ({_size(info['archive_bytes'])})")
    return 0


def cmd_distill(a) -> int:
    from studio_core.distill.cli import run

    return run(a)


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def _terminated(signum: int, _frame) -> None:
    """SIGTERM (how a scheduler or ``kill`` stops a job) stops like Ctrl-C, and the run says which it was."""
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    try:
        if a.metric_weights is not None:  # the engine reads it (standard_metrics.configured_weights)
            from studio_core.measure.standard_metrics import MetricWeights

            try:
                MetricWeights.from_dir(a.metric_weights)
            except ValueError as exc:
                raise SpecError("--metric-weights", a.metric_weights, str(exc)) from None
            os.environ["STUDIO_METRIC_WEIGHTS"] = a.metric_weights
        return globals()[f"cmd_{a.command}"](a)
    except (SpecError, ModelLoadError, StoreError, SweepBusy, UnsafePath) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"{exc or 'stopped'}; the interrupted run is marked interrupted and the sweep resumes when started "
              "again", file=sys.stderr)
        return 130 if not str(exc) else 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
