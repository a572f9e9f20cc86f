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
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
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
    key = d[y].astype(float).to_numpy()
    return d.iloc[_front_order(d[x].astype(float).to_numpy(), key if better_high else -key)].copy()


def _front_order(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Positions of the strict Pareto front of (cost, quality; higher quality is better), by cost: rows sorted by
    cost, then best quality, then position, each kept when its quality beats every row before it. One sort."""
    order = np.lexsort((np.arange(len(cost)), -quality, cost))
    ranked = quality[order]
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], ranked[:-1]]))
    return order[ranked > best_before]


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
             higher_is_better: bool | None = None, intervals: list[tuple[float, float]] | None = None,
             groups: list[tuple[tuple, pd.DataFrame]] | None = None) -> pd.DataFrame:
    """Every run with both values, with its ``front_status`` (``STATUSES``) against the runs of its setup.

    Added columns: ``cost_low`` and ``cost_high`` (``cost_interval``), ``tied_with`` (for a tied run: the
    front run nearest in cost that beats it on the medians, within the noise) and ``dominated_by`` (for a
    dominated run: a run that beats it beyond the noise, a front one when there is one), each a run
    ``id`` (the row's index label without an ``id`` column). Runs of different setups are never compared.
    Rows missing either value are left out; the rest keep their order and index. ``intervals``, one
    ``cost_interval`` per row of ``runs`` (the page keeps them by run id across refreshes), saves computing them;
    ``groups``, ``setups(runs)`` of runs that all have both values (the figure splits them anyway), saves splitting.

    Each setup is judged by sorting, not by comparing every pair (``_judge``), so a study of 100k runs is
    classified in a fraction of a second with the results the pairwise rule gives.
    """
    df = runs if isinstance(runs, pd.DataFrame) else pd.DataFrame(runs)
    _check_columns(df, x, y)
    better_high = QUALITIES.get(y, True) if higher_is_better is None else higher_is_better
    has_both = (pd.to_numeric(df[x], errors="coerce").notna()
                & pd.to_numeric(df[y], errors="coerce").notna()).to_numpy()
    d = df[has_both]
    index = d.index
    d = d.reset_index(drop=True)
    n = len(d)
    ids = np.empty(n, dtype=object)  # the run ids named, as Python values
    ids[:] = d["id"].tolist() if "id" in d.columns else index.tolist()
    if intervals is None:
        intervals = [cost_interval(r, x) for r in d.to_dict("records")]
    elif not has_both.all():
        intervals = [iv for iv, keep in zip(intervals, has_both) if keep]
    bounds = np.array(intervals, dtype=float).reshape(n, 2)
    lows, highs = bounds[:, 0], bounds[:, 1]
    cost = d[x].astype(float).to_numpy() if n else np.zeros(0)
    quality = d[y].astype(float).to_numpy() if n else np.zeros(0)
    quality = quality if better_high else -quality
    status = np.full(n, None, dtype=object)
    tied_with = np.full(n, None, dtype=object)
    dominated_by = np.full(n, None, dtype=object)
    for _, group in setups(d) if groups is None else groups:
        members = group.index.to_numpy() if groups is None else index.get_indexer(group.index)
        judged = _judge(cost[members], quality[members], lows[members], highs[members])
        status[members] = np.array(STATUSES, dtype=object)[judged.status]
        for column, positions in ((tied_with, judged.tied_with), (dominated_by, judged.dominated_by)):
            named = positions >= 0
            column[members[named]] = ids[members[positions[named]]]
    out = d.assign(front_status=status.tolist(), cost_low=lows, cost_high=highs, tied_with=tied_with,
                   dominated_by=dominated_by)
    out.index = index
    return out


@dataclass(frozen=True)
class _Judged:
    """One setup's verdicts by position: ``status`` an index into ``STATUSES``; ``tied_with`` and ``dominated_by``
    the position of the run named (-1 for none)."""

    status: np.ndarray
    tied_with: np.ndarray
    dominated_by: np.ndarray


_CHUNK_CELLS = 2**22  # runs x candidates compared at once where a broadcast is needed (about 4 MB of booleans)


def _judge(cost: np.ndarray, quality: np.ndarray, low: np.ndarray, high: np.ndarray) -> _Judged:
    """``classify``'s rule for the runs of one setup (quality oriented so that higher is better), by sorting:

    * front: ``_front_order`` (as ``pareto_front``).
    * dominated: some run ``a`` with ``high[a] <= low[b]`` and ``quality[a] >= quality[b]``, strictly in one of
      the two (``dominates_beyond_noise``). Over the runs sorted by ``high``, the best quality of those with
      ``high <= low[b]`` (and of those with ``high < low[b]``) is a running maximum, so each run is one binary search.
    * ``dominated_by``: the cheapest front run that dominates it (then the best, then the first); the front runs
      sorted by cost have rising quality, so those good enough are a suffix of the front. A run no front run
      dominates takes the cheapest of the others that do (compared only with the runs cheap enough to).
    * tied: beaten on the medians only within the noise; ``tied_with`` the costliest front run at or below its
      cost, which is the front run nearest in cost that beats it on the medians.
    """
    n = len(cost)
    status = np.full(n, STATUSES.index("tied"))
    tied_with, dominated_by = np.full(n, -1), np.full(n, -1)
    if n == 0:
        return _Judged(status, tied_with, dominated_by)
    front = _front_order(cost, quality)  # by cost: cost and quality both strictly rising
    status[front] = STATUSES.index("front")
    on_front = np.zeros(n, dtype=bool)
    on_front[front] = True
    # dominated beyond the noise: by the best quality among the runs whose high end is low enough
    by_high = np.argsort(high, kind="stable")
    best = np.maximum.accumulate(quality[by_high])
    at_most = np.searchsorted(high[by_high], low, side="right")  # runs with high <= low[b]
    below = np.searchsorted(high[by_high], low, side="left")  # runs with high < low[b]
    best_at_most = np.where(at_most > 0, best[np.maximum(at_most - 1, 0)], -np.inf)
    best_below = np.where(below > 0, best[np.maximum(below - 1, 0)], -np.inf)
    dominated = ~on_front & ((best_at_most > quality) | (best_below >= quality))
    status[dominated] = STATUSES.index("dominated")
    # the run each dominated run is dominated by: the cheapest front run that does, else the cheapest other one
    runs = np.flatnonzero(dominated)
    f_cost, f_quality, f_high = cost[front], quality[front], high[front]
    first_good = np.searchsorted(f_quality, quality[runs], side="left")  # front runs no worse than the run
    for part in np.array_split(runs, max(1, len(runs) * len(front) // _CHUNK_CELLS + 1)):
        k = np.searchsorted(runs, part)
        beats = ((np.arange(len(front))[None, :] >= first_good[k][:, None])
                 & (f_high[None, :] <= low[part][:, None])
                 & ((f_high[None, :] < low[part][:, None]) | (f_quality[None, :] > quality[part][:, None])))
        found = beats.any(axis=1)
        dominated_by[part[found]] = front[beats[found].argmax(axis=1)]
    rest = runs[dominated_by[runs] < 0]
    if len(rest):
        by_key = np.lexsort((np.arange(n), -quality, cost))  # the order min() picks in: cost, best quality, first
        candidates = by_key[~on_front[by_key] & (high[by_key] <= low[rest].max())
                            & (quality[by_key] >= quality[rest].min())]
        for part in np.array_split(rest, max(1, len(rest) * len(candidates) // _CHUNK_CELLS + 1)):
            c_high, c_quality = high[candidates][None, :], quality[candidates][None, :]
            b_low, b_quality = low[part][:, None], quality[part][:, None]
            beats = (c_high <= b_low) & (c_quality >= b_quality) & ((c_high < b_low) | (c_quality > b_quality))
            dominated_by[part] = candidates[beats.argmax(axis=1)]
    # tied: the costliest front run at or below its cost
    tied = np.flatnonzero(status == STATUSES.index("tied"))
    tied_with[tied] = front[np.searchsorted(f_cost, cost[tied], side="right") - 1]
    return _Judged(status, tied_with, dominated_by)


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
    """The runs split by setup (``SETUP_COLUMNS``; a missing column counts as one value), largest first (then by
    the key's text, then by first appearance). Each column's distinct values are named once, not each row's."""
    if runs.empty:
        return []
    n = len(runs)
    keys, codes = [], []  # per column: each raw value's key part, and each row's raw value (-1: missing)
    combined = np.zeros(n, dtype=np.int64)  # equal for rows whose key parts are all equal
    for column in SETUP_COLUMNS:
        if column in runs.columns:
            values = runs[column]
            if not pd.api.types.is_numeric_dtype(values):  # text hashes faster as plain objects
                values = values.to_numpy(dtype=object)
            raw, uniques = pd.factorize(values, use_na_sentinel=True)
            parts = [_key_part(v, column) for v in uniques.tolist()] + [None]  # plain Python values; [-1]: missing
        else:
            raw, parts = np.full(n, -1), [None]
        same: dict[Any, int] = {}  # raw values with one key part (2.0 and 2; NaN and None) count as one
        merged = np.array([same.setdefault(p, len(same)) for p in parts], dtype=np.int64)[raw]
        if len(same) > 1:  # a column every run shares splits nothing
            combined = pd.factorize(combined * len(same) + merged)[0].astype(np.int64)
        keys.append(parts)
        codes.append(raw)
    order = np.argsort(combined, kind="stable")
    groups = []
    for members in np.split(order, np.flatnonzero(np.diff(combined[order])) + 1):
        first = members[0]  # the key is the first run's, as a dict of keys would keep it
        groups.append((tuple(part[code[first]] for part, code in zip(keys, codes)), members))
    groups.sort(key=lambda kv: (-len(kv[1]), str(kv[0]), kv[1][0]))
    return [(key, runs.iloc[members]) for key, members in groups]


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
