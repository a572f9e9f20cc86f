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
from functools import partial
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from app import tables
from studio_core.models import family_name
from studio_core.store.rows import is_missing, json_list
from studio_core.study import labels, quality_text
from studio_core.study.frontier import (
    COSTS,
    QUALITIES,
    SETUP_COLUMNS,
    classify,
    comparable,
    cost_interval,
    setup_label,
    setups,
)

__all__ = ["FRONTIER_COLUMNS", "GROUPS", "HOVER_LIMIT", "HOVER_WIDTH", "LATENCY_COSTS", "QUALITY_LABELS", "TIED_NAME",
           "RunMemo", "front_status_text", "group_value", "hover_text", "latency_quartiles", "make_frontier_plot"]

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


def _spread_bars(rows: pd.DataFrame, xs: np.ndarray, quartiles: list, cost: str) -> tuple[dict, int, int]:
    """Asymmetric horizontal error bars from each point (at ``xs``) to its Q1 and Q3 (``quartiles``, one
    ``latency_quartiles`` per row); and how many points had exact quartiles and how many the median ± IQR/2."""
    plus, minus, exact, approx = [], [], 0, 0
    images = rows["n_images"].tolist() if "n_images" in rows else [None] * len(rows)
    for q, x, n_images in zip(quartiles, xs.tolist(), images):
        per = (labels.num(n_images) or 1) if cost == "per_image_ms" else 1
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
class RunMemo:
    """What the figure derives from one run's row (its hover text, its group under a colour, its cost interval,
    its latency quartiles), kept by run id: a finished run's row never changes, so the next figure of the same
    study derives only the new runs'. The page keeps one per study (``app.handlers.Studio``) and drops it when the
    study is read again from scratch; a figure drawn without one derives everything afresh. Each kind of value is
    kept as an array beside an index of run ids, so finding 100k runs' values is one hash look-up in C."""

    def __init__(self):
        self._kept: dict[str, tuple[pd.Index, np.ndarray]] = {}

    def clear(self) -> None:
        self._kept.clear()

    def values(self, kind: str, ids: np.ndarray, make: Callable[[np.ndarray], list], width: int = 0) -> np.ndarray:
        """The ``kind`` value of each run of ``ids``: kept ones looked up, the others made by ``make(positions)``
        (their positions in ``ids``; one value each) and kept. An object array, or with ``width`` a float array of
        that many columns."""
        empty = np.empty((0, width)) if width else np.empty(0, dtype=object)
        index, kept = self._kept.get(kind, (pd.Index([], dtype="int64"), empty))
        at = index.get_indexer(ids)
        missing = np.flatnonzero(at < 0)
        if len(missing):
            _, first = np.unique(ids[missing], return_index=True)  # a run twice in ``ids`` is made once
            missing = missing[np.sort(first)]
            made = make(missing)
            if width:
                made = np.array(made, dtype=float).reshape(len(missing), width)
            else:
                made, objects = np.empty(len(missing), dtype=object), made
                made[:] = objects
            index, kept = index.append(pd.Index(ids[missing])), np.concatenate([kept, made])
            self._kept[kind] = (index, kept)
            at = index.get_indexer(ids)
        return kept[at]


class _Rows:
    """A frame's rows as dicts (``_records``), each made once however many of the figure's derivations need it."""

    def __init__(self, frame: pd.DataFrame):
        self.frame, self._made = frame, {}

    def at(self, positions: np.ndarray) -> list[dict]:
        need = [p for p in positions.tolist() if p not in self._made]
        if need:
            for p, row in zip(need, _records(self.frame.iloc[need])):
                self._made[p] = row
        return [self._made[p] for p in positions.tolist()]


def _groups(rows: _Rows, column: str, positions: np.ndarray) -> list[str]:
    return [group_value(r, column) for r in rows.at(positions)]


def _records(frame: pd.DataFrame) -> list[dict]:
    """``frame.to_dict("records")``, made a column at a time (``tolist`` gives the same Python values) rather than a
    cell at a time: several times faster on the first figure of a large study."""
    columns = list(frame.columns)
    return [dict(zip(columns, values)) for values in zip(*(frame[c].tolist() for c in columns))]


