"""How a run is named for people: configurations, samplers, knob settings, column titles and numbers.

The page (cards, hovers, tables), the CLI tables and the sweep grids all name runs through these
functions, so a reader never meets ``nan``, ``None``, a raw dict or JSON: "DDIM (model default) ·
DeepCache N=3 · ToMe 50%", "median latency (ms)", "12.3 ms", "n/a". Pure functions of run rows
(dicts from ``RunStore.get_run`` or records of ``runs_frame``); knob settings are named by each
knob's own ``Knob.label``. No torch import.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from typing import Any, Iterable, Mapping

from studio_core.knobs import KNOBS
from studio_core.knobs.sampler import SAMPLERS
from studio_core.store.rows import is_missing

__all__ = [
    "COLUMN_LABELS",
    "NOISY_IQR_RATIO",
    "PSNR_OLDER",
    "PSNR_POOLED",
    "SSIM_METHOD",
    "axis_label",
    "axis_value",
    "configuration",
    "inactive_knobs",
    "knob_items",
    "knobs_text",
    "mib",
    "ms",
    "energy_text",
    "memory_text",
    "noisy",
    "not_converged",
    "num",
    "number",
    "psnr_is_pooled",
    "psnr_method",
    "psnr_title",
    "sampler_is_model_default",
    "sampler_text",
    "ssim_method",
    "timed_repeats",
]

# column -> what a person reads as its title (tables, axes, CSV-free views); units in parentheses
COLUMN_LABELS: dict[str, str] = {
    "id": "run", "created_at": "created", "status": "status", "sweep_id": "sweep", "model": "model",
    "model_family": "model family", "lineage": "lineage",
    "prompt_set": "prompt set", "n_images": "images", "steps": "steps", "sampler": "sampler",
    "configuration": "configuration", "guidance": "guidance", "precision": "precision", "height": "height (px)",
    "width": "width (px)", "size": "size (px)", "knobs_label": "knobs", "knobs": "knobs",
    "latency_median_ms": "median latency (ms)", "latency_iqr_ms": "latency IQR (ms)",
    "latency_min_ms": "fastest repeat (ms)", "latency_max_ms": "slowest repeat (ms)",
    "per_image_ms": "per image (ms)", "cold_ms": "cold call (ms)", "load_ms": "model load (ms)",
    "text_encode_ms": "text encode (ms)", "denoise_ms": "denoise (ms)", "step_mean_ms": "per step (ms)",
    "decode_ms": "VAE decode (ms)", "nfe": "denoiser calls", "peak_mem_bytes": "peak memory (MiB)",
    "peak_mem_mib": "peak memory (MiB)", "psnr": "PSNR (pooled, dB)", "ssim": "SSIM", "lpips": "LPIPS",
    "psnr_image_mean": "PSNR, mean of per-image dB", "psnr_std": "PSNR per-image std (dB)",
    "psnr_min": "worst image PSNR (dB)", "psnr_max": "best image PSNR (dB)", "identical_images": "identical images",
    "psnr_method": "PSNR method", "ssim_std": "SSIM std", "ssim_method": "SSIM method",
    "fidelity_top1": "fidelity top-1", "fidelity_top5": "fidelity top-5", "knobs_inactive": "did nothing",
    "noise": "timing noise", "error": "error", "device_name": "device", "threads": "threads",
    "batch_size": "batch size", "timestep_spacing": "timestep spacing", "flow_shift": "flow shift",
    "scheduler_class": "scheduler class",
    "warmup": "warm-up calls", "repeats": "timed repeats", "torch_version": "torch", "device": "device setting",
    "diffusers_version": "diffusers", "git_commit": "commit", "front_status": "frontier",
    # measurement (issue 18): calls made, convergence, memory method, energy
    "warmup_done": "warm-up calls made", "repeats_done": "timed repeats made", "timing_converged": "timing converged",
    "latency_ci_low_ms": "median 95% CI low (ms)", "latency_ci_high_ms": "median 95% CI high (ms)",
    "timing_note": "timing note", "mem_baseline_bytes": "memory baseline (MiB)", "peak_mem_method": "memory method",
    "energy_j_per_image": "energy per image (J)", "energy_method": "energy method", "energy_note": "energy note",
    # quality on the emoji feature network and from local standard weights (issue 19)
    "distribution": "distribution set (images)", "dist_n": "distribution set (images)",
    "dist_gen_ms": "distribution set generation (ms)", "dist_score_ms": "distribution metrics (ms)",
    "dist_method": "distribution method", "fd_emoji": "FD-emoji", "kid_emoji": "KID-emoji",
    "kid_emoji_std": "KID-emoji std", "precision_emoji": "precision (emoji features)",
    "recall_emoji": "recall (emoji features)", "dist_classifier_top1": "classifier top-1 (distribution set)",
    "dist_classifier_top5": "classifier top-5 (distribution set)", "perceptual_emoji": "perceptual distance (emoji)",
    "perceptual_emoji_std": "perceptual distance std", "classifier_top1": "classifier top-1",
    "classifier_top5": "classifier top-5", "fid": "FID (local weights)", "fid_kid": "KID (local Inception)",
    "clip_score": "CLIP-score (local weights)",
}

# How quality figures were computed; measure/quality.py stores the first and the last with every run.
# A row without ``psnr_method`` was scored before pooling: its ``psnr`` is a mean of per-image dB, with
# identical images counted as 100 dB. SSIM has been torchmetrics' variant throughout.
PSNR_POOLED = "pooled MSE"
PSNR_OLDER = "mean of per-image dB (older run)"
SSIM_METHOD = "SSIM (torchmetrics: Gaussian 11x11, sigma 1.5, reflect-padded full map, RGB mean)"

# A timing is flagged noisy when its IQR is more than this fraction of its median. Repeats of one
# configuration on a quiet machine keep IQR/median under a few percent (benchmarks/results); a quarter
# means the repeats disagree by more than the differences most knobs make, so the median alone misleads.
NOISY_IQR_RATIO = 0.25


# ------------------------------------------------------------------------------------------ numbers
def num(v: Any) -> float | None:
    """A finite float, or None for blanks, NaN, infinities and text."""
    if isinstance(v, bool):
        return float(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def number(v: Any, digits: int = 2, unit: str = "") -> str:
    """``12.35 ms`` / ``1,234 ms`` / ``n/a``: fixed decimals, thousands separated, never ``nan``."""
    f = num(v)
    if f is None:
        return "n/a"
    text = f"{f:,.0f}" if abs(f) >= 1000 else f"{f:.{digits}f}"
    return f"{text} {unit}".rstrip() if unit else text


def ms(v: Any) -> str:
    """Milliseconds for reading: 2 decimals under 10, 1 under 1000, whole above."""
    f = num(v)
    if f is None:
        return "n/a"
    return number(f, 2 if abs(f) < 10 else (1 if abs(f) < 1000 else 0))


def mib(v_bytes: Any) -> str:
    """Bytes as ``123.4 MiB`` (or ``1.23 GiB``)."""
    f = num(v_bytes)
    if f is None:
        return "n/a"
    return f"{f / 2**30:.2f} GiB" if f >= 2**30 else f"{f / 2**20:.1f} MiB"


def noisy(row: Mapping) -> str | None:
    """Why this run's timing should not be trusted alone, or None: its IQR is over ``NOISY_IQR_RATIO``
    of its median (with at least 3 repeats; fewer have no spread to judge)."""
    med, iqr = num(row.get("latency_median_ms")), num(row.get("latency_iqr_ms"))
    n = timed_repeats(row)
    if med is None or iqr is None or med <= 0 or n < 3:
        return None
    if iqr / med > NOISY_IQR_RATIO:
        return (f"noisy timing: IQR {ms(iqr)} ms is {iqr / med:.0%} of the median (over "
                f"{NOISY_IQR_RATIO:.0%}); rerun on a quieter machine or with more repeats")
    return None



def timed_repeats(row: Mapping) -> int:
    """How many repeats were timed: ``repeats_done``, else the fixed ``repeats`` asked (0 is "auto"), else
    the latencies' count."""
    latencies = row.get("latencies_ms")
    if isinstance(latencies, str):
        try:
            latencies = json.loads(latencies)
        except ValueError:
            latencies = None
    return int(num(row.get("repeats_done")) or num(row.get("repeats"))
               or (len(latencies) if isinstance(latencies, list) else 0))  # NaN or None: a frame's missing value


