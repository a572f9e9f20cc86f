"""Data access for the UI: what the views read from the run store, as DataFrames and plain dicts.

Views read the store; they never re-run work. Queries take parameters (no value is formatted into
SQL). The functions after the store readers are pure transforms of run rows, unit-tested on small
frames.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping

import pandas as pd

from studio_core.store.store import RunStore

__all__ = [
    "ALL",
    "COMPARE_METRICS",
    "SETTING_COLUMNS",
    "TABLE_COLUMNS",
    "differing_settings",
    "estimate_seconds",
    "format_duration",
    "image_pairs",
    "load_runs",
    "metric_deltas",
    "reference_config",
    "run_choices",
    "run_label",
    "runs_where",
    "store_version",
    "sweep_choices",
    "table_view",
]

ALL = "(all)"
# the columns the Runs tab shows (the CSV has every column)
TABLE_COLUMNS = ["id", "created_at", "status", "sweep_id", "model", "prompt_set", "n_images", "steps", "sampler",
                 "guidance", "precision", "height", "width", "knobs_label", "latency_median_ms", "latency_iqr_ms",
                 "per_image_ms", "peak_mem_bytes", "psnr", "ssim", "fidelity_top1", "fidelity_top5",
                 "knobs_inactive", "error"]
# configuration and setup columns that can differ between two runs (Compare tab)
SETTING_COLUMNS = ["model", "prompt_set", "n_images", "steps", "sampler", "scheduler_class", "timestep_spacing",
                   "guidance", "height", "width", "batch_size", "precision", "device", "knobs_label", "warmup",
                   "repeats", "device_name", "threads", "torch_version", "diffusers_version", "git_commit"]
# metric -> (label, higher is better); None: neither (a count)
COMPARE_METRICS: dict[str, tuple[str, bool | None]] = {
    "latency_median_ms": ("median latency (ms)", False), "latency_iqr_ms": ("latency IQR (ms)", False),
    "per_image_ms": ("per image (ms)", False), "cold_ms": ("cold call (ms, one call)", False),
    "text_encode_ms": ("text encode (ms)", False), "denoise_ms": ("denoise (ms)", False),
    "step_mean_ms": ("per step (ms)", False), "decode_ms": ("decode (ms)", False),
    "nfe": ("denoiser calls", None), "peak_mem_bytes": ("peak memory (MiB)", False),
    "psnr": ("PSNR (dB)", True), "ssim": ("SSIM", True), "lpips": ("LPIPS", False),
    "fidelity_top1": ("fidelity top-1", True), "fidelity_top5": ("fidelity top-5", True),
}


# ------------------------------------------------------------------------------------------ store
def runs_where(status: str | None = None, sweep_id: Any = None, model: str | None = None,
               prompt_set: str | None = None) -> tuple[str | None, list]:
    """A parameterised WHERE clause for the UI's filters; ``None`` or ``ALL`` means no filter."""
    clauses, params = [], []
    for column, value in (("status", status), ("sweep_id", sweep_id), ("model", model), ("prompt_set", prompt_set)):
        if value is None or value == "" or value == ALL:
            continue
        if column == "prompt_set" and value == "(custom prompts)":
            clauses.append("prompt_set IS NULL")
            continue
        clauses.append(f"{column} = ?")  # column names come from this fixed list, values are parameters
        params.append(int(value) if column == "sweep_id" else value)
    return (" AND ".join(clauses) or None), params


def load_runs(store: RunStore, status: str | None = None, sweep_id: Any = None, model: str | None = None,
              prompt_set: str | None = None) -> pd.DataFrame:
    """Runs matching the filters, every column (JSON columns as text), oldest first."""
    where, params = runs_where(status, sweep_id, model, prompt_set)
    return store.runs_frame(where, params)


def store_version(store: RunStore) -> tuple:
    """Changes whenever a run starts or finishes: (count, max id, last finish time, runs still running)."""
    row = store.db.execute(
        "SELECT count(*), max(id), max(finished_at), sum(status = 'running') FROM runs").fetchone()
    return tuple(row)


