"""The views' tables: run rows (dicts or a DataFrame from ``RunStore.runs_frame``) turned into what the
page shows: menu labels, the Runs table, the Compare tab's differing settings and metric deltas, and
the choices of the filters. Pure functions, unit-tested on small frames; nothing here reads the store.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import pandas as pd

from studio_core.store.rows import is_missing, json_list

__all__ = [
    "ALL",
    "COMPARE_METRICS",
    "CUSTOM_PROMPTS",
    "SETTING_COLUMNS",
    "TABLE_COLUMNS",
    "differing_settings",
    "filter_choices",
    "image_pairs",
    "metric_deltas",
    "run_choices",
    "run_filters",
    "run_label",
    "sweep_choices",
    "table_view",
]

ALL = "(all)"
CUSTOM_PROMPTS = "(custom prompts)"  # the prompt-set filter's name for runs given their own prompts
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


# ------------------------------------------------------------------------------------------ filters
def run_filters(status: str | None = None, sweep_id: Any = None, model: str | None = None,
                prompt_set: str | None = None) -> dict[str, Any]:
    """The page's filters as ``RunStore.runs_frame(matching=...)`` values: ``None``, blank or ``ALL`` is no
    filter, ``CUSTOM_PROMPTS`` is runs without a prompt set (None matches NULL)."""
    out: dict[str, Any] = {}
    for column, value in (("status", status), ("sweep_id", sweep_id), ("model", model), ("prompt_set", prompt_set)):
        if value is None or value == "" or value == ALL:
            continue
        if column == "prompt_set" and value == CUSTOM_PROMPTS:
            out[column] = None
            continue
        out[column] = int(value) if column == "sweep_id" else value
    return out


def sweep_choices(sweeps: list[Mapping]) -> list[tuple[str, int]]:
    """(label, id) of every sweep (``RunStore.sweeps()``, oldest first), newest first."""
    return [(f"{s['id']}: {s['name']} ({s['status']}, {s['n_total']} runs)", int(s["id"])) for s in reversed(sweeps)]


def filter_choices(frame: pd.DataFrame, sweeps: list[Mapping]) -> tuple[list, list, list, list]:
    """Choices of the model, prompt-set, sweep and run pickers, from the whole run log."""
    models = [ALL] + sorted({m for m in frame.get("model", []) if m})
    sets = [ALL] + sorted({p for p in frame.get("prompt_set", []) if isinstance(p, str) and p})
    if len(frame) and frame["prompt_set"].isna().any():
        sets.append(CUSTOM_PROMPTS)
    sweep_items = [(ALL, ALL)] + [(label, str(i)) for label, i in sweep_choices(sweeps)]
    runs = run_choices(frame[frame["status"] == "ok"]) if len(frame) else []
    return models, sets, sweep_items, runs


# ------------------------------------------------------------------------------------------ pure

def run_label(row: Mapping) -> str:
    """``"12: DDIM 10 steps g3 fp32 32x32 [knobs] (status)"`` - how a run is named in menus."""
    parts = [f"{int(row['id'])}:", str(row.get("sampler") or "default")]
    if not is_missing(row.get("steps")):
        parts.append(f"{int(row['steps'])} steps")
    if not is_missing(row.get("guidance")):
        parts.append(f"g{float(row['guidance']):g}")
    if row.get("precision"):
        parts.append(str(row["precision"]))
    if not is_missing(row.get("height")) and not is_missing(row.get("width")):
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



def image_pairs(row: Mapping) -> list[tuple[str, int]]:
    """The (prompt, seed) of each stored image of a run, in the store's prompt-major order."""
    return [(p, int(s)) for p in json_list(row.get("prompts")) for s in json_list(row.get("seeds"))]


def _plain(v: Any) -> Any:
    if is_missing(v):
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
                v = json.dumps(json_list(v)) if not isinstance(v, str) else v
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
