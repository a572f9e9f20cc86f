"""A sweep's X/Y(/Z) grid as HTML: each cell a configuration's images with its median latency (IQR, n)
and quality. Pure: run rows and an image loader in, HTML out.
"""

from __future__ import annotations

import html
import itertools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from app.cards import _ms
from app.pictures import TABLE as _TABLE
from app.pictures import TD as _TD
from app.pictures import TH as _TH
from app.pictures import img_tag
from app.plots import _num
from app.tables import image_pairs

__all__ = ["sweep_grid_html"]


def _cell_caption(row: Mapping | None) -> str:
    if row is None:
        return '<div style="color:#888">not run</div>'
    if row.get("status") != "ok":
        return (f'<div style="color:#b00020"><b>{html.escape(str(row.get("status")))}</b> (run {int(row["id"])}): '
                f'{html.escape(str(row.get("error") or ""))[:300]}</div>')
    n = int(row.get("repeats") or 0)
    parts = [f'<b>{_ms(row.get("latency_median_ms"))} ms</b> <span style="color:#555">(IQR '
             f'{_ms(row.get("latency_iqr_ms"))}, n={n})</span>']
    q = []
    if _num(row.get("psnr")) is not None:
        q.append(f"PSNR {float(row['psnr']):.2f} dB")
    if _num(row.get("ssim")) is not None:
        q.append(f"SSIM {float(row['ssim']):.3f}")
    if q:
        parts.append(" · ".join(q))
    if _num(row.get("fidelity_top1")) is not None:
        parts.append(f"fidelity {float(row['fidelity_top1']):.0%} / {float(row.get('fidelity_top5') or 0):.0%} "
                     f"(n={int(row.get('fidelity_n') or 0)})")
    if row.get("knobs_inactive"):
        parts.append(f'<span style="color:#b00020">[did nothing: {html.escape(str(row["knobs_inactive"]))}]</span>')
    parts.append(f'<span style="color:#888">run {int(row["id"])}</span>')
    return "<div>" + "<br>".join(parts) + "</div>"


def _value(v: Any) -> str:
    return html.escape("none" if v is None else (f"{v:g}" if isinstance(v, float) else str(v)))




def sweep_grid_html(axes: Sequence[tuple[str, Sequence]], runs_by_index: Mapping[int, Mapping],
                    load_images: Callable[[list[str]], np.ndarray], *, max_images: int = 8,
                    image_size: int = 64, title: str = "") -> str:
    """The X/Y(/Z) grid of a sweep: each cell shows that configuration's images with its median latency
    (IQR, n) and PSNR/SSIM. The first axis runs across, the second down, a third makes one table per value.

    ``axes`` are ``(name, values)`` in grid order (first outermost, as ``sweep_from_dict`` runs them);
    ``runs_by_index`` maps a cell's ``sweep_index`` to its run row (decoded).
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
    for zi, z in enumerate(z_vals):
        if len(values) > 2:
            parts.append(f"<h4>{html.escape(names[2])} = {_value(z)}</h4>")
        corner = html.escape(f"{names[1]} ↓  {names[0]} →" if len(values) > 1 else f"{names[0]} →")
        head = f"<th {_TH}>{corner}</th>"
        head += "".join(f"<th {_TH}>{html.escape(names[0])} = {_value(x)}</th>" for x in x_vals)
        rows = [f"<tr>{head}</tr>"]
        for yi, y in enumerate(y_vals):
            cells = [f"<th {_TH}>{html.escape(names[1]) + ' = ' + _value(y) if len(values) > 1 else ''}</th>"]
            for xi, _x in enumerate(x_vals):
                key = (xi, yi, zi)[:len(values)]
                row = runs_by_index.get(index[key])
                imgs = ""
                if row is not None and row.get("status") == "ok" and row.get("images"):
                    hashes = list(row["images"])[:max_images]
                    pairs = image_pairs(row)
                    pics = load_images(hashes)
                    imgs = "".join(img_tag(im, image_size, f"{p} (seed {s})" if i < len(pairs) else "")
                                   for i, (im, (p, s)) in enumerate(zip(pics, pairs + [("", 0)] * len(pics))))
                    more = len(row["images"]) - len(hashes)
                    if more > 0:
                        imgs += f'<div style="color:#888">+{more} more</div>'
                cells.append(f'<td {_TD} data-sweep-index="{index[key]}">{imgs}{_cell_caption(row)}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<table {_TABLE}>" + "".join(rows) + "</table>")
    parts.append('<div style="color:#555;font-size:12px">Latency: median of the timed repeats (IQR, n repeats); '
                 "quality: mean over the images, against the same-seed reference.</div></div>")
    return "".join(parts)
