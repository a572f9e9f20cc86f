"""The frontier figure: ``make_frontier_plot(runs DataFrame, ...) -> plotly Figure``, and its hover texts.

Nothing here reads the store or the widgets; the UI passes DataFrames (``RunStore.runs_frame``) in and
shows what comes out. Runs are named for people by ``studio_core.study.labels`` (configurations,
samplers, knob settings), so hovers and legends never show ``nan``, raw dicts or JSON. Pictures
(upscaling, heatmaps, ``<img>`` tags) are in ``app.pictures``.
"""

from __future__ import annotations

import html
import re
import statistics
import textwrap
from typing import Any, Iterable, Mapping

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from app import tables
from studio_core.models import family_name
from studio_core.store.rows import is_missing, json_list
from studio_core.study import labels, quality_text
from studio_core.study.frontier import COSTS, QUALITIES, classify, comparable, pareto_front, setup_label, setups

__all__ = ["GROUPS", "HOVER_WIDTH", "LATENCY_COSTS", "QUALITY_LABELS", "TIED_NAME", "front_status_text",
           "group_value", "hover_text", "latency_quartiles", "make_frontier_plot"]

QUALITY_LABELS = {
    "psnr": "PSNR vs reference (dB)", "ssim": "SSIM vs reference", "lpips": "LPIPS vs reference",
    "fidelity_top1": "prompt fidelity top-1", "fidelity_top5": "prompt fidelity top-5",
    "fd_emoji": "FD-emoji (own feature net; not FID)", "kid_emoji": "KID-emoji (own feature net)",
    "precision_emoji": "precision (emoji features, k=3)", "recall_emoji": "recall (emoji features, k=3)",
    "perceptual_emoji": "perceptual distance vs reference (emoji features)",
    "classifier_top5": "classifier fidelity top-5", "dist_classifier_top5": "classifier top-5 (distribution set)",
    "fid": "FID (local Inception weights)", "clip_score": "CLIP-score (local weights)",
}
# what points can be coloured or marked by: value (a run column, or "configuration") -> title. The values are
# the column names the API has always taken; "height" stands for the image size.
GROUPS: dict[str, str] = {
    **{c: labels.COLUMN_LABELS[c] for c in ("configuration", "sampler", "knobs_label", "steps", "precision",
                                            "guidance")},
    "height": labels.COLUMN_LABELS["size"],
    **{c: labels.COLUMN_LABELS[c] for c in ("sweep_id", "model")},
    "model_family": "model family (teacher and its students)",
    **{c: labels.COLUMN_LABELS[c] for c in ("prompt_set", "device_name")},
}
# costs whose spread is the run's latency spread (per image: divided by its images)
LATENCY_COSTS = ("latency_median_ms", "per_image_ms")
HOVER_WIDTH = 56  # characters per hover line: a hover at 12 px stays under ~400 px, beside any point
_PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Dark24
_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "cross", "star", "triangle-down", "pentagon",
            "hexagon", "hourglass", "bowtie"]
_DASHES = ["dash", "dot", "dashdot", "longdash", "longdashdot"]  # one line style per setup's front
_FRONT_COLOUR = "#444"  # the front lines, and the rings of the runs tied with a front
TIED_NAME = "tied with the front (within noise)"  # legend of those rings


# ------------------------------------------------------------------------------------------ text
def _wrap(parts: Iterable[str], width: int = HOVER_WIDTH) -> list[str]:
    """Parts joined by " · " into lines of at most ``width`` characters (a longer part keeps its own
    line, shortened from the left: the end of a path says the most)."""
    lines: list[str] = []
    for part in (p for p in parts if p):
        if len(part) > width:
            part = "…" + part[-(width - 1):]
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return lines