def sweep_choices(store: RunStore) -> list[tuple[str, int]]:
    """(label, id) of every sweep, newest first."""
    return [(f"{s['id']}: {s['name']} ({s['status']}, {s['n_total']} runs)", int(s["id"]))
            for s in reversed(store.sweeps())]


def reference_config(store: RunStore, reference_id: Any) -> dict | None:
    """The configuration a run was scored against (sampler, steps, guidance ...), or None."""
    if reference_id is None or (isinstance(reference_id, float) and math.isnan(reference_id)):
        return None
    row = store.db.execute("SELECT config_json, generate_ms FROM refs WHERE id = ?", [int(reference_id)]).fetchone()
    if row is None:
        return None
    return {**json.loads(row[0]), "generate_ms": row[1], "id": int(reference_id)}


# ------------------------------------------------------------------------------------------ pure
def _isnull(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def run_label(row: Mapping) -> str:
    """``"12: DDIM 10 steps g3 fp32 32x32 [knobs] (status)"`` - how a run is named in menus."""
    parts = [f"{int(row['id'])}:", str(row.get("sampler") or "default")]
    if not _isnull(row.get("steps")):
        parts.append(f"{int(row['steps'])} steps")
    if not _isnull(row.get("guidance")):
        parts.append(f"g{float(row['guidance']):g}")
    if row.get("precision"):
        parts.append(str(row["precision"]))
    if not _isnull(row.get("height")) and not _isnull(row.get("width")):
        parts.append(f"{int(row['height'])}x{int(row['width'])}")
    if row.get("knobs_label"):
        parts.append(f"[{row['knobs_label']}]")
    if row.get("model") and row.get("model") != "emoji-sd":
        parts.append(f"<{row['model']}>")
    if row.get("status") and row.get("status") != "ok":
        parts.append(f"({row['status']})")
    return " ".join(parts)


def run_choices(frame: pd.DataFrame) -> list[tuple[str, int]]:
    """(label, id) of each run, newest first."""
    return [(run_label(r), int(r["id"])) for r in reversed(frame.to_dict("records"))]


def table_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The Runs tab's columns, newest first, memory in MiB and numbers rounded for reading."""
    cols = [c for c in TABLE_COLUMNS if c in frame.columns]
    view = frame[cols].iloc[::-1].reset_index(drop=True).copy()
    if "peak_mem_bytes" in view:
        view["peak_mem_bytes"] = (pd.to_numeric(view["peak_mem_bytes"]) / 2**20).round(1)
        view = view.rename(columns={"peak_mem_bytes": "peak_mem_MiB"})
    for c in ("latency_median_ms", "latency_iqr_ms", "per_image_ms", "psnr"):
        if c in view:
            view[c] = pd.to_numeric(view[c]).round(2)
    for c in ("ssim", "fidelity_top1", "fidelity_top5"):
        if c in view:
            view[c] = pd.to_numeric(view[c]).round(4)
    if "created_at" in view:
        view["created_at"] = view["created_at"].astype(str).str.slice(0, 19).str.replace("T", " ")
    return view


def _json_list(value: Any) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value:
        try:
            out = json.loads(value)
            return out if isinstance(out, list) else []
        except json.JSONDecodeError:
            return []
    return []


def image_pairs(row: Mapping) -> list[tuple[str, int]]:
    """The (prompt, seed) of each stored image of a run, in the store's prompt-major order."""
    return [(p, int(s)) for p in _json_list(row.get("prompts")) for s in _json_list(row.get("seeds"))]


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
    per-run overhead seen in past runs' wall time (scoring, logging; load time left out), plus one
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
    denoise = [r["denoise_ms"] if not _isnull(r.get("denoise_ms")) else r["latency_median_ms"] for r in rows]
    step_img = float(pd.Series([d / (r["steps"] * r["n_images"]) for d, r in zip(denoise, rows)]).median())
    outside_img = float(pd.Series([max(0.0, r["latency_median_ms"] - d) / r["n_images"]
                                   for d, r in zip(denoise, rows)]).median())
    overheads = []
    for r in rows:
        wall = _wall_ms(r)
        if wall is not None:
            passes = (r.get("cold_ms") or r["latency_median_ms"]) + (int(r.get("warmup") or 1) - 1 + int(
                r.get("repeats") or 1)) * r["latency_median_ms"]
            overheads.append(max(0.0, wall - float(r.get("load_ms") or 0) - passes))
    run_overhead = float(pd.Series(overheads).median()) if overheads else 0.0
    total_ms = 0.0
    for s in specs:
        n_images = len(s.get("prompts") or []) * len(s.get("seeds") or [])
        per_pass = n_images * (outside_img + int(s["steps"]) * step_img)
        total_ms += per_pass * (int(s.get("warmup", 1)) + int(s.get("repeats", 3))) + run_overhead
    new_refs = 0
    if reference_steps:
        seen = {(json.dumps(_json_list(r.get("prompts"))), json.dumps(_json_list(r.get("seeds"))),
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
    return total_ms / 1000.0, basis + "; model loading not included"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _plain(v: Any) -> Any:
    if _isnull(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v


def differing_settings(rows: list[Mapping]) -> pd.DataFrame:
    """Only the settings (configuration and setup) whose values differ between the runs.

    One row per setting, one column per run (``run <id>``); prompts and seeds are compared too.
    """
    out = []
    for column in ["prompts", "seeds", *SETTING_COLUMNS]:
        values = []
        for r in rows:
            v = r.get(column)
            if column in ("prompts", "seeds"):
                v = json.dumps(_json_list(v)) if not isinstance(v, str) else v
            values.append(_plain(v))
        if len({json.dumps(v, default=str) for v in values}) > 1:
            out.append({"setting": column, **{f"run {int(r['id'])}": ("" if v is None else str(v))
                                              for r, v in zip(rows, values)}})
    return pd.DataFrame(out, columns=["setting", *[f"run {int(r['id'])}" for r in rows]])


def metric_deltas(rows: list[Mapping]) -> pd.DataFrame:
    """Each metric of each run, and for runs after the first its change vs the first (absolute and %)."""
    if not rows:
        return pd.DataFrame()
    first = rows[0]
    out = []
    for column, (label, higher) in COMPARE_METRICS.items():
        vals = [_plain(r.get(column)) for r in rows]
        if all(v is None for v in vals):
            continue
        if column == "peak_mem_bytes":
            vals = [None if v is None else v / 2**20 for v in vals]
        line = {"metric": label, f"run {int(first['id'])}": _fmt(vals[0])}
        for r, v in zip(rows[1:], vals[1:]):
            noise = None
            if column in ("latency_median_ms", "per_image_ms"):  # a change within either run's IQR is no finding
                iqrs = [_plain(x.get("latency_iqr_ms")) for x in (first, r)]
                iqrs = [i / (int(x.get("n_images") or 1) if column == "per_image_ms" else 1)
                        for i, x in zip(iqrs, (first, r)) if i is not None]
                noise = max(iqrs, default=None)
            line[f"run {int(r['id'])}"] = _fmt(v) + _delta(vals[0], v, higher, noise)
        out.append(line)
    return pd.DataFrame(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _delta(a: Any, b: Any, higher: bool | None, noise: float | None = None) -> str:
    if a is None or b is None:
        return ""
    d = float(b) - float(a)
    pct = f", {d / float(a) * 100:+.0f}%" if a else ""
    if noise is not None and abs(d) <= noise:
        verdict = " within IQR"
    else:
        verdict = "" if higher is None or d == 0 else (" better" if (d > 0) == higher else " worse")
    return f" ({d:+.4g}{pct}{verdict})"