# the run columns the figure reads: the costs and qualities it can plot, what judges a run against its setup's
# front (``classify``), the groups it colours by, and what the hover texts name (``hover_text``); the page reads
# only these of a large study (tests/test_store_scale.py checks the figure is the one the whole rows give)
FRONTIER_COLUMNS = (
    "id", "sweep_id", "model", "model_family", "lineage", "prompt_set", "n_images", "steps", "sampler",
    "scheduler_class", "timestep_spacing", "flow_shift", "guidance", "height", "width", "precision", "knobs",
    "knobs_label", "knob_report", "knobs_inactive", "repeats", "repeats_done", "latencies_ms", "latency_median_ms",
    "latency_iqr_ms", "latency_min_ms", "latency_max_ms", "per_image_ms", "step_mean_ms", "peak_mem_bytes",
    "peak_mem_method", "energy_j_per_image", "device_name", "threads", "reference_id", "shared_cpu", "node",
    "worker_device", "dispatch", "psnr",
    "psnr_std", "psnr_method", "ssim", "ssim_std", "lpips", "lpips_std", "lpips_method", "fidelity_top1",
    "fidelity_top5", "fd_emoji", "kid_emoji", "kid_emoji_std", "precision_emoji", "recall_emoji",
    "dist_classifier_top5", "dist_n", "dist_gen_ms", "dist_score_ms", "perceptual_emoji", "perceptual_emoji_std",
    "classifier_top1", "classifier_top5", "classifier_n", "fid", "fid_kid", "fid_kid_std", "fid_n", "fid_method",
    "clip_score", "clip_score_std", "clip_method",
)
# points drawn with their whole hover text; past it, the runs off the front that the limit leaves out (dominated
# ones first: another run beats them beyond the noise) are drawn small, on WebGL, with their run id and standing
# on hover, and the title says so
HOVER_LIMIT = 1000
_STATUS_RANK = {"front": 1, "tied": 2, "dominated": 3}  # selected runs rank 0: who keeps a whole hover first
_SMALL_POINTS = {"tied": "tied with the front within the noise", "dominated": "dominated beyond the noise"}