def hover_text(row: Mapping) -> str:
    """One run for a hover (HTML): configuration, latency with its spread, quality, memory and setup, in
    short lines (``HOVER_WIDTH``) so the box fits beside the point."""
    num = labels.num
    head = [f"<b>run {int(row['id'])}</b>"]
    if num(row.get("steps")) is not None:
        head.append(f"{int(num(row['steps']))} steps")
    if num(row.get("guidance")) is not None:
        head.append(f"guidance {num(row['guidance']):g}")
    if num(row.get("height")) is not None and num(row.get("width")) is not None:
        head.append(f"{int(num(row['height']))}×{int(num(row['width']))} px")
    lines = [" · ".join(head)]
    esc = [html.escape(p) for p in labels.configuration(row).split(" · ")]
    lines += _wrap(esc)
    if not is_missing(row.get("lineage")) and row.get("lineage"):  # a distilled student: whose, how, where
        lines += [html.escape(line) for line in textwrap.wrap(str(row["lineage"]), HOVER_WIDTH)]
    inactive = labels.inactive_knobs(row)
    if inactive:
        lines += _wrap([f"did nothing: {html.escape(inactive[0])}", *map(html.escape, inactive[1:])])
    n = labels.timed_repeats(row) or None
    med = num(row.get("latency_median_ms"))
    iqr = num(row.get("latency_iqr_ms"))
    if med is not None:
        lines.append(f"latency {labels.ms(med)} ms median, " + (f"IQR {labels.ms(iqr)} ms (n={int(n or 0)})"
                                                                 if iqr is not None and n and n > 1
                                                                 else "one timed repeat, no spread"))
        lo, hi = num(row.get("latency_min_ms")), num(row.get("latency_max_ms"))
        if lo is not None and hi is not None and n and n > 1:
            lines.append(f"repeats from {labels.ms(lo)} to {labels.ms(hi)} ms")
    flag = tables.noise_flag(row)
    if flag:
        lines.append(f"<b>{flag}</b>")
    if not is_missing(row.get("dispatch")) and row.get("dispatch"):  # a sweep worker ran it (dispatch.py)
        where = " · ".join(html.escape(str(row[c])) for c in ("node", "worker_device") if not is_missing(row.get(c)))
        lines += _wrap([f"ran on {where} ({html.escape(str(row['dispatch']))})"])
    if (num(row.get("shared_cpu")) or 0) > 1:  # parallel CPU workers of one sweep on one machine
        lines.append(f"<b>timed on a CPU shared by {int(num(row['shared_cpu']))} workers</b>")
    spread = (num(row.get("n_images")) or 0) > 1  # a std over one image means nothing
    q = []
    if num(row.get("psnr")) is not None:
        q.append(f"PSNR {num(row['psnr']):.2f}" + (f" ± {num(row.get('psnr_std')) or 0:.2f}" if spread else "")
                 + " dB")
    if num(row.get("ssim")) is not None:
        q.append(f"SSIM {num(row['ssim']):.3f}" + (f" ± {num(row.get('ssim_std')) or 0:.3f}" if spread else ""))
    if num(row.get("lpips")) is not None:
        q.append(f"LPIPS {num(row['lpips']):.3f}")
    lines += _wrap(q)
    if num(row.get("fidelity_top1")) is not None:
        lines.append(f"prompt fidelity: top-1 {num(row['fidelity_top1']):.0%}" + (
            f", top-5 {num(row['fidelity_top5']):.0%}" if num(row.get("fidelity_top5")) is not None else ""))
    dist = quality_text.distribution_text(row, short=True)
    if dist:
        lines += _wrap(dist.split(" · "))
    if num(row.get("perceptual_emoji")) is not None:
        lines.append(f"perceptual distance {num(row['perceptual_emoji']):.4f} (emoji features)")
    if num(row.get("peak_mem_bytes")) is not None:
        lines.append(f"peak memory {labels.mib(row['peak_mem_bytes'])}")
    setup = [html.escape(str(row["device_name"])) if not is_missing(row.get("device_name")) else "",
             f"{int(num(row['threads']))} threads" if num(row.get("threads")) else "",
             _plural(row.get("n_images"), "image"),
             f"prompt set {html.escape(str(row['prompt_set']))}" if not is_missing(row.get("prompt_set"))
             and row.get("prompt_set") else "",
             html.escape(str(row["model"])) if not is_missing(row.get("model")) and row.get("model") else ""]
    lines += _wrap(setup)
    return "<br>".join(lines)


def _plural(n: Any, word: str) -> str:
    f = labels.num(n)
    return "" if f is None else f"{int(f)} {word}" + ("" if int(f) == 1 else "s")


