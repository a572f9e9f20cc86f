"""How the feature-network and standard-metric scores of a run read, with their n, spread and method: one place
for the metrics card, the frontier's hover and the CLI. Torch-free.
"""

from __future__ import annotations

from typing import Mapping

from studio_core.study.labels import num, number

__all__ = ["NOT_FID", "distribution_text", "emoji_image_text", "standard_text"]

NOT_FID = ("on the studio's own emoji feature network: comparable between runs of emoji models at the same n, "
           "not with published FID, KID or LPIPS")


def _pct(v) -> str:
    return "n/a" if num(v) is None else f"{num(v):.0%}"


def emoji_image_text(row: Mapping) -> str | None:
    """"perceptual distance 0.0123 ± 0.0040 vs reference · classifier top-1 75% · top-5 100% (n=4)", or None."""
    parts = []
    d = num(row.get("perceptual_emoji"))
    if d is not None:
        if (num(row.get("n_images")) or 0) > 1:
            parts.append(f"perceptual distance {number(d, 4)} ± {number(row.get('perceptual_emoji_std') or 0, 4)} "
                         "vs reference (mean ± std over the images)")
        else:  # a std over one image means nothing
            parts.append(f"perceptual distance {number(d, 4)} vs reference (one image, so no spread)")
    if num(row.get("classifier_top1")) is not None:
        parts.append(f"classifier top-1 {_pct(row.get('classifier_top1'))} · top-5 {_pct(row.get('classifier_top5'))}"
                     f" (n={int(num(row.get('classifier_n')) or 0)})")
    return " · ".join(parts) or None


def distribution_text(row: Mapping, short: bool = False) -> str | None:
    """The distribution set's scores: "FD-emoji 12.34 · KID-emoji 0.0123 ± 0.0010 · precision 0.81 · recall 0.55
    (n=500; generated in 61.2 s and scored in 0.8 s, apart from the latency)"; ``short`` leaves out the costs.
    None for a run without a distribution set."""
    fd = num(row.get("fd_emoji"))
    if fd is None:
        return None
    n = int(num(row.get("dist_n")) or 0)
    text = (f"FD-emoji {number(fd, 2)} · KID-emoji {number(row.get('kid_emoji'), 4)} ± "
            f"{number(row.get('kid_emoji_std'), 4)} · precision {number(row.get('precision_emoji'), 3)} · recall "
            f"{number(row.get('recall_emoji'), 3)}")
    if num(row.get("dist_classifier_top5")) is not None:
        text += f" · classifier top-5 {_pct(row.get('dist_classifier_top5'))}"
    if short:
        return f"{text} (n={n})"
    costs = []
    if num(row.get("dist_gen_ms")) is not None:
        costs.append(f"generated in {num(row['dist_gen_ms']) / 1000:.1f} s")
    if num(row.get("dist_score_ms")) is not None:
        costs.append(f"scored in {num(row['dist_score_ms']) / 1000:.2f} s")
    return f"{text} (n={n} images{'; ' + ' and '.join(costs) + ', apart from the latency' if costs else ''})"


def standard_text(row: Mapping) -> str | None:
    """LPIPS / FID / CLIP-score from locally stored weights, each with its spread and method, or None."""
    parts = []
    if num(row.get("lpips")) is not None and row.get("lpips_method"):
        parts.append(f"LPIPS {number(row['lpips'], 4)} ± {number(row.get('lpips_std') or 0, 4)} ({row['lpips_method']})")
    if num(row.get("fid")) is not None:
        parts.append(f"FID {number(row['fid'], 2)}, KID {number(row.get('fid_kid'), 4)} ± "
                     f"{number(row.get('fid_kid_std'), 4)} (n={int(num(row.get('fid_n')) or 0)}; {row.get('fid_method')})")
    if num(row.get("clip_score")) is not None:
        parts.append(f"CLIP-score {number(row['clip_score'], 2)} ± {number(row.get('clip_score_std') or 0, 2)} "
                     f"({row.get('clip_method') or 'local CLIP'})")
    return " · ".join(parts) or None
