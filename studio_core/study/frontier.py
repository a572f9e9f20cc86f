"""Quality-versus-cost frontiers: which runs no other run beats on both axes, within one setup, and
which only seem beaten because their timing is noisy.

A front compares like with like: runs of different models, devices, thread counts, resolutions or
references are never on one front (a PSNR against one reference says nothing against another, and a
latency on one machine, or with another thread count, nothing about another). ``classify``,
``frontier_table`` and the page's figure split the runs by ``SETUP_COLUMNS`` and judge each setup on
its own; ``setup_label`` names a setup for people.

Within a setup every run gets a ``front_status``:

* ``front``: on the strict Pareto set of the medians (``pareto_front``, the front as it always was);
* ``dominated``: another run of the setup is better *beyond the noise* (``dominates_beyond_noise``);
* ``tied``: beaten on the medians, but only within the noise: its latency interval overlaps the
  better run's, so a rerun could well put it on the front.

The noise is the latency's interquartile range (see ``cost_interval`` for why not a bootstrap). Quality
is treated as exact: runs of one setup score the same prompts and seeds against the same reference
images, and a seeded pipeline gives the same images on a rerun, so a PSNR difference between two runs
is measured, not sampled. ``psnr_std`` and ``ssim_std`` are the spread over a run's images (how much
prompts differ), not the uncertainty of the mean, so they are not used as noise.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping

import pandas as pd

from studio_core.store.rows import is_missing, json_list

__all__ = ["COSTS", "LATENCY_COSTS", "QUALITIES", "SETUP_COLUMNS", "STATUSES", "classify", "comparable",
           "cost_interval",
           "dominates_beyond_noise", "frontier_table", "pareto_front", "setup_label", "setups"]

# metric column -> True when higher is better
QUALITIES: dict[str, bool] = {
    "psnr": True, "ssim": True, "lpips": False, "fidelity_top1": True, "fidelity_top5": True,
    # the emoji feature network's (issue 19): distribution set, perceptual distance, classifier; standard metrics
    "fd_emoji": False, "kid_emoji": False, "precision_emoji": True, "recall_emoji": True, "perceptual_emoji": False,
    "classifier_top5": True, "dist_classifier_top5": True, "fid": False, "clip_score": True,
}
# cost column -> label (lower is always better; the page shows memory in MiB)
COSTS: dict[str, str] = {
    "latency_median_ms": "median latency (ms)", "per_image_ms": "latency per image (ms)",
    "peak_mem_bytes": "peak memory above the run's baseline (MiB)", "step_mean_ms": "mean time per step (ms)",
    "energy_j_per_image": "energy per image (J)",
}


def comparable(runs: pd.DataFrame, cost: str) -> pd.DataFrame:
    """The runs whose ``cost`` means what its axis says: for memory, runs that recorded how
    (``peak_mem_method``: the peak above the baseline taken before the run); older runs stored the whole
    process's peak, which depends on what ran before, and are left out rather than mixed in."""
    if cost != "peak_mem_bytes" or runs.empty:
        return runs
    if "peak_mem_method" not in runs.columns:
        return runs.iloc[0:0]
    method = runs["peak_mem_method"]
    return runs[method.notna() & (method.astype(str) != "")]
# costs whose noise is the run's latency spread (per image: the same spread over its images); the others
# (memory, per-step time: one median with no recorded spread) are compared as exact values
LATENCY_COSTS = ("latency_median_ms", "per_image_ms")
# a run's place against the others of its setup, best first
STATUSES = ("front", "tied", "dominated")


def pareto_front(runs: pd.DataFrame | list[dict], x: str = "latency_median_ms", y: str = "psnr",
                 higher_is_better: bool | None = None) -> pd.DataFrame:
    """Rows not dominated by another row (lower-or-equal ``x`` and better-or-equal ``y``), by ``x``.

    Strict on the values: no noise is allowed for (``classify`` does that). Rows missing either value
    are left out. Among rows with identical (x, y) the first is kept.
    """
    df = runs if isinstance(runs, pd.DataFrame) else pd.DataFrame(runs)
    _check_columns(df, x, y)
    better_high = QUALITIES.get(y, True) if higher_is_better is None else higher_is_better
    d = df[pd.to_numeric(df[x], errors="coerce").notna() & pd.to_numeric(df[y], errors="coerce").notna()]
    if d.empty:
        return d.copy()
    key = d[y].astype(float) if better_high else -d[y].astype(float)
    order = sorted(range(len(d)), key=lambda i: (float(d[x].iloc[i]), -float(key.iloc[i]), i))
    keep, best = [], float("-inf")
    for i in order:
        if float(key.iloc[i]) > best:
            keep.append(i)
            best = float(key.iloc[i])
    return d.iloc[keep].copy()


def _check_columns(df: pd.DataFrame, x: str, y: str) -> None:
    if x not in df.columns or y not in df.columns:
        missing = [c for c in (x, y) if c not in df.columns]
        raise KeyError(f"no column {missing[0]!r} in the runs (have {', '.join(map(str, df.columns))})")


