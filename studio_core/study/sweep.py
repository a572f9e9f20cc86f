"""Sweeps: a grid of configurations from a YAML preset, run in order, resumable after any crash.

A preset::

    # What question this sweep answers (a comment for the reader; ``question:`` for the tools)
    name: sampler-shootout
    question: Which sampler gets closest to the reference at 10 and 20 steps?
    base: {model: emoji-sd, prompt_set: emoji-8, seeds: [0, 1]}
    grid:                        # cartesian product, first axis outermost
      sampler: [DDIM, Euler, ...]
      steps: [10, 20]
    reference: {sampler: DPM++ 2M, steps: 200}   # optional; this is the default

``grid`` may also be a list of such mappings, each a product of its own axes; the cells are theirs in order,
one after the other. So models that need different settings share one sweep (a teacher at 50 to 4 steps of
its best samplers, its student at 1 to 8 steps of its own)::

    grid:
      - {model: [emoji-sd], sampler: [DPM++ 2M, DDIM], steps: [50, 4]}
      - {model: [emoji-sd-lcm], sampler: [LCM], steps: [1, 2, 4]}

Grid axes are run-spec fields (``steps``, ``sampler``, ``precision`` ...) or knob settings written
``knobs.<knob>.<setting>``. A knob setting's axis also takes ``off``: that cell runs without the knob,
so the baseline sits in the same grid (``knobs.deepcache.interval: [off, 2, 3]``). Every configuration
is resolved and checked before the first run, and the reference like them. Presets read YAML 1.2 booleans
(only ``true``/``false``), so a bare ``off`` or ``no`` stays a word; ``preset_yaml`` writes a sweep back as
a preset file.

Bounds before work: a grid has at most ``MAX_SWEEP_CELLS`` cells (a list's mappings together), counted from its
axes' lengths before any cell is made; a preset file is at most ``MAX_PRESET_BYTES`` and may not use YAML anchors
or aliases (``&a``, ``*a``: a few hundred bytes of them expand to gigabytes), refused before anything is built.

Resuming: a sweep is identified by a hash of its resolved configurations. Started again, it finds
its unfinished sweep, marks runs whose process died as ``interrupted``, and runs only the grid cells
that have no ``ok`` or ``failed`` run yet. So a sweep killed with ``kill -9`` finishes on restart
without duplicating or losing a row. A sweep stopped by an error (not a failed run: those are
recorded and the sweep goes on) is left ``failed`` and resumes the same way. A sweep whose process died
shows as ``interrupted`` from the next start of a studio on the study until it is started again.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from studio_core.errors import SpecError, SweepBusy
from studio_core.knobs._validate import check_int, check_number
from studio_core.knobs.sampler import SAMPLERS
from studio_core.spec import MAX_GUIDANCE, MAX_STEPS, MAX_SWEEP_CELLS, RunSpec, check_text, excerpt, resolve
from studio_core.store.liveness import pid_taken_over
from studio_core.study.labels import axis_label, axis_value

__all__ = ["MAX_PRESET_BYTES", "OFF", "Sweep", "SweepBusy", "cell_config", "grid_size", "load_preset", "preset_yaml",
           "run_sweep", "sweep_from_dict"]

PRESET_KEYS = ("name", "question", "base", "grid", "reference")
OFF = "off"  # a knob setting's axis value: this cell runs without that knob
MAX_PRESET_BYTES = 1_000_000  # a preset file; the longest shipped one is under 2 KB
MAX_NAME_CHARS = 2000  # a sweep's name or question


class _PresetLoader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 booleans: ``true``/``false`` only, so ``off``, ``on``, ``yes`` and ``no`` are
    words (YAML 1.1 would read ``[off, 3]`` as ``[False, 3]``, losing the knob-off value). Anchors and aliases
    are refused where they are met, before any node is built: a 475-byte "billion laughs" of nested aliases
    would otherwise expand to gigabytes."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&name, *name) are not allowed in a "
                                                          "preset: write each value out", event.start_mark)
        return super().compose_node(parent, index)


_BOOL = "tag:yaml.org,2002:bool"
_PresetLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_PresetLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


@dataclass(frozen=True)
class Sweep:
    name: str
    question: str
    source: str
    axes: tuple[tuple[str, tuple], ...]  # a list grid: each axis of its parts, with their values, as first met
    cells: tuple[dict, ...]  # the axis values of each grid cell, in run order
    specs: tuple[RunSpec, ...]  # resolved
    reference: dict | None
    parts: tuple[tuple[tuple[str, tuple], ...], ...] = ()  # a list grid's axes, mapping by mapping; () for one

    @property
    def key(self) -> str:
        """Identity for resuming: the resolved configurations and reference, not the file name."""
        src = json.dumps([[s.to_dict() for s in self.specs], self.reference], sort_keys=True)
        return hashlib.sha256(src.encode()).hexdigest()[:20]

    def __len__(self) -> int:
        return len(self.specs)


def _knob_axis(axis: str, value: Any) -> tuple[str, str] | None:
    """(knob, setting) of a ``knobs.<knob>.<setting>`` axis, None for a run-spec field."""
    if not axis.startswith("knobs."):
        return None
    parts = axis.split(".")
    if len(parts) != 3:
        raise SpecError(f"grid.{axis}", value, "run-spec fields or 'knobs.<knob>.<setting>'")
    return parts[1], parts[2]


def cell_config(base: dict, cell: dict) -> dict:
    """The run-spec dict of one grid cell: the base with the cell's axis values set. A knob setting's
    value ``off`` removes that knob (the base's settings of it too), whatever the cell's other axes set
    on it, so an "off" cell is exactly the plain run without the knob."""
    config = copy.deepcopy(base)
    off = {k[0] for axis, value in cell.items() if (k := _knob_axis(axis, value)) and value == OFF}
    for axis, value in cell.items():
        knob = _knob_axis(axis, value)
        if knob is None:
            config[axis] = value
        elif knob[0] not in off:
            config.setdefault("knobs", {}).setdefault(knob[0], {})[knob[1]] = value
    for name in off:
        (config.get("knobs") or {}).pop(name, None)
    return config


def _grid_parts(grid: Any) -> list[tuple[str, dict]]:
    """(name for messages, mapping) of each product in a grid: the mapping itself, or each of a list's
    (``grid[1]``); ``SpecError`` for a grid that is neither."""
    if isinstance(grid, dict) and grid:
        return [("grid", grid)]
    if isinstance(grid, list) and grid:
        for i, part in enumerate(grid):
            if not isinstance(part, dict) or not part:
                raise SpecError(f"grid[{i}]", excerpt(part), "a mapping of axis -> list of values (at least one axis)")
        return [(f"grid[{i}]", part) for i, part in enumerate(grid)]
    raise SpecError("grid", excerpt(grid), "a mapping of axis -> list of values (at least one axis), or a list of "
                                           "such mappings")


def grid_size(data: Any) -> int:
    """How many cells a sweep dict's grid makes, from its axes' lengths alone (no cell is made); ``SpecError``
    for a grid that is not a mapping of non-empty lists (or a list of them), or one over ``MAX_SWEEP_CELLS`` cells
    in all."""
    grid = data.get("grid") if isinstance(data, dict) else None
    parts = _grid_parts(grid)
    total = 0
    for where, part in parts:
        n = 1
        for axis, values in part.items():
            if not isinstance(values, list) or not values:
                raise SpecError(f"{where}.{excerpt(axis)}", excerpt(values), "a non-empty list of values")
            n *= len(values)
            if total + n > MAX_SWEEP_CELLS:
                sizes = " + ".join(" x ".join(str(len(v)) if isinstance(v, list) else "?" for v in p.values())
                                   for _, p in parts)
                raise SpecError("grid", excerpt(f"{sizes} values"), f"at most {MAX_SWEEP_CELLS:,} cells in one "
                                                                     "sweep (split it into several)")
        total += n
    return total


def _check_reference(ref: Any) -> None:
    """A sweep's reference settings checked like a cell's, before the sweep starts (the engine would otherwise
    fail every run on them and still mark the sweep done)."""
    if not isinstance(ref, dict) or set(ref) - {"sampler", "steps", "guidance"}:
        raise SpecError("reference", excerpt(ref), "a mapping with sampler, steps and optionally guidance")
    if ref.get("sampler", "DPM++ 2M") not in SAMPLERS:
        raise SpecError("reference.sampler", excerpt(ref.get("sampler")), f"one of {', '.join(SAMPLERS)}")
    if "steps" in ref:
        check_int("reference.steps", ref["steps"] if isinstance(ref["steps"], (int, float)) else excerpt(ref["steps"]),
                  1, MAX_STEPS)
    if "guidance" in ref:
        value = ref["guidance"]
        check_number("reference.guidance", value if isinstance(value, (int, float)) else excerpt(value), 0,
                     MAX_GUIDANCE)


def sweep_from_dict(data: dict, source: str = "<dict>") -> Sweep:
    """Expand and resolve a preset; ``SpecError`` (naming the cell) for any bad configuration. Its size, name
    and reference are checked before the first cell is made."""
    if not isinstance(data, dict):
        raise SpecError("preset", type(data).__name__, f"a mapping with keys {', '.join(PRESET_KEYS)}")
    unknown = sorted(set(data) - set(PRESET_KEYS))
    if unknown:
        raise SpecError(f"preset.{excerpt(unknown[0])}", excerpt(data[unknown[0]]),
                        f"keys are {', '.join(PRESET_KEYS)}")
    for key in ("name", "question"):
        check_text(key, data.get(key), MAX_NAME_CHARS)
    base, grid = data.get("base") or {}, data.get("grid") or {}
    if not isinstance(base, dict):
        raise SpecError("base", excerpt(base), "a mapping of run-spec fields (the configuration every cell starts "
                                               "from)")
    grid_size(data)
    parts = [(where, [(axis, tuple(values)) for axis, values in part.items()]) for where, part in _grid_parts(grid)]
    ref = data.get("reference")
    if ref is not None:
        _check_reference(ref)
    cells, specs = [], []
    info_cache: dict = {}
    for where, axes in parts:
        for values in itertools.product(*(v for _, v in axes)):
            cell = dict(zip((a for a, _ in axes), values))
            try:
                spec = RunSpec.from_dict(cell_config(base, cell))
                model = spec.model
                spec, info = resolve(spec, info_cache.get(model))
                info_cache[model] = info
            except SpecError as exc:
                named = ", ".join(f"{axis_label(k)}={v!r}" for k, v in cell.items())
                raise SpecError(exc.field, exc.value, f"{exc.allowed} (in {where} cell {named})") from None
            cells.append(cell)
            specs.append(spec)
    listed = isinstance(grid, list)
    union: dict[str, list] = {}  # a list grid's axes together, each value once, in the order first met
    for _, axes in parts:
        for axis, values in axes:
            seen = union.setdefault(axis, [])
            for value in values:
                if value not in seen:  # values may be mappings (a knobs axis): compared, never hashed
                    seen.append(value)
    return Sweep(str(data.get("name") or Path(source).stem), str(data.get("question") or ""), source,
                 tuple((a, tuple(v)) for a, v in union.items()) if listed else tuple(parts[0][1]), tuple(cells),
                 tuple(specs), ref, tuple(tuple(axes) for _, axes in parts) if listed else ())


def load_preset(path: str | Path) -> Sweep:
    """A preset file as a checked ``Sweep``; ``SpecError`` in one line for a file too big, not YAML, or with
    anchors or aliases, before anything is built from it."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("preset", str(path), "an existing YAML file (see presets/)")
    if path.stat().st_size > MAX_PRESET_BYTES:
        raise SpecError("preset", str(path), f"a file of at most {MAX_PRESET_BYTES:,} bytes (this one has "
                                             f"{path.stat().st_size:,})")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_PresetLoader)  # a SafeLoader
    except yaml.MarkedYAMLError as exc:  # one line: what, and where (not pyyaml's quoted snippet)
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = ", ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise SpecError("preset", str(path), f"valid YAML ({' '.join(what.split())}{where})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError("preset", str(path), f"valid YAML ({' '.join(str(exc).split())})") from None
    return sweep_from_dict(data, str(path))


