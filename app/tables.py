"""The views' tables: run rows (dicts or a DataFrame from ``RunStore.runs_frame``) turned into what the
page shows: menu labels, the Runs table, the Compare tab's differing settings and metric deltas, and
the choices of the filters. Pure functions, unit-tested on small frames; nothing here reads the store.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from studio_core.store.rows import is_missing, json_list
from studio_core.study import labels

__all__ = [
    "ALL",
    "COMPARE_METRICS",
    "CUSTOM_PROMPTS",
    "LABEL_READS",
    "SETTING_COLUMNS",
    "TABLE_COLUMNS",
    "TABLE_READS",
    "choices_from",
    "differing_settings",
    "image_pairs",
    "metric_deltas",
    "noise_flag",
    "page_text",
    "run_choices",
    "run_filters",
    "run_label",
    "sweep_choices",
    "table_view",
]

ALL = "(all)"
CUSTOM_PROMPTS = "(custom prompts)"  # the prompt-set filter's name for runs given their own prompts
# the Runs tab's columns, key ones first: what the run is and what it measured, then where it came from. The run
# id stays first (a row click reads it). Titles come from labels.COLUMN_LABELS; the CSV has every raw column.
TABLE_COLUMNS = ["id", "configuration", "steps", "latency_median_ms", "latency_iqr_ms", "noise", "psnr", "ssim",
                 "fidelity_top1", "peak_mem_mib", "knobs_inactive", "status", "error", "model",
                 "prompt_set", "n_images", "per_image_ms", "guidance", "size", "created_at", "sweep_id"]
# the run columns a run's menu label reads (``run_label``: its configuration, steps, guidance, size, model, status),
# and those the Runs table reads (its columns, and what its derived ones are made of): a large study's pages and
# pickers read only these (tests/test_store_scale.py checks the labels and tables are those the whole rows give)
LABEL_READS = ("id", "status", "model", "steps", "guidance", "height", "width", "sampler", "scheduler_class",
               "timestep_spacing", "flow_shift", "precision", "knobs", "knobs_label", "knob_report", "knobs_inactive")
TABLE_READS = (*LABEL_READS, "latency_median_ms", "latency_iqr_ms", "latencies_ms", "repeats", "repeats_done",
               "psnr", "ssim", "fidelity_top1", "peak_mem_bytes", "error", "prompt_set", "n_images",
               "per_image_ms", "created_at", "sweep_id")
# configuration and setup columns that can differ between two runs (Compare tab); "size" is height x width
SETTING_COLUMNS = ["model", "prompt_set", "n_images", "steps", "sampler", "scheduler_class", "timestep_spacing",
                   "flow_shift", "guidance", "size", "batch_size", "precision", "device", "knobs", "warmup", "repeats",
                   "device_name", "threads", "torch_version", "diffusers_version", "git_commit"]
# metric -> (higher is better, None for a count; unit; decimals). Rows read "2,465 ms (+2,282 ms, 13.5x slower)".
COMPARE_METRICS: dict[str, tuple[bool | None, str, int]] = {
    "latency_median_ms": (False, "ms", 1), "latency_iqr_ms": (False, "ms", 1), "per_image_ms": (False, "ms", 1),
    "cold_ms": (False, "ms", 1), "text_encode_ms": (False, "ms", 1), "denoise_ms": (False, "ms", 1),
    "step_mean_ms": (False, "ms", 1), "decode_ms": (False, "ms", 1), "nfe": (None, "", 0),
    "peak_mem_bytes": (False, "MiB", 1), "psnr": (True, "dB", 2), "ssim": (True, "", 3), "lpips": (False, "", 3),
    "fidelity_top1": (True, "%", 0), "fidelity_top5": (True, "%", 0),
    "perceptual_emoji": (False, "", 4), "classifier_top1": (True, "%", 0), "classifier_top5": (True, "%", 0),
    "fd_emoji": (False, "", 2), "kid_emoji": (False, "", 4), "precision_emoji": (True, "", 3),
    "recall_emoji": (True, "", 3), "dist_classifier_top5": (True, "%", 0), "dist_n": (None, "", 0),
    "dist_gen_ms": (False, "ms", 0), "dist_score_ms": (False, "ms", 0),
    "fid": (False, "", 2), "fid_kid": (False, "", 4), "clip_score": (True, "", 2),
}
MINUS = "\u2212"  # deltas print a real minus sign, as wide as the plus


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


def choices_from(models: list, prompt_sets: list, sweeps: list[Mapping],
                 ok_runs: pd.DataFrame) -> tuple[list, list, list, list]:
    """Choices of the model, prompt-set, sweep and run pickers from what the study holds: its models and prompt
    sets (each value once or more; a missing prompt set adds ``CUSTOM_PROMPTS``), its sweeps (oldest first) and
    the successful runs to offer (oldest first; shown newest first)."""
    choices = [ALL] + sorted({m for m in models if m and not is_missing(m)})
    sets = [ALL] + sorted({p for p in prompt_sets if isinstance(p, str) and p})
    if any(is_missing(p) for p in prompt_sets):
        sets.append(CUSTOM_PROMPTS)
    sweep_items = [(ALL, ALL)] + [(label, str(i)) for label, i in sweep_choices(sweeps)]
    return choices, sets, sweep_items, run_choices(ok_runs) if len(ok_runs) else []


def page_text(page: int, per_page: int, total: int) -> str:
    """``"runs 101–200 of 92,052 · page 2 of 921"``: where the Runs table's page lies; ``"no runs"`` for none."""
    if total == 0:
        return "no runs match these filters"
    first = (page - 1) * per_page + 1
    last_page = -(-total // per_page)
    return (f"runs {first:,}–{min(page * per_page, total):,} of {total:,} (newest first) · page {page:,} of "
            f"{last_page:,}")


# ------------------------------------------------------------------------------------------ pure
def _size(row: Mapping) -> str:
    h, w = labels.num(row.get("height")), labels.num(row.get("width"))
    return f"{int(h)}×{int(w)}" if h is not None and w is not None else ""


def run_label(row: Mapping) -> str:
    """``"12: DDIM (model default) · DeepCache N=3 · 10 steps · guidance 3 · 32×32 (failed)"``: a run in menus."""
    parts = [labels.configuration(row)]
    if labels.num(row.get("steps")) is not None:
        parts.append(f"{int(labels.num(row['steps']))} steps")
    if labels.num(row.get("guidance")) is not None:
        parts.append(f"guidance {labels.num(row['guidance']):g}")
    if _size(row):
        parts.append(_size(row))
    if row.get("model") and not is_missing(row.get("model")) and row.get("model") != "emoji-sd":
        parts.append(str(row["model"]).rstrip("/").rsplit("/", 1)[-1])
    status = row.get("status")
    return f"{int(row['id'])}: " + " · ".join(parts) + (f" ({status})" if status and status != "ok" else "")


def run_choices(frame: pd.DataFrame) -> list[tuple[str, int]]:
    """(label, id) of each run, newest first."""
    return [(run_label(r), int(r["id"])) for r in reversed(frame.to_dict("records"))]


def noise_flag(row: Mapping) -> str:
    """``"noisy (IQR 34% of median)"`` when ``labels.noisy`` flags the run's timing, else blank."""
    if labels.noisy(row) is None:
        return ""
    return f"noisy (IQR {labels.num(row['latency_iqr_ms']) / labels.num(row['latency_median_ms']):.0%} of median)"


def _scaled(column: str, factor: float):
    """A row's number times ``factor`` (NaN, shown blank, when it has none)."""
    def value(row: Mapping) -> float:
        f = labels.num(row.get(column))
        return float("nan") if f is None else f * factor
    return value


# Runs-table columns computed from a whole row (the rest are the row's own values)
_DERIVED = {
    "configuration": labels.configuration,
    "noise": noise_flag,
    "knobs_inactive": lambda r: ", ".join(labels.inactive_knobs(r)),
    "size": _size,
    "peak_mem_mib": _scaled("peak_mem_bytes", 1 / 2**20),
    "fidelity_top1": _scaled("fidelity_top1", 100),
    "created_at": lambda r: "" if is_missing(r.get("created_at")) else str(r["created_at"])[:19].replace("T", " "),
}
_ROUND = {"latency_median_ms": 1, "per_image_ms": 1, "latency_iqr_ms": 2, "psnr": 2, "ssim": 3, "fidelity_top1": 0,
          "peak_mem_mib": 1, "guidance": 2}
_TITLES = {**labels.COLUMN_LABELS, "fidelity_top1": "fidelity top-1 (%)"}


def _blank(v: Any) -> bool:
    return is_missing(v) or v == ""


def table_view(frame: pd.DataFrame, newest_first: bool = False) -> pd.DataFrame:
    """The Runs tab: newest first, key columns first (``TABLE_COLUMNS``), titled for people, numbers
    rounded and left numeric (headers sort them), blanks for missing values, and no column that is
    blank for every run shown. ``frame`` is oldest first, as ``runs_frame`` gives it, or ``newest_first``
    (a page of ``RunStore.runs_page``)."""
    records = (frame if newest_first else frame.iloc[::-1]).to_dict("records")
    view = pd.DataFrame(index=range(len(records)))
    for column in TABLE_COLUMNS:
        if column in _DERIVED:
            values = [_DERIVED[column](r) for r in records]
        elif column in frame.columns:
            values = [r.get(column) for r in records]
        else:
            continue
        if column != "id" and all(_blank(v) for v in values):
            continue  # e.g. no run shown has a prompt set
        if column in _ROUND or pd.api.types.is_numeric_dtype(frame.get(column, pd.Series(dtype=object))):
            view[column] = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").round(_ROUND.get(column, 6))
        else:
            view[column] = ["" if _blank(v) else str(v) for v in values]
    return view.rename(columns=lambda c: _TITLES.get(c, c))


def image_pairs(row: Mapping) -> list[tuple[str, int]]:
    """The (prompt, seed) of each stored image of a run, in the store's prompt-major order."""
    return [(p, int(s)) for p in json_list(row.get("prompts")) for s in json_list(row.get("seeds"))]


def seeds_text(seeds: list) -> str:
    """``"0–3, 7"``: seeds with runs of consecutive numbers as ranges."""
    out: list[str] = []
    nums = [int(s) for s in seeds]
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if j == i else f"{nums[i]}{', ' if j == i + 1 else '–'}{nums[j]}")
        i = j + 1
    return ", ".join(out)