def not_converged(row: Mapping) -> str | None:
    """Why this run's timing had not settled when it stopped (``timing_converged`` 0), or None: what its
    ``timing_note`` says, e.g. "not converged: the median's 95% CI is ±8.7% after 30 repeats"."""
    if num(row.get("timing_converged")) != 0:
        return None
    return row.get("timing_note") or f"not converged after {timed_repeats(row)} repeats"


_MEMORY_COUNTERS = {"cpu_peak_rss": "process RSS, reset checked", "cuda_max_memory_allocated": "CUDA allocator"}


def memory_text(row: Mapping) -> str | None:
    """Peak memory as measured: "+123.4 MiB above a 1.20 GiB baseline (process RSS, reset checked)"; an
    older run (no ``peak_mem_method``) is an absolute peak and says so; "unavailable: why"; None: not run."""
    kind = str(row.get("peak_mem_kind") or "")
    peak = num(row.get("peak_mem_bytes"))
    if kind.startswith("unavailable"):
        return kind
    if peak is None:
        return None
    if not row.get("peak_mem_method"):
        return f"{mib(peak)} (older run: absolute, the whole process's peak)"
    return (f"+{mib(peak)} above a {mib(row.get('mem_baseline_bytes'))} baseline "
            f"({_MEMORY_COUNTERS.get(kind, kind or 'peak')})")


