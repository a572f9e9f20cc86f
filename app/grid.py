"""A sweep's X/Y(/Z) grid as HTML: each cell a configuration's images with its median latency (IQR, n)
and quality. Pure: run rows and an image loader in, HTML out.

Axes and their values are named for people (``studio_core.study.labels.axis_label``: "DeepCache:
interval = off", "sampler = DDIM"); each cell says its configuration ("DDIM (model default) · DeepCache
N=3"), so the model's own sampler reads as a baseline, and only a knob that was asked to act and did
nothing is flagged. Thumbnails are ``image_size`` px on their long side, upscaled nearest-neighbour
(pixels stay square, never blurred). A cell with images carries its run id (``data-run-id``): the page
hook ``app/static/grid_click.js`` turns a click on it into that run's images at full size.
"""

from __future__ import annotations

import html
import itertools
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from app.pictures import TABLE as _TABLE
from app.pictures import TD as _TD
from app.pictures import TH as _TH
from app.pictures import img_tag, pixel_upscale
from app.tables import image_pairs
from studio_core.study import labels

__all__ = ["LEGEND", "THUMB_SIZES", "sweep_grid_html", "sweep_parts_html"]

THUMB_SIZES = (64, 128, 256)  # the thumbnail sizes the Sweep tab offers, in px; 128 by default
# a cell with images is a button: it opens them at full size (the same look as the other cells, plus the cursor)
_TD_OPEN = _TD[:-1] + ';cursor:zoom-in"'
_GREY = "color:#555"
# how a cell's figures were measured, under the grid
LEGEND = (f'<div style="{_GREY};font-size:12px">Latency: median of the timed repeats (IQR, n repeats); quality: mean '
          "over the images, against the same-seed reference. Click a cell to see its images at full size.</div>")


def _cell_caption(row: Mapping | None) -> str:
    if row is None:
        return '<div style="color:#888">not run</div>'
    if row.get("status") != "ok":
        error = html.escape(str(row.get("error") or "no reason recorded"))[:300]
        return (f'<div style="color:#b00020"><b>{html.escape(str(row.get("status")))}</b> (run {int(row["id"])}): '
                f"{error}</div>")
    n = labels.timed_repeats(row)
    parts = [f'<span style="{_GREY}">{html.escape(labels.configuration(row))}</span>',
             f'<b>{labels.ms(row.get("latency_median_ms"))} ms</b> <span style="{_GREY}">(IQR '
             f'{labels.ms(row.get("latency_iqr_ms"))}, n={n})</span>']
    q = []
    if labels.num(row.get("psnr")) is not None:
        q.append(f"PSNR {labels.number(row['psnr'])} dB")
    if labels.num(row.get("ssim")) is not None:
        q.append(f"SSIM {labels.number(row['ssim'], 3)}")
    if q:
        parts.append(" · ".join(q))
    top1, top5 = labels.num(row.get("fidelity_top1")), labels.num(row.get("fidelity_top5"))
    if top1 is not None:
        parts.append(f"fidelity {top1:.0%} / {top5 or 0:.0%} (n={int(labels.num(row.get('fidelity_n')) or 0)})")
    inactive = labels.inactive_knobs(row)  # never the model's own sampler: that is the baseline, not a failure
    if inactive:
        parts.append(f'<span style="color:#8a4b00">did nothing here: {html.escape(", ".join(inactive))}</span>')
    parts.append(f'<span style="color:#888">run {int(row["id"])}</span>')
    return "<div>" + "<br>".join(parts) + "</div>"


def _header(axis: str, value) -> str:
    return html.escape(f"{labels.axis_label(axis)} = {labels.axis_value(axis, value)}")


def _thumbs(row: Mapping, load_images: Callable[[list[str]], np.ndarray], size: int, max_images: int) -> str:
    """The cell's first ``max_images`` images, each titled with its prompt and seed."""
    hashes = list(row["images"])[:max_images]
    pairs = image_pairs(row)
    out = []
    for i, image in enumerate(load_images(hashes)):
        prompt, seed = pairs[i] if i < len(pairs) else ("", None)
        title = f"{prompt} (seed {seed})" if seed is not None else ""
        out.append(img_tag(pixel_upscale(np.asarray(image), size), size, title))
    more = len(row["images"]) - len(hashes)
    if more > 0:
        out.append(f'<div style="color:#888">+{more} more</div>')
    return "".join(out)