def _setting_text(row: Mapping, column: str) -> str:
    """One setting of a run as a person reads it: knobs by name and settings, never JSON."""
    if column == "prompts":
        prompts = [str(p) for p in json_list(row.get("prompts"))]
        return "; ".join(prompts[:4]) + (f" (+{len(prompts) - 4} more)" if len(prompts) > 4 else "")
    if column == "seeds":
        return seeds_text(json_list(row.get("seeds")))
    if column == "sampler":
        return labels.sampler_text(row)
    if column == "knobs":
        return labels.knobs_text(row, empty="none")
    if column == "size":
        return _size(row) or "n/a"
    v = row.get(column)
    if _blank(v):
        return {"timestep_spacing": "the model's own", "flow_shift": "the model's own",
                "batch_size": "all images in one call", "prompt_set": "custom prompts"}.get(column, "n/a")
    f = labels.num(v)
    return f"{f:g}" if f is not None and not isinstance(v, str) else str(v)


def differing_settings(rows: list[Mapping]) -> pd.DataFrame:
    """Only the settings (configuration and setup) that read differently between the runs.

    One row per setting, one column per run (``run <id>``); prompts and seeds are compared too.
    """
    out = []
    for column in ["prompts", "seeds", *SETTING_COLUMNS]:
        values = [_setting_text(r, column) for r in rows]
        if len(set(values)) > 1:
            out.append({"setting": labels.COLUMN_LABELS.get(column, column),
                        **{f"run {int(r['id'])}": v for r, v in zip(rows, values)}})
    return pd.DataFrame(out, columns=["setting", *[f"run {int(r['id'])}" for r in rows]])