def energy_text(row: Mapping) -> str | None:
    """Energy per image with its counter ("12.3 J per image (NVML, less idle)"), "unavailable: why", or
    None for a run measured before energy was."""
    j = num(row.get("energy_j_per_image"))
    if j is not None:
        counter = str(row.get("energy_method") or "counter").split(" (")[0]
        return f"{number(j, 3 if abs(j) < 10 else 1)} J per image ({counter}, less idle power)"
    note = row.get("energy_note")
    return str(note) if note else None

def psnr_method(row: Mapping) -> str:
    """How the row's ``psnr`` was computed: its stored ``psnr_method``, or ``PSNR_OLDER`` for a row scored
    before the studio pooled the MSE (never claim an older figure is pooled)."""
    method = row.get("psnr_method")
    return PSNR_OLDER if is_missing(method) or not method else str(method)


def psnr_is_pooled(row: Mapping) -> bool:
    """True when the row's ``psnr`` is the pooled-MSE figure."""
    return psnr_method(row) == PSNR_POOLED


def psnr_title(rows: Iterable[Mapping]) -> str:
    """The title of a PSNR column or axis over ``rows``: ``COLUMN_LABELS["psnr"]`` (pooled) when every row
    is pooled, else one that says older rows hold the mean of per-image dB."""
    if all(psnr_is_pooled(r) for r in rows):
        return COLUMN_LABELS["psnr"]
    return "PSNR (dB; pooled, or mean of per-image dB for older runs)"


def ssim_method(row: Mapping) -> str:
    """The SSIM variant of the row: its stored ``ssim_method``, else ``SSIM_METHOD`` (older rows used the same)."""
    method = row.get("ssim_method")
    return SSIM_METHOD if is_missing(method) or not method else str(method)


# ------------------------------------------------------------------------------------------ knobs
def knob_items(row_or_knobs: Any) -> dict[str, dict]:
    """The run's optional knobs and their settings: from a row's ``knobs`` (JSON text or dict), or a
    knobs dict itself."""
    v = row_or_knobs
    optional = {name for name, knob in KNOBS.items() if not knob.builtin_field}  # the keys of ``spec.knobs``
    if isinstance(v, Mapping) and not set(v) <= optional:  # a run row: a knobs dict has only optional knobs
        v = v.get("knobs")
    if isinstance(v, str):
        try:
            v = json.loads(v) if v.strip() else {}
        except ValueError:
            return {}
    return {str(k): (s if isinstance(s, dict) else {}) for k, s in v.items()} if isinstance(v, Mapping) else {}


def _knob_label(name: str, settings: dict) -> str:
    knob = KNOBS.get(name)
    if knob is None:
        return name
    try:
        return knob.label(knob.parse(settings))
    except Exception:  # a row written by an older knob: its name, never a traceback
        return knob.short_title


def knobs_text(row_or_knobs: Any, empty: str = "") -> str:
    """``"DeepCache N=3 · ToMe 50%"`` (apply order), or ``empty`` when the run uses no optional knob."""
    items = knob_items(row_or_knobs)
    order = sorted(items, key=lambda k: (KNOBS[k].order if k in KNOBS else 999, k))
    return " · ".join(_knob_label(k, items[k]) for k in order) or empty


def _reports(row: Mapping) -> list[dict]:
    r = row.get("knob_report")
    if isinstance(r, str):
        try:
            r = json.loads(r)
        except ValueError:
            return []
    return [x for x in r if isinstance(x, dict)] if isinstance(r, list) else []