def _num(v: Any) -> float | None:
    if is_missing(v) or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


# ------------------------------------------------------------------------------------------ noise
def cost_interval(row: Mapping, x: str = "latency_median_ms") -> tuple[float, float] | None:
    """(low, high): where the run's cost ``x`` would likely fall on a rerun; None without a value.

    For a latency it is the interquartile range of the timed repeats: Q1..Q3 of ``latencies_ms`` when
    two or more are recorded (the quartiles its IQR was computed with, and the bars the page draws),
    else median ± IQR/2, clipped to the fastest and slowest repeat. Not a bootstrap CI of the median:
    with the default 3 repeats a resampled median can only be one of the three values, so its 95%
    interval is just [min, max] (each end drawn with probability 7/27), wider and no better founded;
    the IQR is what every run records, what the figure shows and what Compare calls "within the IQR".
    Two runs whose IQRs do not overlap differ beyond the usual scatter of their repeats (a rule of
    thumb, not a significance test). A run with one timed repeat has no IQR: its interval is its point,
    so it is compared by its value alone. ``per_image_ms`` takes the latency interval scaled as its
    median is. Other costs (memory, per-step time) have no recorded spread: the interval is the value.
    """
    value = _num(row.get(x))
    if value is None:
        return None
    med = _num(row.get("latency_median_ms"))
    if x not in LATENCY_COSTS or med is None:
        return value, value
    lat = [f for f in map(_num, json_list(row.get("latencies_ms"))) if f is not None]
    if len(lat) > 1:
        q = statistics.quantiles(lat, n=4, method="inclusive")  # as measure.timing computes the IQR
        lo, hi = q[0], q[2]
    elif _num(row.get("latency_iqr_ms")) is not None:
        half = _num(row.get("latency_iqr_ms")) / 2
        lo, hi = med - half, med + half
        fastest, slowest = _num(row.get("latency_min_ms")), _num(row.get("latency_max_ms"))
        if fastest is not None and slowest is not None and fastest <= med <= slowest:
            lo, hi = max(lo, fastest), min(hi, slowest)
    else:
        return value, value
    scale = value / med if med else 1.0  # per image: the median over its images
    return min(lo * scale, value), max(hi * scale, value)  # the interval always holds the point