def metric_deltas(rows: list[Mapping]) -> pd.DataFrame:
    """Each metric of each run with its unit, and for runs after the first its change vs the first:
    "2,465 ms (+2,282 ms, 13.5× slower)", "30.03 dB (+9.16 dB, better)", "(same)" when the change
    rounds to nothing, "within IQR" when a latency change is inside either run's spread."""
    if not rows:
        return pd.DataFrame()
    first = rows[0]
    out = []
    for column, (higher, unit, digits) in COMPARE_METRICS.items():
        vals = [labels.num(r.get(column)) for r in rows]
        if all(v is None for v in vals):
            continue
        if column == "peak_mem_bytes":
            vals = [None if v is None else v / 2**20 for v in vals]
        name = labels.COLUMN_LABELS.get(column, column).split(" (")[0]
        if column == "psnr" and len({labels.psnr_method(r) for r in rows}) > 1:  # pooled vs an older mean of dB
            name += " (methods differ: " + "; ".join(f"run {int(r['id'])}: {labels.psnr_method(r)}" for r in rows) + ")"
        line = {"metric": name, f"run {int(first['id'])}": _value(vals[0], unit, digits)}
        for r, v in zip(rows[1:], vals[1:]):
            noise = None
            if column in ("latency_median_ms", "per_image_ms"):  # a change within either run's IQR is no finding
                iqrs = [(labels.num(x.get("latency_iqr_ms")), labels.num(x.get("n_images")) or 1) for x in (first, r)]
                noise = max([i / (n if column == "per_image_ms" else 1) for i, n in iqrs if i is not None],
                            default=None)
            line[f"run {int(r['id'])}"] = _value(v, unit, digits) + _delta(vals[0], v, higher, unit, digits, noise)
        out.append(line)
    return pd.DataFrame(out)


