"""The frontier figure: ``make_frontier_plot(runs DataFrame, ...) -> plotly Figure``, and its hover texts.

Nothing here reads the store or the widgets; the UI passes DataFrames (``RunStore.runs_frame``) in and
shows what comes out. Pictures (upscaling, heatmaps, ``<img>`` tags) are in ``app.pictures``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from studio_core.store.rows import is_missing
from studio_core.study.frontier import COSTS, QUALITIES, pareto_front

__all__ = ["QUALITY_LABELS", "hover_text", "make_frontier_plot"]

QUALITY_LABELS = {
    "psnr": "PSNR vs reference (dB)", "ssim": "SSIM vs reference", "lpips": "LPIPS vs reference",
    "fidelity_top1": "prompt fidelity top-1", "fidelity_top5": "prompt fidelity top-5",
}
_PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Dark24
_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "cross", "star", "triangle-down", "pentagon",
            "hexagon", "hourglass", "bowtie"]


# ------------------------------------------------------------------------------------------ frontier
def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _ms(v: Any) -> str:
    f = _num(v)
    return "n/a" if f is None else (f"{f:.1f}" if f < 100 else f"{f:,.0f}")


def hover_text(row: dict) -> str:
    """The configuration, latency with its spread, quality with its std, and setup of one run (HTML)."""
    cfg = [f"<b>run {int(row['id'])}</b>", str(row.get("sampler") or "default")]
    if _num(row.get("steps")) is not None:
        cfg.append(f"{int(row['steps'])} steps")
    if _num(row.get("guidance")) is not None:
        cfg.append(f"guidance {float(row['guidance']):g}")
    cfg.append(str(row.get("precision") or ""))
    if _num(row.get("height")) is not None:
        cfg.append(f"{int(row['height'])}x{int(row['width'])}")
    lines = [" · ".join(c for c in cfg if c)]
    if row.get("knobs_label"):
        lines.append(f"knobs: {row['knobs_label']}")
    if row.get("knobs_inactive"):
        lines.append(f"<b>did nothing: {row['knobs_inactive']}</b>")
    n = _num(row.get("repeats"))
    lines.append(f"latency {_ms(row.get('latency_median_ms'))} ms median (IQR {_ms(row.get('latency_iqr_ms'))}, "
                 f"{_ms(row.get('latency_min_ms'))}..{_ms(row.get('latency_max_ms'))}, n={int(n) if n else '?'})")
    q = []
    spread = (_num(row.get("n_images")) or 0) > 1  # a std over one image means nothing
    if _num(row.get("psnr")) is not None:
        q.append(f"PSNR {float(row['psnr']):.2f}" + (f" ± {float(row.get('psnr_std') or 0):.2f}" if spread else "")
                 + " dB")
    if _num(row.get("ssim")) is not None:
        q.append(f"SSIM {float(row['ssim']):.3f}" + (f" ± {float(row.get('ssim_std') or 0):.3f}" if spread else ""))
    if _num(row.get("fidelity_top1")) is not None:
        q.append(f"fidelity {float(row['fidelity_top1']):.0%}/{float(row.get('fidelity_top5') or 0):.0%}")
    if q:
        lines.append(" · ".join(q))
    setup = [str(row.get("device_name") or ""), f"{int(row['threads'])} threads" if _num(row.get("threads")) else "",
             _plural(row.get("n_images"), "image"),
             f"prompt set {row['prompt_set']}" if row.get("prompt_set") else ""]
    lines.append(" · ".join(s for s in setup if s))
    return "<br>".join(lines)


def _plural(n: Any, word: str) -> str:
    f = _num(n)
    return "" if f is None else f"{int(f)} {word}" + ("" if int(f) == 1 else "s")


def _group_key(v: Any) -> tuple:
    f = _num(v)
    return (0, f, "") if f is not None else (1, 0.0, str(v))


def _label(v: Any) -> str:
    if is_missing(v) or v == "":
        return "(none)"
    f = _num(v)
    return f"{f:g}" if f is not None and not isinstance(v, str) else str(v)


def make_frontier_plot(df: pd.DataFrame, quality: str = "psnr", cost: str = "latency_median_ms",
                       color: str | None = "sampler", symbol: str | None = None,
                       selected: Iterable[int] = (), log_x: bool = False) -> go.Figure:
    """Quality against cost, one point per run, with the Pareto front as a step line.

    Points carry their run id in ``customdata`` (the UI's click hook reads it); the hover text has
    the configuration and setup. ``selected`` run ids get a ring. Memory is shown in MiB.
    """
    fig = go.Figure()
    q_label = QUALITY_LABELS.get(quality, quality) + (", higher is better" if QUALITIES.get(quality, True)
                                                       else ", lower is better")
    x_label = "peak memory (MiB)" if cost == "peak_mem_bytes" else COSTS.get(cost, cost)
    fig.update_layout(template="plotly_white", height=520, margin=dict(l=60, r=20, t=60, b=50),
                      xaxis_title=x_label + ", lower is better", yaxis_title=q_label, legend_title_text=color or "",
                      hoverlabel=dict(align="left"))
    d = df.copy() if df is not None else pd.DataFrame()
    have = (not d.empty) and quality in d and cost in d
    if have:
        d = d[pd.to_numeric(d[cost], errors="coerce").notna() & pd.to_numeric(d[quality], errors="coerce").notna()]
    if not have or d.empty:
        why = "No finished runs yet: generate one on the Generate tab or start a sweep."
        if df is not None and not df.empty:
            why = (f"None of these {len(df)} runs has a {quality} value "
                   "(each run's metrics note says why, e.g. LPIPS weights not on disk).")
        fig.add_annotation(text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return fig
    scale = 2**20 if cost == "peak_mem_bytes" else 1.0
    d = d.assign(_x=pd.to_numeric(d[cost]) / scale, _y=pd.to_numeric(d[quality]))
    d["_hover"] = [hover_text(r) for r in d.to_dict("records")]
    color_col = color if color and color in d else None
    symbol_col = symbol if symbol and symbol in d else None
    color_keys = sorted({_label(v) for v in d[color_col]}, key=lambda s: _group_key(s)) if color_col else [""]
    symbol_keys = sorted({_label(v) for v in d[symbol_col]}, key=lambda s: _group_key(s)) if symbol_col else [""]
    cmap = {k: _PALETTE[i % len(_PALETTE)] for i, k in enumerate(color_keys)}
    smap = {k: _SYMBOLS[i % len(_SYMBOLS)] for i, k in enumerate(symbol_keys)}
    d["_c"] = [_label(v) for v in d[color_col]] if color_col else ""
    d["_s"] = [_label(v) for v in d[symbol_col]] if symbol_col else ""
    for ck in color_keys:
        for sk in symbol_keys:
            g = d[(d["_c"] == ck) & (d["_s"] == sk)]
            if g.empty:
                continue
            name = " / ".join(x for x in (ck if color_col else "", sk if symbol_col else "") if x) or "runs"
            fig.add_trace(go.Scatter(
                x=g["_x"], y=g["_y"], mode="markers", name=name, customdata=g["id"].astype(int).tolist(),
                hovertext=g["_hover"], hovertemplate="%{hovertext}<extra></extra>",
                marker=dict(size=11, color=cmap[ck], symbol=smap[sk], line=dict(width=1, color="#333"))))
    front = pareto_front(d, "_x", "_y", higher_is_better=QUALITIES.get(quality, True))
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=front["_x"], y=front["_y"], mode="lines", line_shape="hv", name="Pareto front",
                                 line=dict(color="#444", width=1.5, dash="dash"), hoverinfo="skip"))
    front_ids = set(front["id"].astype(int))
    chosen = d[d["id"].astype(int).isin([int(i) for i in selected])]
    if not chosen.empty:
        fig.add_trace(go.Scatter(x=chosen["_x"], y=chosen["_y"], mode="markers+text", name="selected",
                                 text=[f"#{int(i)}" for i in chosen["id"]], textposition="top center",
                                 hoverinfo="skip", marker=dict(size=22, color="rgba(0,0,0,0)",
                                                               line=dict(width=2.5, color="#d62728"))))
    machines = d["device_name"].dropna().unique() if "device_name" in d else []
    title = (f"{QUALITY_LABELS.get(quality, quality)} vs {x_label}: {len(d)} runs, "
             f"{len(front_ids)} on the Pareto front")
    if len(machines) > 1:
        title += f"<br><sup>runs from {len(machines)} machines: latency compares only within one machine</sup>"
    elif len(machines) == 1:
        threads = sorted({int(t) for t in d["threads"].dropna()}) if "threads" in d else []
        title += f"<br><sup>{machines[0]}" + (f", {'/'.join(map(str, threads))} threads" if threads else "") + \
                 "; each point: median of its timed repeats</sup>"
    fig.update_layout(title=dict(text=title, font=dict(size=15)))
    if log_x:
        fig.update_xaxes(type="log")
    return fig
