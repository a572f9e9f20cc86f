"""How long a sweep will take, before it starts: from the timing breakdowns of past runs of the model.

``estimate_seconds`` is the method (pure, over a DataFrame of past runs); ``estimate_sweep`` puts it
together with the sweep's shape into a ``SweepEstimate`` that the page and the CLI word as they like.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping

import pandas as pd

from studio_core.measure.adaptive import expected_passes
from studio_core.spec import REFERENCE_DEFAULT
from studio_core.store.rows import is_missing, json_list
from studio_core.study.sweep import Sweep

__all__ = ["HISTORY_COLUMNS", "SweepEstimate", "estimate_seconds", "estimate_sweep", "format_duration"]

@dataclass(frozen=True)
class SweepEstimate:
    """What a sweep will cost: its runs, their size, and the expected wall time with its basis."""

    runs: int
    shape: str  # runs per axis, "2 x 3"
    images_per_run: int
    passes_per_run: int  # warm-up calls + timed repeats
    seconds: float | None  # None: no past run of this model to go by
    basis: str
    finished_sweep: int | None  # a sweep with these configurations that already finished




# the columns of past runs ``estimate_seconds`` reads: a caller reads only these (a study of 100k runs has ~100
# columns a run, most of them text)
HISTORY_COLUMNS = ("status", "model_path", "latency_median_ms", "steps", "n_images", "denoise_ms", "created_at",
                   "finished_at", "warmup_done", "warmup", "repeats_done", "repeats", "cold_ms", "dist_gen_ms",
                   "dist_score_ms", "load_ms", "prompts", "seeds", "height", "width")


def _wall_ms(row: Mapping) -> float | None:
    try:
        a = pd.Timestamp(row.get("created_at"))
        b = pd.Timestamp(row.get("finished_at"))
    except (TypeError, ValueError):
        return None
    return None if pd.isna(a) or pd.isna(b) else (b - a).total_seconds() * 1000.0


def estimate_seconds(history: pd.DataFrame, specs: Iterable[Mapping], model_path: str | None = None,
                     reference_steps: int | None = None) -> tuple[float | None, str]:
    """Expected wall time of running ``specs`` (resolved spec dicts), from past ok runs of the model.

    Method: from past runs' timing breakdowns, the median denoising cost per image-step and the
    median cost per image outside the denoiser (text encode, decode); a pass over a spec costs
    ``images x (outside + steps x per-step)``, a run ``warm-up + repeats`` passes plus the median
    per-run overhead seen in past runs' wall time (scoring, logging; load time and distribution sets left out),
    one more pass over a spec's ``distribution`` images where it asks for a distribution set, plus one
    reference pass at ``reference_steps`` per distinct (prompts, seeds, size) no past run had.
    Returns (seconds or None, the basis in words).
    """
    specs = list(specs)
    if not specs:
        return None, "no runs"
    ok = history if history is not None else pd.DataFrame()
    if len(ok):
        ok = ok[(ok["status"] == "ok") & ok["latency_median_ms"].notna() & ok["steps"].notna()
                & (ok["n_images"].fillna(0) > 0)]
        if model_path is not None and "model_path" in ok:
            ok = ok[ok["model_path"] == model_path]
    if not len(ok):
        return None, "unknown until the first run of this model"
    rows = ok.to_dict("records")
    denoise = [r["denoise_ms"] if not is_missing(r.get("denoise_ms")) else r["latency_median_ms"] for r in rows]
    step_img = float(pd.Series([d / (r["steps"] * r["n_images"]) for d, r in zip(denoise, rows)]).median())
    outside_img = float(pd.Series([max(0.0, r["latency_median_ms"] - d) / r["n_images"]
                                   for d, r in zip(denoise, rows)]).median())
    overheads = []
    for r in rows:
        wall = _wall_ms(r)
        if wall is not None:
            warm = int(r.get("warmup_done") or r.get("warmup") or 1)  # what the run made (auto: its count)
            timed = int(r.get("repeats_done") or r.get("repeats") or 1)
            passes = (r.get("cold_ms") or r["latency_median_ms"]) + (warm - 1 + timed) * r["latency_median_ms"]
            dist = sum(float(r.get(c)) for c in ("dist_gen_ms", "dist_score_ms") if not is_missing(r.get(c)))
            overheads.append(max(0.0, wall - float(r.get("load_ms") or 0) - passes - dist))
    run_overhead = float(pd.Series(overheads).median()) if overheads else 0.0
    total_ms, dist_images = 0.0, 0
    for s in specs:
        n_images = len(s.get("prompts") or []) * len(s.get("seeds") or [])
        per_image = outside_img + int(s["steps"]) * step_img
        passes = expected_passes(int(s.get("warmup") or 0), int(s.get("repeats") or 0),
                                 compiled="compile" in (s.get("knobs") or {}))
        dist_images += int(s.get("distribution") or 0)  # its distribution set: one more pass over N images
        total_ms += n_images * per_image * passes + run_overhead + int(s.get("distribution") or 0) * per_image
    new_refs = 0
    if reference_steps:
        seen = {(json.dumps(json_list(r.get("prompts"))), json.dumps(json_list(r.get("seeds"))),
                 r.get("height"), r.get("width")) for r in rows}
        todo = {(json.dumps(list(s.get("prompts") or [])), json.dumps(list(s.get("seeds") or [])),
                 s.get("height"), s.get("width")) for s in specs}
        for key in todo - seen:
            new_refs += 1
            n = len(json.loads(key[0])) * len(json.loads(key[1]))
            total_ms += n * (outside_img + reference_steps * step_img)
    basis = (f"from {len(rows)} past run{'s' if len(rows) > 1 else ''} of this model: {step_img:.2f} ms per "
             f"image-step, {outside_img:.1f} ms per image outside the denoiser, {run_overhead:.0f} ms per run "
             "for scoring and logging")
    if new_refs:
        basis += f"; plus {new_refs} new reference{'s' if new_refs > 1 else ''} at {reference_steps} steps"
    if dist_images:
        basis += f"; plus {dist_images:,} distribution-set images (their scoring not included)"
    return total_ms / 1000.0, basis + "; model loading not included"


def estimate_sweep(sweep: Sweep, history: pd.DataFrame, model_path: str | None = None, *,
                   reference_steps: int | None = REFERENCE_DEFAULT["steps"],
                   finished_sweep: int | None = None) -> SweepEstimate:
    """The sweep's size and ``estimate_seconds`` of its (resolved) configurations."""
    seconds, basis = estimate_seconds(history, [s.to_dict() for s in sweep.specs], model_path, reference_steps)
    first = sweep.specs[0]
    shape = " + ".join(" x ".join(str(len(v)) for _, v in axes) for axes in sweep.parts or [sweep.axes])
    return SweepEstimate(runs=len(sweep), shape=shape,
                         images_per_run=first.n_images,
                         passes_per_run=expected_passes(first.warmup, first.repeats, compiled="compile" in first.knobs),
                         seconds=seconds, basis=basis, finished_sweep=finished_sweep)


def format_duration(seconds: float | None) -> str:
    """``"45 s"``, ``"3.5 min"``, ``"2.1 h"``; "unknown" for None."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