def sampler_is_model_default(row: Mapping) -> bool:
    """True when the run used the model's own scheduler unchanged: ``default``, or a named sampler that
    is the same (its report says it changed nothing)."""
    sampler = row.get("sampler")
    if is_missing(sampler) or sampler in ("", "default"):
        return True
    for r in _reports(row):
        if r.get("knob") == "sampler":
            return not r.get("active")
    return "sampler" in _names(row.get("knobs_inactive"))


def _scheduler_name(cls: Any) -> str:
    if is_missing(cls) or not cls:
        return "the model's own sampler"
    for name, sd in SAMPLERS.items():
        if sd.cls == cls and not sd.overrides:
            return name
    return str(cls).removesuffix("Scheduler") or str(cls)


def sampler_text(row: Mapping) -> str:
    """``"DDIM (model default)"`` for the model's own scheduler, whether asked for as ``default`` or by
    name; otherwise the sampler's name (with its timestep spacing and flow shift when set: "Euler (flow)
    (shift 2)")."""
    sampler = row.get("sampler")
    if is_missing(sampler) or sampler in ("", "default"):
        name = _scheduler_name(row.get("scheduler_class"))
    else:
        name = str(sampler)
    spacing, shift = row.get("timestep_spacing"), num(row.get("flow_shift"))
    extras = ([] if is_missing(spacing) or not spacing else [f"{spacing} spacing"]) + (
        [] if shift is None else [f"shift {shift:g}"])
    if sampler_is_model_default(row):
        if name.endswith(")"):  # "Euler (flow)" -> "Euler (flow, model default)"
            return f"{name[:-1]}, {', '.join(['model default', *extras])})"
        return f"{name} ({', '.join(['model default', *extras])})"
    return name + (f" ({', '.join(extras)})" if extras else "")


def _names(text: Any) -> list[str]:
    return [] if is_missing(text) or not text else [k.strip() for k in str(text).split(",") if k.strip()]


def inactive_knobs(row: Mapping) -> list[str]:
    """Knobs asked to do something that did nothing (titles, e.g. "DeepCache N=1"): never the sampler
    left at the model's own, which is a baseline, not a failure."""
    items = knob_items(row)
    out = []
    for name in _names(row.get("knobs_inactive")):
        if name == "sampler":
            continue
        out.append(_knob_label(name, items[name]) if name in items else
                   (KNOBS[name].short_title if name in KNOBS else name))
    return out


def configuration(row: Mapping) -> str:
    """Sampler and active knobs (and precision other than fp32): what makes two runs of one model at one
    step count different. ``"DPM++ 2M · fp16 · DeepCache N=3"``."""
    parts = [sampler_text(row)]
    precision = row.get("precision")
    if not is_missing(precision) and precision and precision != "fp32":
        parts.append(str(precision))
    knobs = knobs_text(row)
    if knobs:
        parts.append(knobs)
    return " · ".join(parts)


# ------------------------------------------------------------------------------------------ sweep axes
def _setting_title(knob_name: str, setting: str) -> str:
    """A knob setting's title ("interval", "gate step"): the field's ``title`` metadata or its name."""
    knob = KNOBS.get(knob_name)
    for f in fields(knob.Settings) if knob is not None else ():
        if f.name == setting:
            return (f.metadata or {}).get("title") or setting.replace("_", " ")
    return setting.replace("_", " ")


def axis_label(axis: str) -> str:
    """A sweep axis as people name it: "DeepCache: interval" for ``knobs.deepcache.interval``, "steps",
    "timestep spacing", "batch size"; never a dotted path."""
    parts = axis.split(".")
    if len(parts) == 3 and parts[0] == "knobs":
        knob = KNOBS.get(parts[1])
        title = knob.short_title if knob is not None else parts[1].replace("_", " ")
        return f"{title}: {_setting_title(parts[1], parts[2])}"
    label = COLUMN_LABELS.get(axis, axis.replace("_", " ").replace(".", " "))
    return label.removesuffix(" (px)")


def axis_value(axis: str, value: Any) -> str:
    """One value of a sweep axis for a grid header or a CLI line: ``off`` (the knob left out), ``default``
    for None, ``true``/``false``, ``7.5``, and a whole knob set (the ``knobs`` axis) by its knob labels."""
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return knobs_text(dict(value), empty="no knobs") if axis == "knobs" else ", ".join(
            f"{k} {axis_value(k, v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(axis_value(axis, v) for v in value)
    return str(value)