def preset_yaml(data: dict) -> str:
    """A sweep dict as the text of a preset file (what ``load_preset`` reads back into the same cells):
    a comment with its question, then its keys in preset order, short lists on one line."""
    ordered = {k: data[k] for k in PRESET_KEYS if data.get(k) not in (None, "")}
    question = str(data.get("question") or "").strip() or "(say here what question this sweep answers)"
    comment = "".join(f"# {line}\n" for line in f"Question: {question}".splitlines())
    return comment + yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True, default_flow_style=None,
                                    width=100)


def _run_by_another_process(store, row: dict) -> bool:
    """Whether another live process is running this unfinished sweep: the pid recorded on it exists,
    and that process started before the sweep's latest run was written (a later one only reuses the pid)."""
    import psutil

    pid = row["pid"]
    if row["status"] != "running" or not pid or pid == os.getpid() or not psutil.pid_exists(pid):
        return False
    latest = max([row["created_at"]] + [r["created_at"] for r in store.sweep_runs(row["id"])])
    return not pid_taken_over(pid, latest)


def run_sweep(engine, sweep: Sweep, *, new: bool = False, progress: bool | Callable = True,
              should_stop: Callable[[], bool] | None = None, backend=None, store=None) -> dict:
    """Run (or resume) a sweep; returns ``{"sweep_id", "ran", "skipped", "interrupted", "status"}``
    where ``interrupted`` lists this sweep's runs that an earlier process left unfinished.

    ``progress`` is True for a tqdm bar on stderr, or a callback ``(done, total, row)`` for the UI. ``backend``
    (``dispatch.DevicePool`` or ``dispatch.RayCluster``) runs the cells on its workers, this process writing
    their outcomes into ``store`` (``engine`` may then be None); its maker closes it. Resuming is the same either
    way.
    """
    store = engine.store if engine is not None else store
    # 1. find the unfinished sweep with the same configurations, or start one
    same = store.sweeps(sweep.key)
    open_sweeps = [s for s in same if s["status"] != "done"]
    done_sweeps = [s for s in same if s["status"] == "done"]
    if open_sweeps and not new:
        row = open_sweeps[-1]
        if _run_by_another_process(store, row):
            raise SweepBusy(f"sweep {row['id']} ({sweep.name}) is running in process {row['pid']}")
        sweep_id = row["id"]
        store.claim_sweep(sweep_id)
    elif done_sweeps and not new:
        row = done_sweeps[-1]
        return {"sweep_id": row["id"], "ran": 0, "skipped": len(sweep), "interrupted": [], "status": "done",
                "note": f"sweep {row['id']} with these configurations is already complete; pass new=True "
                        "(--new) to run it again"}
    else:
        sweep_id = store.create_sweep(sweep_key=sweep.key, name=sweep.name, preset=sweep.source,
                                      question=sweep.question, n_total=len(sweep),
                                      config={"axes": [[a, list(v)] for a, v in sweep.axes],
                                              **({"parts": [[[a, list(v)] for a, v in axes] for axes in sweep.parts]}
                                                 if sweep.parts else {}),
                                              "reference": sweep.reference})
    # 2. runs and sweeps whose process died are interrupted; finished cells are skipped
    store.mark_interrupted()
    store.mark_sweeps_interrupted()
    earlier = store.sweep_runs(sweep_id)
    interrupted = [r["id"] for r in earlier if r["status"] == "interrupted"]
    finished = {r["sweep_index"] for r in earlier if r["status"] in ("ok", "failed")}
    todo = [i for i in range(len(sweep)) if i not in finished]
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=len(sweep), initial=len(finished), desc=sweep.name, unit="run", dynamic_ncols=True)
        if finished or interrupted:
            bar.write(f"resuming sweep {sweep_id}: {len(finished)} of {len(sweep)} cells done"
                      + (f"; runs {interrupted} were interrupted and their cells run again" if interrupted else ""))
    ran, status = 0, "done"
    try:
        if backend is not None:
            from studio_core.study.dispatch import run_cells

            def advanced(done: int, total: int, row: dict) -> None:
                if bar is not None:
                    cell = ", ".join(f"{axis_label(k)} = {axis_value(k, v)}"
                                     for k, v in sweep.cells[row["sweep_index"]].items())
                    bar.set_postfix_str(f"{cell}: {row['status']} on {row.get('worker_device')}", refresh=False)
                    bar.update(1)
                elif callable(progress):
                    progress(done, total, row)

            ran, status = run_cells(store, sweep, sweep_id, todo, backend, done_before=len(finished),
                                    progress=advanced if bar is not None or callable(progress) else None,
                                    should_stop=should_stop)
            todo = []
        for i in todo:
            if should_stop is not None and should_stop():
                status = "cancelled"
                break
            result = engine.run(sweep.specs[i], sweep_id=sweep_id, sweep_index=i, reference=sweep.reference)
            ran += 1
            if bar is not None:
                cell = ", ".join(f"{axis_label(k)} = {axis_value(k, v)}" for k, v in sweep.cells[i].items())
                bar.set_postfix_str(f"{cell}: {result.status}", refresh=False)
                bar.update(1)
            elif callable(progress):
                progress(len(finished) + ran, len(sweep), result.row)
    except KeyboardInterrupt:
        status = "cancelled"
        raise
    except BaseException:  # not a failed run (engine.run records those): the sweep stops, resumable
        status = "failed"
        raise
    finally:
        if bar is not None:
            bar.close()
        store.finish_sweep(sweep_id, status)
    return {"sweep_id": sweep_id, "ran": ran, "skipped": len(finished), "interrupted": interrupted,
            "status": status}