def dominates_beyond_noise(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Whether run ``a`` beats run ``b`` beyond the noise; each is (cost low, cost high, quality), quality
    oriented so that higher is better. ``a`` must cost no more than ``b`` whatever the noise (its high end
    at or below ``b``'s low end) and be no worse in quality, and be better in one of the two: its cost
    interval entirely below ``b``'s, or its quality higher. So two runs of equal latency within the
    noise never dominate each other, however their quality differs; with no spread (memory, one repeat)
    this is the strict Pareto rule."""
    a_lo, a_hi, a_q = a
    b_lo, b_hi, b_q = b
    return a_hi <= b_lo and a_q >= b_q and (a_hi < b_lo or a_q > b_q)


def classify(runs: pd.DataFrame | list[dict], x: str = "latency_median_ms", y: str = "psnr",
             higher_is_better: bool | None = None) -> pd.DataFrame:
    """Every run with both values, with its ``front_status`` (``STATUSES``) against the runs of its setup.

    Added columns: ``cost_low`` and ``cost_high`` (``cost_interval``), ``tied_with`` (for a tied run: the
    front run nearest in cost that beats it on the medians, within the noise) and ``dominated_by`` (for a
    dominated run: a run that beats it beyond the noise, a front one when there is one), each a run
    ``id`` (the row's index label without an ``id`` column). Runs of different setups are never compared.
    Rows missing either value are left out; the rest keep their order and index.
    """
    df = runs if isinstance(runs, pd.DataFrame) else pd.DataFrame(runs)
    _check_columns(df, x, y)
    better_high = QUALITIES.get(y, True) if higher_is_better is None else higher_is_better
    d = df[pd.to_numeric(df[x], errors="coerce").notna() & pd.to_numeric(df[y], errors="coerce").notna()]
    index = d.index
    d = d.reset_index(drop=True)
    ids = list(d["id"]) if "id" in d.columns else list(index)
    n = len(d)
    status: list[str | None] = [None] * n
    tied_with: list[Any] = [None] * n
    dominated_by: list[Any] = [None] * n
    lows, highs = [0.0] * n, [0.0] * n
    for i, r in enumerate(d.to_dict("records")):
        lows[i], highs[i] = cost_interval(r, x)
    cost = [float(v) for v in d[x]]
    quality = [float(v) if better_high else -float(v) for v in d[y]]
    for _, group in setups(d):
        members = list(group.index)
        front = set(pareto_front(group, x, y, higher_is_better=better_high).index)
        for b in members:
            if b in front:
                status[b] = "front"
                continue
            beaten = [a for a in members if a != b and dominates_beyond_noise(
                (lows[a], highs[a], quality[a]), (lows[b], highs[b], quality[b]))]
            if beaten:
                status[b] = "dominated"
                dominated_by[b] = ids[min(beaten, key=lambda a: (a not in front, cost[a], -quality[a], a))]
                continue
            status[b] = "tied"
            over = [a for a in front if cost[a] <= cost[b] and quality[a] >= quality[b]]
            tied_with[b] = ids[max(over, key=lambda a: (cost[a], quality[a], -a))]
    out = d.assign(front_status=status, cost_low=lows, cost_high=highs,
                   tied_with=pd.Series(tied_with, dtype="object"), dominated_by=pd.Series(dominated_by, dtype="object"))
    out.index = index
    return out


# ------------------------------------------------------------------------------------------ setups
# what must be equal for two runs to share a front: model, machine (its device name: an H100 run and an A100 run
# never share one), thread count (it changes CPU latency), resolution, the reference scored against, and whether the
# CPU was shared with other sweep workers while it was timed (``shared_cpu``: a parallel sweep on one CPU machine)
SETUP_COLUMNS = ("model", "device_name", "threads", "height", "width", "reference_id", "shared_cpu")


def _key_part(v: Any, column: str = "") -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if column == "shared_cpu":  # one worker, or a run from before sweeps shared machines: the CPU was its own
        return int(v) if float(v) > 1 else None
    return int(v) if isinstance(v, float) and v.is_integer() else v


def setups(runs: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """The runs split by setup (``SETUP_COLUMNS``; a missing column counts as one value), largest first."""
    if runs.empty:
        return []
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs.to_dict("records")):
        groups.setdefault(tuple(_key_part(r.get(c), c) for c in SETUP_COLUMNS), []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0])))
    return [(key, runs.iloc[idx]) for key, idx in ordered]


def setup_label(key: tuple, among: list[tuple] | None = None) -> str:
    """``"emoji-sd · CPU ... · 2 threads · 32x32 px · reference #1"``: one setup as people read it; with
    ``among`` (all the setups shown), only the parts that tell it from the others ("reference #2")."""
    v = dict(zip(SETUP_COLUMNS, key))
    v.setdefault("shared_cpu", None)  # a key from before the column
    if among and len(among) > 1:
        differ = {c for i, c in enumerate(SETUP_COLUMNS) if len({k[i] for k in among}) > 1}
        if "height" in differ or "width" in differ:
            differ |= {"height", "width"}
    else:
        differ = set(SETUP_COLUMNS) - ({"shared_cpu"} if not v["shared_cpu"] else set())  # said only when shared
    model = str(v["model"] or "unknown model")
    model = model.rstrip("/").rsplit("/", 1)[-1] or model  # a folder path: its name
    size = "size unknown" if v["height"] is None or v["width"] is None else f"{v['height']}x{v['width']} px"
    ref = "no reference" if v["reference_id"] is None else f"reference #{v['reference_id']}"
    threads = "threads unknown" if v["threads"] is None else f"{v['threads']} thread" + (
        "" if v["threads"] == 1 else "s")
    shared = (f"CPU shared by {v['shared_cpu']} workers" if v["shared_cpu"] else "CPU not shared")
    parts = {"model": model, "device_name": str(v["device_name"] or "unknown device"), "threads": threads,
             "height": size, "reference_id": ref, "shared_cpu": shared}
    return " · ".join(text for column, text in parts.items() if column in differ)


def frontier_table(store, x: str = "latency_median_ms", y: str = "psnr", *, sweep_id: int | None = None,
                   filters: dict[str, Any] | None = None, include_dominated: bool = False) -> pd.DataFrame:
    """The store's successful runs on or tied with their setup's front (``classify``; its ``setup`` column
    names the setup, ``front_status`` says which), by setup and then cost; ``include_dominated`` keeps
    the dominated runs too. Optionally within one sweep and column filters."""
    frame = store.runs_frame(matching={"status": "ok", **({} if sweep_id is None else {"sweep_id": sweep_id})})
    for column, value in (filters or {}).items():
        if column not in frame.columns:
            raise KeyError(f"cannot filter on {column!r}: no such column")
        frame = frame[frame[column] == value]
    frame = comparable(frame, x)
    keep = STATUSES if include_dominated else ("front", "tied")
    tables = []
    for key, runs in setups(frame):
        judged = classify(runs, x, y)
        judged = judged[judged["front_status"].isin(keep)]
        if not judged.empty:
            tables.append(judged.assign(setup=setup_label(key), _cost=pd.to_numeric(judged[x]))
                          .sort_values("_cost", kind="stable").drop(columns="_cost"))
    if not tables:
        return pd.DataFrame(columns=[*frame.columns, "front_status", "cost_low", "cost_high", "tied_with",
                                     "dominated_by", "setup"])
    return pd.concat(tables, ignore_index=True)