def make_frontier_plot(df: pd.DataFrame, quality: str = "psnr", cost: str = "latency_median_ms",
                       color: str | None = "configuration", symbol: str | None = None,
                       selected: Iterable[int] = (), log_x: bool = False, spread: bool = False,
                       memo: RunMemo | None = None) -> go.Figure:
    """Quality against cost, one point per run, with the Pareto front as a step line.

    Points carry their run id in ``customdata`` (the UI's click hook reads it); the hover text has
    the configuration and setup. ``color`` and ``symbol`` group points by a ``GROUPS`` key (the model's
    own sampler is one group, "configuration" is sampler and active knobs). ``selected`` run ids get a
    ring. Memory is shown in MiB. ``spread`` draws each point's latency quartiles (Q1..Q3 of its timed
    repeats) as a horizontal bar when the cost is a latency. ``memo`` keeps what each run's row gives
    between figures of one study (``RunMemo``).

    Past ``HOVER_LIMIT`` points, the selected, front and tied runs keep their whole hover (and bars), and the
    dominated runs beyond the limit are drawn small with their run id only; below it every point is drawn alike.
    """
    memo = memo if memo is not None else RunMemo()
    fig = go.Figure()
    name = QUALITY_LABELS.get(quality, quality)
    if quality == "psnr":  # pooled for new runs; say so only when every run shown is
        pooled = "psnr_method" in df.columns and all(labels.psnr_is_pooled({"psnr_method": m})
                                                     for m in df["psnr_method"].unique())
        name = name.replace("(dB)", "(pooled, dB)" if pooled else "(dB; older runs: mean of per-image dB)")
    q_label = name + (", higher is better" if QUALITIES.get(quality, True) else ", lower is better")
    x_label = COSTS.get(cost, cost)
    layout = dict(template="plotly_white", height=560, margin=dict(l=60, r=20, t=70, b=50),
                  xaxis_title=x_label + ", lower is better", yaxis_title=q_label,
                  legend_title_text=GROUPS.get(color or "", color or ""), hovermode="closest",
                  hoverlabel=dict(align="left", font_size=12, namelength=-1))  # set once, with the title
    d = df if df is not None else pd.DataFrame()
    have = (not d.empty) and quality in d and cost in d
    if have:
        d = comparable(d, cost)  # memory: only runs that measured it above their own baseline
        both = pd.to_numeric(d[cost], errors="coerce").notna() & pd.to_numeric(d[quality], errors="coerce").notna()
        d = d if both.all() else d[both]
    if not have or d.empty:
        why = "No finished runs yet: generate one on the Generate tab or start a sweep."
        if df is not None and not df.empty:
            why = (f"None of these {len(df)} runs has a {QUALITY_LABELS.get(quality, quality)} value "
                   "(each run's metrics note says why, e.g. LPIPS weights not on disk).")
            if cost == "peak_mem_bytes" and comparable(df, cost).empty:
                why = (f"None of these {len(df)} runs measured its peak memory above its own baseline (older "
                       "runs recorded the whole process's peak, which depends on what ran before).")
        fig.update_layout(**layout)
        fig.add_annotation(text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return fig
    d = d.reset_index(drop=True)  # positions from here on
    n = len(d)
    scale = 2**20 if cost == "peak_mem_bytes" else 1.0
    xs = pd.to_numeric(d[cost]).to_numpy(dtype=float) / scale
    ys = pd.to_numeric(d[quality]).to_numpy(dtype=float)
    ids = d["id"].astype(int).to_numpy()
    # each run against its setup's front, within the noise (front / tied / dominated); same rows, same order
    slim = d[[c for c in dict.fromkeys(("id", cost, quality, *SETUP_COLUMNS)) if c in d.columns]]
    groups = setups(slim)  # one front per setup (model, machine, size, reference)
    rows = _Rows(d)
    intervals = memo.values(f"interval:{cost}", ids, lambda at: [cost_interval(r, cost) for r in rows.at(at)], width=2)
    judged = classify(slim, cost, quality, intervals=intervals, groups=groups)
    status = judged["front_status"].to_numpy(dtype=object)
    chosen_ids = {int(i) for i in selected}
    is_chosen = np.isin(ids, list(chosen_ids))
    # who is drawn with a whole hover: every run up to HOVER_LIMIT; past it, selected, front, tied runs first
    rank = np.where(is_chosen, 0, pd.Series(status).map(_STATUS_RANK).to_numpy())
    detailed = np.zeros(n, dtype=bool)
    detailed[np.argsort(rank, kind="stable")[:HOVER_LIMIT]] = True
    plain = n - int(detailed.sum())
    hover = np.full(n, "", dtype=object)
    where = np.flatnonzero(detailed)
    texts = memo.values("hover", ids[where], lambda at: [hover_text(r) for r in rows.at(where[at])])
    verdict = {"front_status": status, "dominated_by": judged["dominated_by"].to_numpy(dtype=object),
               "cost_low": judged["cost_low"].to_numpy(), "cost_high": judged["cost_high"].to_numpy(), "id": ids}
    tied_with = judged["tied_with"].to_numpy(dtype=object)[where]
    other_at = pd.Index(ids).get_indexer([-1 if labels.num(t) is None else labels.num(t) for t in tied_with])
    for i, text, o in zip(where, texts, other_at):
        j = {k: v[i] for k, v in verdict.items()}
        other = {k: v[o] for k, v in verdict.items()} if o >= 0 else None
        hover[i] = "<br>".join(filter(None, [text, front_status_text(j, cost, other)]))
    groups_c, groups_s = (memo.values(f"group:{by}", ids, partial(_groups, rows, by)) if by else np.full(n, "")
                          for by in (color, symbol))
    c_codes, c_names = pd.factorize(groups_c)
    s_codes, s_names = pd.factorize(groups_s)
    color_keys = sorted(c_names.tolist(), key=_natural)
    symbol_keys = sorted(s_names.tolist(), key=_natural)
    cmap = {k: _PALETTE[i % len(_PALETTE)] for i, k in enumerate(color_keys)}
    smap = {k: _SYMBOLS[i % len(_SYMBOLS)] for i, k in enumerate(symbol_keys)}
    combined = c_codes * len(s_names) + s_codes
    order = np.argsort(combined, kind="stable")
    members = {(c_names[c // len(s_names)], s_names[c % len(s_names)]): at for c, at in zip(
        combined[order[np.r_[0, np.flatnonzero(np.diff(combined[order])) + 1]]],
        np.split(order, np.flatnonzero(np.diff(combined[order])) + 1))}
    bars = spread and cost in LATENCY_COSTS
    exact = approx = 0
    for ck in color_keys:
        for sk in symbol_keys:
            at = members.get((ck, sk))
            if at is None:
                continue
            name = _legend_name(" / ".join(x for x in (ck, sk) if x) or "runs")
            whole, small = at[detailed[at]], at[~detailed[at]]
            if len(whole):
                error_x = None
                if bars:
                    quartiles = memo.values("quartiles", ids[whole],
                                            lambda at: [latency_quartiles(r) for r in rows.at(whole[at])])
                    error_x, e, a = _spread_bars(d.iloc[whole], xs[whole], quartiles, cost)
                    error_x["color"] = cmap[ck]
                    exact, approx = exact + e, approx + a
                fig.add_trace(go.Scatter(
                    x=xs[whole], y=ys[whole], mode="markers", name=name, customdata=ids[whole].tolist(),
                    hovertext=hover[whole].tolist(), hovertemplate="%{hovertext}<extra></extra>", error_x=error_x,
                    legendgroup=name if len(small) else None,
                    marker=dict(size=11, color=cmap[ck], symbol=smap[sk], line=dict(width=1, color="#333"))))
            listed = bool(len(whole))  # one legend entry per group: its first trace's
            for standing, what in _SMALL_POINTS.items():  # past the limit: small, their id and standing on hover
                ones = small[status[small] == standing]
                if len(ones):
                    fig.add_trace(go.Scattergl(
                        x=xs[ones], y=ys[ones], mode="markers", name=name, customdata=ids[ones], legendgroup=name,
                        showlegend=not listed,
                        hovertemplate=f"run %{{customdata}}: {what} (click for its details)<extra></extra>",
                        marker=dict(size=6, color=cmap[ck], symbol=smap[sk], opacity=0.55)))
                    listed = True
    # one front line per setup: runs of different setups are never compared
    front_ids: set[int] = set()
    for k, (key, runs) in enumerate(groups):
        at = runs.index.to_numpy()
        front = at[status[at] == "front"]
        front = front[np.argsort(xs[front], kind="stable")]  # a front's costs rise strictly
        front_ids |= set(ids[front].tolist())
        if len(front) > 1:
            name = ("Pareto front" if len(groups) == 1 else
                    _legend_name(f"front: {setup_label(key, [k for k, _ in groups])}"))
            fig.add_trace(go.Scatter(x=xs[front], y=ys[front], mode="lines", line_shape="hv", name=name,
                                     line=dict(color=_FRONT_COLOUR, width=1.5, dash=_DASHES[k % len(_DASHES)]),
                                     hoverinfo="skip"))
    tied = np.flatnonzero(status == "tied")
    if len(tied):  # a ring in the front's colour: a rerun could put these on the front. Like the
        # "selected" ring, not mode "markers": the run points are those traces (the click hook reads them)
        fig.add_trace(go.Scatter(x=xs[tied], y=ys[tied], mode="markers+text", text=np.full(len(tied), ""),
                                 name=TIED_NAME, hoverinfo="skip",
                                 marker=dict(size=17, symbol="circle-open", color=_FRONT_COLOUR,
                                             line=dict(width=2, color=_FRONT_COLOUR))))
    chosen = np.flatnonzero(is_chosen)
    if len(chosen):
        fig.add_trace(go.Scatter(x=xs[chosen], y=ys[chosen], mode="markers+text", name="selected",
                                 text=[f"#{i}" for i in ids[chosen]], textposition="top center",
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
        threads = sorted({int(t) for t in d["threads"].dropna().unique()}) if "threads" in d else []
        notes.append(html.escape(str(machines[0])) + (f", {'/'.join(map(str, threads))} threads" if threads else "")
                     + "; each point: median of its timed repeats")
    if bars:
        how = []
        if exact:
            how.append("quartiles of the timed repeats" + (f" ({exact} runs)" if approx else ""))
        if approx:
            how.append(f"median ± IQR/2 ({approx} runs without recorded repeats)")
        notes.append("bars: latency Q1 to Q3, " + " and ".join(how) + (
            f"; not drawn for the {plain:,} small points" if plain else ""))
    elif spread:
        notes.append(f"latency spread: shown when the cost is a latency, not {x_label}")
    if plain:
        notes.append(f"{plain:,} runs off the front drawn small, with their run id and standing only (over "
                     f"{HOVER_LIMIT:,} points): click one for its details")
    title = (f"{QUALITY_LABELS.get(quality, quality)} vs {x_label}: {n} runs, "
             f"{len(front_ids)} on the Pareto front" + ("s" if len(groups) > 1 else ""))
    if len(tied):
        title += f", {len(tied)} tied with {'it' if len(groups) == 1 else 'them'} within the noise"
    title += "".join(f"<br><sup>{n}</sup>" for n in notes)
    layout["margin"]["t"] = 50 + 18 * len(notes)
    fig.update_layout(**layout, title=dict(text=title, font=dict(size=15)))
    if log_x:
        fig.update_xaxes(type="log")
    return fig