def _ms_digits(v: float) -> int:
    return 2 if abs(v) < 10 else (1 if abs(v) < 1000 else 0)


def _value(v: float | None, unit: str, digits: int) -> str:
    """A metric with its unit, fixed decimals and thousands separators: "2,465 ms", "0.968", "100%"."""
    if v is None:
        return "n/a"
    if unit == "%":
        return f"{v * 100:.0f}%"
    text = f"{v:,.{_ms_digits(v) if unit == 'ms' else digits}f}"
    return f"{text} {unit}" if unit else text


def _signed(d: float, digits: int) -> str:
    return f"{d:+,.{digits}f}".replace("-", MINUS)


def _delta(a: float | None, b: float | None, higher: bool | None, unit: str, digits: int,
           noise: float | None = None) -> str:
    """`` (+2,282 ms, 13.5× slower)``: the change from ``a`` to ``b`` in the metric's unit, relative where
    that helps (times and memory), and whether it is better; `` (same)`` when it rounds to nothing."""
    if a is None or b is None:
        return ""
    d = b - a
    if unit == "%":
        d, digits, shown_unit = d * 100, 0, "pts"
    else:
        digits = _ms_digits(d) if unit == "ms" else digits
        shown_unit = unit
    if round(d, digits) == 0:
        return " (same)"
    parts = [_signed(d, digits) + (f" {shown_unit}" if shown_unit else "")]
    if noise is not None and abs(b - a) <= noise:
        return f" ({parts[0]}, within IQR)"
    if unit in ("ms", "MiB") and a > 0 and b > 0:
        ratio = b / a
        if unit == "ms" and not 1 / 1.5 < ratio < 1.5:
            return f" ({parts[0]}, {ratio:.1f}× slower)" if ratio > 1 else f" ({parts[0]}, {1 / ratio:.1f}× faster)"
        pct = (b - a) / a * 100
        if round(pct) != 0:
            parts.append(f"{pct:+.0f}%".replace("-", MINUS))
    if higher is not None:
        parts.append("better" if (d > 0) == higher else "worse")
    return " (" + ", ".join(parts) + ")"
