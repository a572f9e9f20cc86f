"""Pictures for the page: nearest-neighbour upscaling, inline PNG ``<img>`` tags, and difference heatmaps
with their colour bar. Pure functions of numpy images; shared by the cards, the sweep grid and Compare.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

__all__ = ["TABLE", "TD", "TH", "heat_colors", "img_tag", "make_colorbar", "make_diff_heatmap", "pixel_upscale"]

# inline styles of the HTML tables (sweep grid, Compare): gradio sanitises <style> blocks away
TABLE = 'style="border-collapse:collapse;margin:6px 0 14px 0;font-size:13px"'
TD = 'style="border:1px solid #ccc;padding:6px;vertical-align:top;text-align:center"'
TH = 'style="border:1px solid #ccc;padding:6px;background:#f3f3f3;text-align:center"'


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


def pixel_upscale(image: np.ndarray, target: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale for display, so a 32x32 image shows its pixels rather than a blur."""
    k = max(1, target // max(image.shape[:2]))
    return image.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else image


# an 'inferno'-like ramp: black (same) -> purple -> red -> orange -> pale yellow (very different)
_HEAT_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=float)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 along the heat ramp (piecewise linear between anchors)."""
    v = np.clip(np.asarray(values, dtype=float), 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_HEAT_ANCHORS) - 2)
    t = (v - lo)[..., None]
    return np.round(_HEAT_ANCHORS[lo] * (1 - t) + _HEAT_ANCHORS[lo + 1] * t).astype(np.uint8)


def make_diff_heatmap(a: np.ndarray, b: np.ndarray, vmax: float = 128.0) -> np.ndarray:
    """Colour-mapped |a - b| per pixel (mean over RGB, 0..255 scale), saturating at ``vmax``."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=-1)
    return heat_colors(diff / vmax)


def make_colorbar(width: int = 256, height: int = 12) -> np.ndarray:
    """The heat ramp as a horizontal bar (left: no difference, right: ``vmax`` or more)."""
    return np.repeat(heat_colors(np.linspace(0, 1, width))[None], height, axis=0)
