"""Compare: same-seed images of 2-4 runs side by side, with |difference| heatmaps against the first.
Pure: run rows and their images in, HTML out.
"""

from __future__ import annotations

import html
from typing import Mapping, Sequence

import numpy as np

from app.pictures import TABLE as _TABLE
from app.pictures import TD as _TD
from app.pictures import TH as _TH
from app.pictures import img_tag, make_colorbar, make_diff_heatmap
from app.tables import image_pairs

__all__ = ["compare_html"]



def compare_html(rows: Sequence[Mapping], images: Mapping[int, np.ndarray], *, max_pairs: int = 8,
                 image_size: int = 96, vmax: float | None = None) -> str:
    """Same-seed images of 2-4 runs side by side, and |run - first run| heatmaps under each later run.

    Only (prompt, seed) pairs every run has are shown, in the first run's order. The colour scale
    runs from 0 to ``vmax`` (default: the largest difference shown, at least 8 of 255), stated below.
    """
    if not rows:
        return "<p>Select two to four runs.</p>"
    first = rows[0]
    pairs = [p for p in image_pairs(first) if all(p in image_pairs(r) for r in rows[1:])][:max_pairs]
    if not pairs:
        return "<p>These runs share no (prompt, seed) pair, so there is nothing to compare image by image.</p>"
    if vmax is None:
        vmax = max([8.0] + [_largest_diff(images.get(int(first["id"])), image_pairs(first), images.get(int(r["id"])),
                                          image_pairs(r), pairs) for r in rows[1:]])
    head = f"<th {_TH}>run</th>" + "".join(f"<th {_TH}>{html.escape(p)}<br>seed {s}</th>" for p, s in pairs)
    out = [f"<table {_TABLE}><tr>{head}</tr>"]
    for r in rows:
        rid = int(r["id"])
        arr = images.get(rid)
        order = image_pairs(r)
        cells = [f"<th {_TH}>run {rid}<br><span style='font-weight:normal'>{html.escape(str(r.get('sampler')))}"
                 f" · {r.get('steps')} steps · {html.escape(str(r.get('precision')))}</span></th>"]
        for p in pairs:
            cells.append(f"<td {_TD}>" + (img_tag(arr[order.index(p)], image_size, f"run {rid}: {p[0]} seed {p[1]}")
                                          if arr is not None else "missing") + "</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
        if r is first:
            continue
        base, base_order = images.get(int(first["id"])), image_pairs(first)
        cells = [f"<th {_TH}>|run {rid} − run {int(first['id'])}|</th>"]
        for p in pairs:
            if arr is None or base is None:
                cells.append(f"<td {_TD}>missing</td>")
                continue
            a, b = arr[order.index(p)], base[base_order.index(p)]
            if a.shape != b.shape:
                cells.append(f"<td {_TD}>sizes differ ({a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]})</td>")
                continue
            mad = float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
            cells.append(f"<td {_TD}>{img_tag(make_diff_heatmap(a, b, vmax), image_size, f'mean |diff| {mad:.1f}')}"
                         f"<br><span style='font-size:12px'>mean |Δ| {mad:.1f}</span></td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    out.append("<div style='font-size:12px;color:#555;display:flex;align-items:center;gap:6px'>"
               f"<span>|difference| per pixel, mean over RGB (0..255): 0</span>"
               f"{img_tag(make_colorbar(128, 8), 128, 'colour scale')}<span>{vmax:.0f} or more</span></div>")
    return "".join(out)


def _largest_diff(base, base_order, arr, order, pairs) -> float:
    """The largest per-pixel |difference| (mean over RGB) between two runs over the shown pairs."""
    if base is None or arr is None:
        return 0.0
    best = 0.0
    for p in pairs:
        a, b = arr[order.index(p)], base[base_order.index(p)]
        if a.shape == b.shape:
            best = max(best, float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=-1).max()))
    return best
