"""Quality-versus-cost frontiers: which runs no other run beats on both axes, within one setup.

A front compares like with like: runs of different models, devices, resolutions or references are
never on one front (a PSNR against one reference says nothing against another, and a latency on one
machine nothing about another). ``frontier_table`` and the page's figure split the runs by
``SETUP_COLUMNS`` and find one front per setup; ``setup_label`` names a setup for people.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

__all__ = ["COSTS", "QUALITIES", "SETUP_COLUMNS", "frontier_table", "pareto_front", "setup_label", "setups"]

# metric column -> True when higher is better
QUALITIES: dict[str, bool] = {
    "psnr": True, "ssim": True, "lpips": False, "fidelity_top1": True, "fidelity_top5": True,
}
# cost column -> label (lower is always better; the page shows memory in MiB)
COSTS: dict[str, str] = {
    "latency_median_ms": "median latency (ms)", "per_image_ms": "latency per image (ms)",
    "peak_mem_bytes": "peak memory (MiB)", "step_mean_ms": "mean time per step (ms)",
}


def pareto_front(runs: pd.DataFrame | list[dict], x: str = "latency_median_ms", y: str = "psnr",
                 higher_is_better: bool | None = None) -> pd.DataFrame:
    """Rows not dominated by another row (lower-or-equal ``x`` and better-or-equal ``y``), by ``x``.

    Rows missing either value are left out. Among rows with identical (x, y) the first is kept.
    """
    df = runs if isinstance(runs, pd.DataFrame) else pd.DataFrame(runs)
    if x not in df.columns or y not in df.columns:
        missing = [c for c in (x, y) if c not in df.columns]
        raise KeyError(f"no column {missing[0]!r} in the runs (have {', '.join(map(str, df.columns))})")
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


# what must be equal for two runs to share a front: model, machine, resolution and the reference scored against
SETUP_COLUMNS = ("model", "device_name", "height", "width", "reference_id")


def _key_part(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return int(v) if isinstance(v, float) and v.is_integer() else v


def setups(runs: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """The runs split by setup (``SETUP_COLUMNS``; a missing column counts as one value), largest first."""
    if runs.empty:
        return []
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs.to_dict("records")):
        groups.setdefault(tuple(_key_part(r.get(c)) for c in SETUP_COLUMNS), []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0])))
    return [(key, runs.iloc[idx]) for key, idx in ordered]


def setup_label(key: tuple, among: list[tuple] | None = None) -> str:
    """``"emoji-sd · CPU ... · 32x32 px · reference #1"``: one setup as people read it; with ``among`` (all
    the setups shown), only the parts that tell it from the others ("reference #2")."""
    v = dict(zip(SETUP_COLUMNS, key))
    if among and len(among) > 1:
        differ = {c for i, c in enumerate(SETUP_COLUMNS) if len({k[i] for k in among}) > 1}
        if "height" in differ or "width" in differ:
            differ |= {"height", "width"}
    else:
        differ = set(SETUP_COLUMNS)
    model = str(v["model"] or "unknown model")
    model = model.rstrip("/").rsplit("/", 1)[-1] or model  # a folder path: its name
    size = "size unknown" if v["height"] is None or v["width"] is None else f"{v['height']}x{v['width']} px"
    ref = "no reference" if v["reference_id"] is None else f"reference #{v['reference_id']}"
    parts = {"model": model, "device_name": str(v["device_name"] or "unknown device"), "height": size,
             "reference_id": ref}
    return " · ".join(text for column, text in parts.items() if column in differ)


def frontier_table(store, x: str = "latency_median_ms", y: str = "psnr", *, sweep_id: int | None = None,
                   filters: dict[str, Any] | None = None) -> pd.DataFrame:
    """The Pareto set of the store's successful runs, one front per setup (its ``setup`` column names it),
    optionally within one sweep and column filters."""
    frame = store.runs_frame(matching={"status": "ok", **({} if sweep_id is None else {"sweep_id": sweep_id})})
    for column, value in (filters or {}).items():
        if column not in frame.columns:
            raise KeyError(f"cannot filter on {column!r}: no such column")
        frame = frame[frame[column] == value]
    fronts = [pareto_front(runs, x, y).assign(setup=setup_label(key)) for key, runs in setups(frame)]
    fronts = [f for f in fronts if not f.empty]
    return pd.concat(fronts, ignore_index=True) if fronts else pd.DataFrame(columns=[*frame.columns, "setup"])
