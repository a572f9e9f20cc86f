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
from studio_core.study import labels

__all__ = ["EMPTY", "HEAT_VMAX", "SCALE_TEXT", "compare_html", "image_size"]

EMPTY = "Pick two to four runs above, or click points on the Frontier tab."
# One colour scale for every heatmap, so two pairs can be compared by eye: 0 .. HEAT_VMAX of 255 per pixel
# (mean over RGB), brighter beyond it saturating. Runs that differ by a knob or a few steps mostly stay
# under a quarter of the range; a fixed top lets a small difference show as dark and a large one as bright.
HEAT_VMAX = 64
SCALE_TEXT = f"{HEAT_VMAX}+ of 255 per pixel (|difference|, mean over RGB); the same scale for every pair"
PAGE_WIDTH = 1200  # px the Compare tab gives the table at the page's usual width (1400 px window)
_HEADER_WIDTH = 150  # the (prompt, seed) column


def image_size(n_runs: int, width: int = PAGE_WIDTH) -> int:
    """Pixels per image so ``n_runs`` columns fill the tab's width: 96 at least, 256 at most."""
    return int(min(256, max(96, (width - _HEADER_WIDTH) // max(1, n_runs) - 16)))


def _sentence(text: str) -> str:
    return f"<p style='font-size:15px;color:#444'>{html.escape(text)}</p>"


def compare_html(rows: Sequence[Mapping], images: Mapping[int, np.ndarray], *, max_pairs: int = 8,
                 size: int | None = None) -> str:
    """Same-seed images of 2-4 runs side by side (one column per run, one row per (prompt, seed)), and
    under each later run's image its |run - first run| heatmap.

    Only (prompt, seed) pairs every run has are shown, in the first run's order, as large as the tab's
    width allows (``image_size``), nearest-neighbour. The heatmaps share one colour scale (0 to
    ``HEAT_VMAX`` of 255), printed below them.
    """
    if not rows:
        return _sentence(EMPTY)
    first = rows[0]
    pairs = [p for p in image_pairs(first) if all(p in image_pairs(r) for r in rows[1:])][:max_pairs]
    if not pairs:
        return _sentence("These runs share no (prompt, seed) pair, so there is nothing to compare image by image.")
    size = size or image_size(len(rows))
    head = [f"<th {_TH} width='{_HEADER_WIDTH}'>prompt, seed</th>"]
    for r in rows:
        steps = labels.num(r.get("steps"))
        about = labels.configuration(r) + (f" · {int(steps)} steps" if steps is not None else "")
        if r.get("lineage") and isinstance(r["lineage"], str):  # a distilled student says whose
            about += f" · {r['lineage']}"
        head.append(f"<th {_TH} width='{size + 16}'>run {int(r['id'])}{' (baseline)' if r is first else ''}<br>"
                    f"<span style='font-weight:normal'>{html.escape(about)}</span></th>")
    out = [f"<div style='overflow-x:auto'><table {_TABLE}><tr>{''.join(head)}</tr>"]
    base, base_order = images.get(int(first["id"])), image_pairs(first)
    for p in pairs:
        cells = [f"<th {_TH}>{html.escape(p[0])}<br>seed {p[1]}</th>"]
        for r in rows:
            rid, arr, order = int(r["id"]), images.get(int(r["id"])), image_pairs(r)
            if arr is None:
                cells.append(f"<td {_TD}>missing</td>")
                continue
            a = arr[order.index(p)]
            cell = img_tag(a, size, f"run {rid}: {p[0]} seed {p[1]}")
            if r is not first and base is not None:
                b = base[base_order.index(p)]
                if a.shape != b.shape:
                    cell += f"<br>sizes differ ({a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]})"
                else:
                    mad = float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
                    cell += (f"<br>{img_tag(make_diff_heatmap(a, b, HEAT_VMAX), size, f'mean |diff| {mad:.1f}')}"
                             f"<br><span style='font-size:12px'>|run {rid} − run {int(first['id'])}|: mean |Δ| "
                             f"{mad:.1f} of 255</span>")
            cells.append(f"<td {_TD}>{cell}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    out.append("<div class='heat-scale' style='font-size:13px;color:#555;display:flex;align-items:center;gap:6px'>"
               f"<span>0</span>{img_tag(make_colorbar(160, 10), 160, 'colour scale')}"
               f"<span>{html.escape(SCALE_TEXT)}</span></div>")
    return "".join(out)