def group_value(row: Mapping, column: str) -> str:
    """What a point is grouped under when coloured or marked by ``column`` (a ``GROUPS`` key): runs of the
    model's own sampler are one group whether asked for as "default" or by name."""
    num = labels.num
    if column == "configuration":
        return labels.configuration(row)
    if column == "sampler":
        return labels.sampler_text(row)
    if column in ("knobs_label", "knobs"):
        return labels.knobs_text(row, empty="no knobs")
    if column in ("height", "width", "size"):
        h, w = num(row.get("height")), num(row.get("width"))
        return f"{int(h)}×{int(w)}" if h is not None and w is not None else "n/a"
    if column == "sweep_id":
        return f"sweep {int(num(row['sweep_id']))}" if num(row.get("sweep_id")) is not None else "no sweep"
    if column == "model_family":  # rows from before the column: a model is its own family
        family = row.get("model_family")
        if is_missing(family) or not family:
            return family_name(row["model"]) if not is_missing(row.get("model")) and row.get("model") else "n/a"
        return str(family)
    v = row.get(column)
    if is_missing(v) or v == "":
        return "custom prompts" if column == "prompt_set" else "n/a"
    f = num(v)
    return f"{f:g}" if f is not None and not isinstance(v, str) else str(v)


def _natural(text: str) -> tuple:
    """Sort key that orders "sweep 2" before "sweep 10" and "4" before "16"."""
    return tuple((0, float(t), "") if re.fullmatch(r"\d+(\.\d+)?", t) else (1, 0.0, t)
                 for t in re.split(r"(\d+(?:\.\d+)?)", text) if t)


def _legend_name(text: str) -> str:
    return "<br>".join(_wrap([html.escape(p) for p in text.split(" · ")], 30))


# ------------------------------------------------------------------------------------------ spread
def latency_quartiles(row: Mapping) -> tuple[float, float, bool] | None:
    """(Q1, Q3, exact) of the run's timed repeats in ms: from its recorded latencies when it has two or
    more (the quartiles its IQR was computed with), else the median ± IQR/2 (``exact`` False)."""
    lat = [f for f in (labels.num(v) for v in json_list(row.get("latencies_ms"))) if f is not None]
    if len(lat) > 1:
        q = statistics.quantiles(lat, n=4, method="inclusive")  # as measure.timing computes the IQR
        return q[0], q[2], True
    med, iqr = labels.num(row.get("latency_median_ms")), labels.num(row.get("latency_iqr_ms"))
    if med is None or iqr is None:
        return None
    return med - iqr / 2, med + iqr / 2, False


def _spread_bars(g: pd.DataFrame, cost: str) -> tuple[dict, int, int]:
    """Asymmetric horizontal error bars from each point to its Q1 and Q3; and how many points had exact
    quartiles and how many the median ± IQR/2."""
    plus, minus, exact, approx = [], [], 0, 0
    for r, x in zip(g.to_dict("records"), g["_x"]):
        q = latency_quartiles(r)
        per = (labels.num(r.get("n_images")) or 1) if cost == "per_image_ms" else 1
        if q is None:
            plus.append(0.0)
            minus.append(0.0)
            continue
        exact, approx = exact + q[2], approx + (not q[2])
        plus.append(max(0.0, q[1] / per - x))
        minus.append(max(0.0, x - q[0] / per))
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1.5, width=4), exact, approx


def front_status_text(row: Mapping, cost: str, other: Mapping | None = None) -> str:
    """Where a run stands against its setup's front, for its hover (HTML, short lines): on the front, tied
    with front run ``other`` within the latency noise (both runs' IQRs), or dominated by a run beyond it.
    ``row`` and ``other`` have ``classify``'s columns (``cost_low``, ``cost_high`` in the cost's unit)."""
    status = row.get("front_status")
    if status == "front":
        return "on the Pareto front"
    if status == "dominated" and labels.num(row.get("dominated_by")) is not None:
        beyond = " beyond the latency noise" if cost in LATENCY_COSTS else ""
        return f"dominated by run {int(labels.num(row['dominated_by']))}{beyond}"
    if status != "tied" or other is None:
        return ""
    head = f"<b>tied with run {int(labels.num(other['id']))}</b> on the front"
    spans = [(r["cost_low"], r["cost_high"]) for r in (row, other)]
    if cost not in LATENCY_COSTS or all(hi <= lo for lo, hi in spans):
        return head + ": same cost and quality"

    def span(lo: float, hi: float) -> str:
        return f"IQR {labels.ms(lo)}–{labels.ms(hi)} ms" if hi > lo else f"{labels.ms(lo)} ms (one repeat)"

    return "<br>".join(_wrap([head, "within the latency noise:", f"{span(*spans[0])} vs {span(*spans[1])}"]))


