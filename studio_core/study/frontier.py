"""Quality-versus-cost frontiers: which runs no other run beats on both axes."""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["COSTS", "QUALITIES", "frontier_table", "pareto_front"]

# metric column -> True when higher is better
QUALITIES: dict[str, bool] = {
    "psnr": True, "ssim": True, "lpips": False, "fidelity_top1": True, "fidelity_top5": True,
}
# cost column -> label (lower is always better)
COSTS: dict[str, str] = {
    "latency_median_ms": "median latency (ms)", "per_image_ms": "latency per image (ms)",
    "peak_mem_bytes": "peak memory (bytes)", "step_mean_ms": "mean time per step (ms)",
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


def frontier_table(store, x: str = "latency_median_ms", y: str = "psnr", *, sweep_id: int | None = None,
                   filters: dict[str, Any] | None = None) -> pd.DataFrame:
    """The Pareto set of the store's successful runs, optionally within one sweep and column filters."""
    frame = store.runs_frame(matching={"status": "ok", **({} if sweep_id is None else {"sweep_id": sweep_id})})
    for column, value in (filters or {}).items():
        if column not in frame.columns:
            raise KeyError(f"cannot filter on {column!r}: no such column")
        frame = frame[frame[column] == value]
    return pareto_front(frame, x, y)