def sweep_grid_html(axes: Sequence[tuple[str, Sequence]], runs_by_index: Mapping[int, Mapping],
                    load_images: Callable[[list[str]], np.ndarray], *, max_images: int = 8,
                    image_size: int = 128, title: str = "", first_index: int = 0, legend: bool = True) -> str:
    """The X/Y(/Z) grid of a sweep: each cell shows that configuration's images with its median latency
    (IQR, n) and PSNR/SSIM. The first axis runs across, the second down, a third makes one table per value.

    ``axes`` are ``(name, values)`` in grid order (first outermost, as ``sweep_from_dict`` runs them);
    ``runs_by_index`` maps a cell's ``sweep_index`` to its run row (decoded); the first cell's is ``first_index``
    (a later part of a list grid, ``sweep_parts_html``). ``legend`` adds the line saying how cells are measured.
    """
    names = [a for a, _ in axes]
    values = [list(v) for _, v in axes]
    index = {cell: i for i, cell in enumerate(itertools.product(*[range(len(v)) for v in values]))}
    x_vals = values[0]
    y_vals = values[1] if len(values) > 1 else [None]
    z_vals = values[2] if len(values) > 2 else [None]
    parts = ['<div class="sweep-grid">']
    if title:
        parts.append(f"<h3>{html.escape(title)}</h3>")
    # a second axis gets a column of row headers under a corner naming both axes; one axis needs neither
    corner = (f"<th {_TH}>{html.escape(labels.axis_label(names[1]))} ↓  "
              f"{html.escape(labels.axis_label(names[0]))} →</th>" if len(values) > 1 else "")
    for zi, z in enumerate(z_vals):
        if len(values) > 2:
            parts.append(f"<h4>{_header(names[2], z)}</h4>")
        rows = [f"<tr>{corner}" + "".join(f"<th {_TH}>{_header(names[0], x)}</th>" for x in x_vals) + "</tr>"]
        for yi, y in enumerate(y_vals):
            cells = [f"<th {_TH}>{_header(names[1], y)}</th>"] if len(values) > 1 else []
            for xi, _x in enumerate(x_vals):
                i = first_index + index[(xi, yi, zi)[:len(values)]]
                row = runs_by_index.get(i)
                if row is not None and row.get("status") == "ok" and row.get("images"):
                    cells.append(f'<td {_TD_OPEN} data-sweep-index="{i}" data-run-id="{int(row["id"])}" '
                                 'title="click: this cell\'s images at full size">'
                                 f"{_thumbs(row, load_images, image_size, max_images)}{_cell_caption(row)}</td>")
                else:
                    cells.append(f'<td {_TD} data-sweep-index="{i}">{_cell_caption(row)}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f'<div style="overflow-x:auto"><table {_TABLE}>' + "".join(rows) + "</table></div>")
    if legend:
        parts.append(LEGEND)
    parts.append("</div>")
    return "".join(parts)


def sweep_parts_html(parts: Sequence[Sequence[tuple[str, Sequence]]], runs_by_index: Mapping[int, Mapping],
                     load_images: Callable[[list[str]], np.ndarray], *, max_images: int = 8, image_size: int = 128,
                     title: str = "") -> str:
    """The grid of a sweep whose grid is a list of products (``Sweep.parts``): one ``sweep_grid_html`` per part,
    in run order, each part's cells numbered on from the parts before it, and the legend once at the end. An axis
    of one value (the part's model, say) is named in the part's title rather than laid out: the cells keep their
    order, since a product over a single value is the product without it."""
    out, first = [], 0
    for k, axes in enumerate(parts):
        fixed = [(a, v) for a, v in axes if len(v) == 1]
        laid = [(a, v) for a, v in axes if len(v) > 1] or list(axes[-1:])
        name = " · ".join([f"part {k + 1} of {len(parts)}"] + [f"{labels.axis_label(a)} = {labels.axis_value(a, v[0])}"
                                                               for a, v in fixed if (a, v) not in laid])
        out.append(sweep_grid_html(laid, runs_by_index, load_images, max_images=max_images, image_size=image_size,
                                   title=f"{title} · {name}" if title else name, first_index=first, legend=False))
        first += math.prod(len(v) for _, v in axes)
    return "".join(out) + LEGEND