# ------------------------------------------------------------------------------------------ figure
def make_frontier_plot(df: pd.DataFrame, quality: str = "psnr", cost: str = "latency_median_ms",
                       color: str | None = "configuration", symbol: str | None = None,
                       selected: Iterable[int] = (), log_x: bool = False, spread: bool = False) -> go.Figure:
    """Quality against cost, one point per run, with the Pareto front as a step line.

    Points carry their run id in ``customdata`` (the UI's click hook reads it); the hover text has
    the configuration and setup. ``color`` and ``symbol`` group points by a ``GROUPS`` key (the model's
    own sampler is one group, "configuration" is sampler and active knobs). ``selected`` run ids get a
    ring. Memory is shown in MiB. ``spread`` draws each point's latency quartiles (Q1..Q3 of its timed
    repeats) as a horizontal bar when the cost is a latency.
    """
    fig = go.Figure()
    name = QUALITY_LABELS.get(quality, quality)
    if quality == "psnr":  # pooled for new runs; say so only when every run shown is
        pooled = "psnr_method" in df.columns and all(labels.psnr_is_pooled(r) for r in df.to_dict("records"))
        name = name.replace("(dB)", "(pooled, dB)" if pooled else "(dB; older runs: mean of per-image dB)")
    q_label = name + (", higher is better" if QUALITIES.get(quality, True) else ", lower is better")
    x_label = COSTS.get(cost, cost)
    fig.update_layout(template="plotly_white", height=560, margin=dict(l=60, r=20, t=70, b=50),
                      xaxis_title=x_label + ", lower is better", yaxis_title=q_label,
                      legend_title_text=GROUPS.get(color or "", color or ""), hovermode="closest",
                      hoverlabel=dict(align="left", font_size=12, namelength=-1))
    d = df.copy() if df is not None else pd.DataFrame()
    have = (not d.empty) and quality in d and cost in d
    if have:
        d = comparable(d, cost)  # memory: only runs that measured it above their own baseline
        d = d[pd.to_numeric(d[cost], errors="coerce").notna() & pd.to_numeric(d[quality], errors="coerce").notna()]
    if not have or d.empty:
        why = "No finished runs yet: generate one on the Generate tab or start a sweep."
        if df is not None and not df.empty:
            why = (f"None of these {len(df)} runs has a {QUALITY_LABELS.get(quality, quality)} value "
                   "(each run's metrics note says why, e.g. LPIPS weights not on disk).")
            if cost == "peak_mem_bytes" and comparable(df, cost).empty:
                why = (f"None of these {len(df)} runs measured its peak memory above its own baseline (older "
                       "runs recorded the whole process's peak, which depends on what ran before).")
        fig.add_annotation(text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return fig
    scale = 2**20 if cost == "peak_mem_bytes" else 1.0
    d = d.assign(_x=pd.to_numeric(d[cost]) / scale, _y=pd.to_numeric(d[quality]))
    # each run against its setup's front, within the noise (front / tied / dominated); same rows, same order
    judged = classify(d, cost, quality).to_dict("records")
    by_id = {int(r["id"]): r for r in judged}
    d["_status"] = [r["front_status"] for r in judged]
    records = d.to_dict("records")
    d["_hover"] = ["<br>".join(filter(None, [hover_text(r), front_status_text(j, cost, by_id.get(
        labels.num(j["tied_with"])))])) for r, j in zip(records, judged)]
    d["_c"] = [group_value(r, color) for r in records] if color else ""
    d["_s"] = [group_value(r, symbol) for r in records] if symbol else ""
    color_keys = sorted(set(d["_c"]), key=_natural)
    symbol_keys = sorted(set(d["_s"]), key=_natural)
    cmap = {k: _PALETTE[i % len(_PALETTE)] for i, k in enumerate(color_keys)}
    smap = {k: _SYMBOLS[i % len(_SYMBOLS)] for i, k in enumerate(symbol_keys)}
    bars = spread and cost in LATENCY_COSTS
    exact = approx = 0
    for ck in color_keys:
        for sk in symbol_keys:
            g = d[(d["_c"] == ck) & (d["_s"] == sk)]
            if g.empty:
                continue
            name = " / ".join(x for x in (ck, sk) if x) or "runs"
            error_x = None
            if bars:
                error_x, e, a = _spread_bars(g, cost)
                error_x["color"] = cmap[ck]
                exact, approx = exact + e, approx + a
            fig.add_trace(go.Scatter(
                x=g["_x"], y=g["_y"], mode="markers", name=_legend_name(name), customdata=g["id"].astype(int).tolist(),
                hovertext=g["_hover"], hovertemplate="%{hovertext}<extra></extra>", error_x=error_x,
                marker=dict(size=11, color=cmap[ck], symbol=smap[sk], line=dict(width=1, color="#333"))))
    # one front per setup (model, machine, size, reference): runs of different setups are never compared
    groups = setups(d)
    front_ids: set[int] = set()
    for k, (key, runs) in enumerate(groups):
        front = pareto_front(runs, "_x", "_y", higher_is_better=QUALITIES.get(quality, True))
        front_ids |= set(front["id"].astype(int))
        if len(front) > 1:
            name = ("Pareto front" if len(groups) == 1 else
                    _legend_name(f"front: {setup_label(key, [k for k, _ in groups])}"))
            fig.add_trace(go.Scatter(x=front["_x"], y=front["_y"], mode="lines", line_shape="hv", name=name,
                                     line=dict(color=_FRONT_COLOUR, width=1.5, dash=_DASHES[k % len(_DASHES)]),
                                     hoverinfo="skip"))
    tied = d[d["_status"] == "tied"]
    if not tied.empty:  # a ring in the front's colour: a rerun could put these on the front. Like the
        # "selected" ring, not mode "markers": the run points are those traces (the click hook reads them)
        fig.add_trace(go.Scatter(x=tied["_x"], y=tied["_y"], mode="markers+text", text=[""] * len(tied),
                                 name=TIED_NAME, hoverinfo="skip",
                                 marker=dict(size=17, symbol="circle-open", color=_FRONT_COLOUR,
                                             line=dict(width=2, color=_FRONT_COLOUR))))
    chosen = d[d["id"].astype(int).isin([int(i) for i in selected])]
    if not chosen.empty:
        fig.add_trace(go.Scatter(x=chosen["_x"], y=chosen["_y"], mode="markers+text", name="selected",
                                 text=[f"#{int(i)}" for i in chosen["id"]], textposition="top center",
                                 hoverinfo="skip", marker=dict(size=22, color="rgba(0,0,0,0)",
                                                               line=dict(width=2.5, color="#d62728"))))
    notes = []
    if len(groups) > 1:
        notes.append(f"{len(groups)} setups (model · device · threads · size · reference), one Pareto front each: "
                     "filter by model or sweep to see one")
    machines = d["device_name"].dropna().unique() if "device_name" in d else []
    if len(machines) > 1:
        notes.append(f"runs from {len(machines)} machines: latency compares only within one machine")
    elif len(machines) == 1:
        threads = sorted({int(t) for t in d["threads"].dropna()}) if "threads" in d else []
        notes.append(html.escape(str(machines[0])) + (f", {'/'.join(map(str, threads))} threads" if threads else "")
                     + "; each point: median of its timed repeats")
    if bars:
        how = []
        if exact:
            how.append("quartiles of the timed repeats" + (f" ({exact} runs)" if approx else ""))
        if approx:
            how.append(f"median ± IQR/2 ({approx} runs without recorded repeats)")
        notes.append("bars: latency Q1 to Q3, " + " and ".join(how))
    elif spread:
        notes.append(f"latency spread: shown when the cost is a latency, not {x_label}")
    title = (f"{QUALITY_LABELS.get(quality, quality)} vs {x_label}: {len(d)} runs, "
             f"{len(front_ids)} on the Pareto front" + ("s" if len(groups) > 1 else ""))
    if not tied.empty:
        title += f", {len(tied)} tied with {'it' if len(groups) == 1 else 'them'} within the noise"
    title += "".join(f"<br><sup>{n}</sup>" for n in notes)
    fig.update_layout(title=dict(text=title, font=dict(size=15)), margin=dict(t=50 + 18 * len(notes)))
    if log_x:
        fig.update_xaxes(type="log")
    return fig
