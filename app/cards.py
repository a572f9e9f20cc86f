"""Runs as text for people: the metrics card (Markdown), the sweep grid and the comparison (HTML).

Every number carries its setup and spread (median with IQR, min..max and n; quality with its std;
memory with what was measured), knobs that changed nothing are flagged, and pictures are shown with
nearest-neighbour scaling so small images keep their pixels. Pure functions of run rows and images.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from app.plots import _num, make_colorbar, make_diff_heatmap
from app.tables import image_pairs

__all__ = ["compare_html", "img_tag", "knob_lines", "metrics_card", "setup_line", "sweep_grid_html"]


def _ms(v: Any) -> str:
    f = _num(v)
    if f is None:
        return "n/a"
    return f"{f:.2f}" if f < 10 else (f"{f:.1f}" if f < 1000 else f"{f:,.0f}")


def _bytes(v: Any) -> str:
    f = _num(v)
    if f is None:
        return "n/a"
    return f"{f / 2**30:.2f} GiB" if f >= 2**30 else f"{f / 2**20:.1f} MiB"


_MEM_KINDS = {"cpu_peak_rss": "peak resident memory of the process (CPU)",
              "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated"}


def knob_lines(row: Mapping) -> list[str]:
    """One line per knob report: what it did, ``[did nothing]`` when it changed nothing although
    asked to, ``(baseline)`` when doing nothing was the point (e.g. fp32)."""
    inactive = {k.strip() for k in str(row.get("knobs_inactive") or "").split(",") if k.strip()}
    out = []
    for r in row.get("knob_report") or []:
        flag = "" if r.get("active") else ("  **[did nothing]**" if r.get("knob") in inactive else "  (baseline)")
        out.append(f"{r.get('knob')}: {r.get('summary')}{flag}")
    return out


def setup_line(row: Mapping) -> str:
    """Device, threads, library versions and commit: what a number was measured on."""
    parts = [str(row.get("device_name") or "unknown device")]
    if _num(row.get("threads")):
        parts.append(f"{int(row['threads'])} torch threads")
    if row.get("torch_version"):
        parts.append(f"torch {row['torch_version']}")
    if row.get("diffusers_version"):
        parts.append(f"diffusers {row['diffusers_version']}")
    if row.get("git_commit"):
        parts.append(f"commit {row['git_commit']}")
    return " · ".join(parts)


def metrics_card(row: Mapping, reference: Mapping | None = None) -> str:
    """The Generate tab's metrics card for one run (Markdown)."""
    rid = int(row["id"])
    status = row.get("status")
    lines = [f"### Run {rid}: {status}"]
    if status != "ok":
        lines.append(f"**Error:** {row.get('error') or 'unknown'}")
    n = _num(row.get("repeats"))
    lat = row.get("latencies_ms") or []
    if _num(row.get("latency_median_ms")) is not None:
        n_img = int(row.get("n_images") or 0)
        lines.append(
            f"**Latency** {_ms(row['latency_median_ms'])} ms median of {int(n or len(lat))} timed repeats "
            f"(IQR {_ms(row.get('latency_iqr_ms'))} ms, min..max {_ms(row.get('latency_min_ms'))}.."
            f"{_ms(row.get('latency_max_ms'))} ms) for {n_img} image{'s' if n_img != 1 else ''} · "
            f"{_ms(row.get('per_image_ms'))} ms per image · cold (first) call {_ms(row.get('cold_ms'))} ms"
            + (f" · model load {_ms(row.get('load_ms'))} ms" if _num(row.get("load_ms"))
               else " · model was already loaded"))
        step = _num(row.get("step_mean_ms"))
        lines.append(
            f"**Breakdown** (median pass): text encode {_ms(row.get('text_encode_ms'))} ms · denoise "
            f"{_ms(row.get('denoise_ms'))} ms ({_ms(step)} ms per step, {int(row.get('nfe') or 0)} denoiser calls) · "
            f"VAE decode {_ms(row.get('decode_ms'))} ms")
    if _num(row.get("peak_mem_bytes")) is not None:
        kind = row.get("peak_mem_kind") or ""
        lines.append(f"**Peak memory** {_bytes(row['peak_mem_bytes'])} ({_MEM_KINDS.get(kind, kind)}; "
                     f"{_bytes(row.get('mem_baseline_bytes'))} before the timed part)")
    if _num(row.get("psnr")) is not None:
        ref = ""
        if reference:
            ref = (f" #{reference.get('id')} ({reference.get('sampler')}, {reference.get('steps')} steps, "
                   f"guidance {reference.get('guidance')}, fp32, same prompts and seeds)")
        n_img = int(row.get("n_images") or 0)
        if n_img > 1:
            q = [f"PSNR {float(row['psnr']):.2f} ± {float(row.get('psnr_std') or 0):.2f} dB",
                 f"SSIM {float(row['ssim']):.4f} ± {float(row.get('ssim_std') or 0):.4f}"]
            over = f"mean ± std over {n_img} images"
        else:
            q = [f"PSNR {float(row['psnr']):.2f} dB", f"SSIM {float(row['ssim']):.4f}"]
            over = "one image, so no spread"
        q.append(f"LPIPS {float(row['lpips']):.4f}" if _num(row.get("lpips")) is not None else "LPIPS n/a")
        lines.append(f"**Quality** vs reference{ref}: " + " · ".join(q) + f" ({over})")
    if _num(row.get("fidelity_top1")) is not None:
        lines.append(f"**Prompt fidelity** top-1 {float(row['fidelity_top1']):.0%} · top-5 "
                     f"{float(row.get('fidelity_top5') or 0):.0%} (n={int(row.get('fidelity_n') or 0)}; "
                     "nearest training image by caption)")
    if row.get("metrics_note"):
        lines.append(f"*Note: {row['metrics_note']}*")
    knobs = knob_lines(row)
    if knobs:
        lines.append("**Knobs**\n" + "\n".join(f"- {k}" for k in knobs))
    lines.append(f"**Setup** {setup_line(row)}")
    return "\n\n".join(lines)


# ------------------------------------------------------------------------------------------ HTML
def img_tag(image: np.ndarray, size: int = 64, title: str = "") -> str:
    """An inline PNG ``<img>``, scaled to ``size`` px on its long side, pixelated when enlarged."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image))
    if max(im.size) > 2 * size:  # large images: send a thumbnail, not the full picture
        im.thumbnail((2 * size, 2 * size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    src = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    h, w = image.shape[:2]
    width, height = (size, round(size * h / w)) if w >= h else (round(size * w / h), size)
    label = html.escape(title)
    return (f'<img src="{src}" width="{width}" height="{height}" title="{label}" alt="{label}"'
            ' style="image-rendering:pixelated;margin:1px;border:1px solid #ddd;vertical-align:top">')


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


_TABLE = 'style="border-collapse:collapse;margin:6px 0 14px 0;font-size:13px"'
_TD = 'style="border:1px solid #ccc;padding:6px;vertical-align:top;text-align:center"'
_TH = 'style="border:1px solid #ccc;padding:6px;background:#f3f3f3;text-align:center"'


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
