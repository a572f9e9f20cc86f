"""Runs as text for people: the metrics card of the Generate tab and the Runs tab (Markdown with a little
inline HTML: the time bar and the images beside their reference).

Every number carries its setup and spread (median with IQR, min..max and n; quality with its method and
spread: pooled PSNR with the per-image range and identical count, an older run's mean of per-image dB named so;
memory above its baseline with how it was measured, energy per image or why there is none). A timing that
did not converge (``labels.not_converged``) is flagged, as is a noisy one (IQR over ``labels.NOISY_IQR_RATIO``
of the median) and a stage the run's settings do not touch that ran ``STAGE_SLOWDOWN`` times slower than
in the pinned baseline (the machine was busy). Against a pinned baseline run the card gives latency ×,
PSNR Δ and memory Δ, saying "within noise" when the two runs' IQR ranges overlap. Pure functions of run
rows (and of images the caller loaded); no ``nan``, ``None`` or raw dicts reach the text.
"""

from __future__ import annotations

import ast
import html
import json
import re
from typing import Any, Mapping, Sequence

import numpy as np

from app.pictures import img_tag
from studio_core.knobs import KNOBS
from studio_core.knobs.base import GROUPS
from studio_core.study import labels, quality_text
from studio_core.study.labels import num

__all__ = ["EMPTY_CARD", "PIN_HINT", "REFERENCE_PAIRS", "STAGE_SLOWDOWN", "baseline_text", "knob_lines", "metrics_card",
           "reference_strip", "setup_line", "timing_flags", "time_bar"]


# a stage none of the run's settings touches, this many times slower (per image) than in the baseline: a busy machine
STAGE_SLOWDOWN = 3.0
# images shown beside their reference on the card
REFERENCE_PAIRS = 4
# knobs of this group act inside the denoising loop only: they never change text encode or decode times
DENOISE_ONLY_GROUP = GROUPS[1]
EMPTY_CARD = ("Generate to see the latency and its breakdown, peak memory, quality against a same-seed reference, "
              "and the change against a baseline run you pin above.")
PIN_HINT = ("**Baseline:** none pinned. Pick a run in *Baseline run* (above the card) to see this run's "
            "latency ×, PSNR Δ and memory Δ against it.")

# the segments of the time bar: (row column, name, colour)
_STAGES = (("text_encode_ms", "text encode", "#4e79a7"), ("denoise_ms", "denoise", "#f28e2b"),
           ("decode_ms", "VAE decode", "#59a14f"), (None, "other", "#bab0ac"))
_DICT = re.compile(r"\{[^{}]*\}")


def _minus(text: str) -> str:
    """A signed number with a real minus sign."""
    return text.replace("-", "−")


def _readable(summary: Any) -> str:
    """A knob report's summary for people: arrows for ``->``, a dict written as ``key value`` pairs (older
    rows wrote ``DPMSolverMultistepScheduler {'use_karras_sigmas': True}``), never braces."""
    def pairs(match: re.Match) -> str:
        try:
            d = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError):
            return match.group(0).strip("{}")
        if not isinstance(d, dict):
            return str(d)
        items = [f"{str(k).replace('_', ' ')} {'on' if v is True else 'off' if v is False else v}"
                 for k, v in d.items()]
        return ("with " + ", ".join(items)) if items else ""

    text = _DICT.sub(pairs, str(summary or "no report"))
    return text.replace("->", "→").replace("{", "(").replace("}", ")").strip()


def _knob_title(name: str, row: Mapping) -> str:
    """The knob as the card names it: an optional knob by its label with this run's settings ("DeepCache
    N=3"), a built-in one by its title ("Sampler")."""
    items = labels.knob_items(row.get("knobs"))
    if name in items:
        return labels.knobs_text({name: items[name]}) or name
    return KNOBS[name].short_title if name in KNOBS else name.replace("_", " ")


def knob_lines(row: Mapping) -> list[str]:
    """One line per knob report: what it did, ``[did nothing]`` when it changed nothing although asked to,
    ``(baseline)`` when doing nothing was the point (fp32, the model's own sampler)."""
    inactive = {k.strip() for k in str(row.get("knobs_inactive") or "").split(",") if k.strip()} - {"sampler"}
    reports = row.get("knob_report") or []
    if isinstance(reports, str):
        try:
            reports = json.loads(reports)
        except ValueError:
            reports = []
    out = []
    for r in reports if isinstance(reports, list) else []:
        if not isinstance(r, dict):
            continue
        name = str(r.get("knob") or "knob")
        flag = "" if r.get("active") else (" **[did nothing]**" if name in inactive else " (baseline)")
        out.append(f"**{_knob_title(name, row)}**: {_readable(r.get('summary'))}{flag}")
    return out


def setup_line(row: Mapping) -> str:
    """Device, threads, library versions and commit: what a number was measured on."""
    parts = [str(row.get("device_name") or "unknown device")]
    if num(row.get("threads")):
        parts.append(f"{int(row['threads'])} torch threads")
    if row.get("torch_version"):
        parts.append(f"torch {row['torch_version']}")
    if row.get("diffusers_version"):
        parts.append(f"diffusers {row['diffusers_version']}")
    if row.get("git_commit"):
        parts.append(f"commit {row['git_commit']}")
    return " · ".join(parts)


def _n_images(row: Mapping) -> int:
    return int(num(row.get("n_images")) or 0)


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def time_bar(row: Mapping) -> str:
    """The median pass as a stacked bar (text encode / denoise / VAE decode / other) with its legend,
    or "" when the run has no breakdown."""
    total = num(row.get("latency_median_ms"))
    parts = [(name, colour, num(row.get(col))) for col, name, colour in _STAGES if col]
    if not total or total <= 0 or all(v is None for _, _, v in parts):
        return ""
    known = sum(v or 0 for _, _, v in parts)
    parts.append((_STAGES[-1][1], _STAGES[-1][2], max(total - known, 0.0)))
    scale = max(total, known)
    segments, legend = [], []
    for name, colour, v in parts:
        if v is None:
            continue
        share = v / scale
        tip = f"{name} {labels.ms(v)} ms ({share:.0%})"
        if share > 0:
            segments.append(f'<span title="{tip}" style="width:{100 * share:.2f}%;background:{colour}"></span>')
        extra = ""
        if name == "denoise":
            extra = (f" ({labels.ms(row.get('step_mean_ms'))} ms per step, "
                     f"{_plural(int(num(row.get('nfe')) or 0), 'denoiser call')})")
        legend.append(f'<span style="color:{colour}">■</span> {name} {labels.ms(v)} ms{extra}')
    bar = ('<div title="time breakdown of the median pass" style="display:flex;height:14px;width:100%;'
           'max-width:560px;border-radius:3px;overflow:hidden;background:#eee;margin:2px 0 4px 0">'
           + "".join(segments) + "</div>")
    return f"**Breakdown** (median pass)\n\n{bar}\n\n" + " · ".join(legend)


def _interval(row: Mapping) -> tuple[float, float] | None:
    med = num(row.get("latency_median_ms"))
    if med is None:
        return None
    half = (num(row.get("latency_iqr_ms")) or 0.0) / 2
    return med - half, med + half


def _per_image(row: Mapping, col: str) -> float | None:
    v, n = num(row.get(col)), _n_images(row)
    return v / n if v is not None and n else None


def _run_name(row: Mapping) -> str:
    steps = num(row.get("steps"))
    return (f"run {int(row['id'])} ({labels.configuration(row)}"
            + (f", {int(steps)} steps" if steps is not None else "") + ")")


def baseline_text(row: Mapping, baseline: Mapping) -> str:
    """This run against the pinned baseline: latency × (per image when the two made different numbers of
    images) with "within noise" when the median ± IQR/2 ranges overlap, PSNR Δ in dB, peak memory Δ in MiB."""
    if int(baseline["id"]) == int(row["id"]):
        return f"**Baseline:** this is the pinned baseline, {_run_name(baseline)}."
    head = f"**Against the baseline**, {_run_name(baseline)}:"
    parts = []
    same_n = _n_images(row) == _n_images(baseline)
    mine, theirs = _interval(row), _interval(baseline)
    if not same_n:
        mine = None if mine is None or not _n_images(row) else tuple(v / _n_images(row) for v in mine)
        theirs = None if theirs is None or not _n_images(baseline) else tuple(v / _n_images(baseline) for v in theirs)
    a = num(row.get("latency_median_ms" if same_n else "per_image_ms"))
    b = num(baseline.get("latency_median_ms" if same_n else "per_image_ms"))
    if a is not None and b:
        ratio = a / b
        what = "latency" if same_n else "latency per image"
        vs = f"{labels.ms(a)} vs {labels.ms(b)} ms median"
        if mine and theirs and mine[0] <= theirs[1] and theirs[0] <= mine[1]:
            verdict = f"within noise: {vs}, the IQR ranges overlap"
        else:
            verdict = f"{abs(1 - ratio):.0%} {'faster' if ratio < 1 else 'slower'}: {vs}"
        parts.append(f"**{ratio:.2f}×** the baseline's {what} ({verdict})")
    else:
        parts.append("latency × n/a (a run without timings)")
    pa, pb = num(row.get("psnr")), num(baseline.get("psnr"))
    if pa is not None and pb is not None:
        d = pa - pb
        word = "same" if abs(d) < 0.005 else ("better" if d > 0 else "worse")
        parts.append(f"PSNR **{_minus(f'{d:+.2f}')}** dB ({word}: {pa:.2f} vs {pb:.2f} dB)")
    else:
        parts.append("PSNR Δ n/a")
    ma, mb = num(row.get("peak_mem_bytes")), num(baseline.get("peak_mem_bytes"))
    if ma is not None and mb is not None:
        d = (ma - mb) / 2**20
        word = "same" if abs(d) < 0.05 else ("less" if d < 0 else "more")
        parts.append(f"peak memory **{_minus(f'{d:+.1f}')}** MiB ({word})")
    else:
        parts.append("memory Δ n/a")
    notes = []
    if ma is not None and mb is not None and bool(row.get("peak_mem_method")) != bool(baseline.get("peak_mem_method")):
        notes.append("memory Δ mixes an older run's absolute peak with a peak above its baseline")
    if not same_n:
        notes.append(f"the baseline made {_plural(_n_images(baseline), 'image')}, this run "
                     f"{_n_images(row)}: latency compared per image")
    if (row.get("model"), row.get("prompts"), row.get("seeds")) != (
            baseline.get("model"), baseline.get("prompts"), baseline.get("seeds")):
        notes.append("other model, prompts or seeds: PSNR compares scores against different references")
    if labels.psnr_method(row) != labels.psnr_method(baseline):
        notes.append(f"PSNR Δ mixes methods: this run's is {labels.psnr_method(row)}, the baseline's "
                     f"{labels.psnr_method(baseline)}")
    tail = f" *({'; '.join(notes)})*" if notes else ""
    return f"{head} " + " · ".join(parts) + tail


def _stage_setup(row: Mapping) -> tuple:
    """What can change text encode and VAE decode times: everything but the sampler, the steps and the
    knobs that act inside the denoising loop only."""
    knobs = {k: v for k, v in labels.knob_items(row.get("knobs")).items()
             if getattr(KNOBS.get(k), "group", None) != DENOISE_ONLY_GROUP}
    return (row.get("model"), num(row.get("height")), num(row.get("width")), num(row.get("guidance")),
            row.get("precision"), json.dumps(knobs, sort_keys=True, default=str))


def timing_flags(row: Mapping, baseline: Mapping | None = None) -> list[str]:
    """Warnings about the timing: noisy repeats (``labels.noisy``), and, against a baseline with the same
    settings outside the denoising loop, a text encode or VAE decode ``STAGE_SLOWDOWN`` times slower per
    image, which no setting explains."""
    flags = []
    unsettled = labels.not_converged(row)
    if unsettled:
        flags.append(f"⚠ **{unsettled[0].upper()}{unsettled[1:]}**: the median may still move; rerun on a quieter "
                     "machine")
    why = labels.noisy(row)
    if why:
        head, _, rest = why.partition(":")
        flags.append(f"⚠ **{head.capitalize()}**:{rest}")
    if baseline is not None and int(baseline["id"]) != int(row["id"]) and _stage_setup(row) == _stage_setup(baseline):
        for col, name, _ in _STAGES[:3]:
            if col == "denoise_ms":
                continue
            a, b = _per_image(row, col), _per_image(baseline, col)
            if a is not None and b and a / b >= STAGE_SLOWDOWN:
                flags.append(f"⚠ **{name} {a / b:.1f}× the baseline's** ({labels.ms(a)} vs {labels.ms(b)} ms per "
                             "image) although no setting that touches it differs: the machine was likely busy; "
                             "run again to check")
    return flags


def _reference_setup(reference: Mapping) -> str:
    """``DPM++ 2M, 10 steps, fp32``: how a reference was made."""
    sampler = reference.get("sampler")
    sampler = "the model's own sampler" if sampler in (None, "", "default") else str(sampler)
    steps = num(reference.get("steps"))
    return sampler + (f", {int(steps)} steps" if steps is not None else "") + f", {reference.get('precision') or 'fp32'}"


def _reference_name(reference: Mapping | None) -> str:
    return f"reference ({_reference_setup(reference)})" if reference else "reference"


def reference_strip(row: Mapping, images: Sequence[np.ndarray] | None, reference_images: Sequence[np.ndarray] | None,
                    reference: Mapping | None = None, size: int = 96) -> str:
    """The run's first images, each beside its same-seed reference image, captioned; "" without both."""
    if images is None or reference_images is None or not len(images) or not len(reference_images):
        return ""
    prompts, seeds = list(row.get("prompts") or []), list(row.get("seeds") or [])
    pairs = [(p, s) for p in prompts for s in seeds]
    ref_name = _reference_name(reference)
    rid = int(row["id"])
    cells = []
    for i, (mine, ref) in enumerate(zip(images, reference_images)):
        what = f"{pairs[i][0]} · seed {pairs[i][1]}" if i < len(pairs) else f"image {i + 1}"
        pair = "".join(f'<div style="text-align:center">{img_tag(im, size, f"{who}: {what}")}{caption}</div>'
                       for im, who, caption in ((mine, f"run {rid}", f"run {rid}"), (ref, ref_name, "reference")))
        cells.append('<div style="margin:0 18px 8px 0;font-size:12px;line-height:1.35;text-align:center">'
                     f'<div style="display:flex;gap:4px">{pair}</div>{html.escape(what)}</div>')
    n = _n_images(row) or len(images)
    shown = f"the first {len(cells)} of {n} images" if n > len(cells) else _plural(len(cells), "image")
    return (f"**Beside the {html.escape(ref_name)}** ({shown}, same prompts and seeds)\n\n"
            f'<div style="display:flex;flex-wrap:wrap">{"".join(cells)}</div>')


def _latency_line(row: Mapping) -> str:
    n = labels.timed_repeats(row)
    n_img = _n_images(row)
    med, iqr = num(row.get("latency_median_ms")), num(row.get("latency_iqr_ms"))
    if iqr is None:
        spread = "one repeat, so no spread" if n == 1 else "no spread recorded"
    else:
        share = f", {iqr / med:.0%} of the median (noisy above {labels.NOISY_IQR_RATIO:.0%})" if med else ""
        spread = (f"IQR {labels.ms(iqr)} ms{share}; min..max {labels.ms(row.get('latency_min_ms'))}.."
                  f"{labels.ms(row.get('latency_max_ms'))} ms")
    lo, hi = num(row.get("latency_ci_low_ms")), num(row.get("latency_ci_high_ms"))
    if lo is not None and hi is not None and med:
        spread += f"; median's 95% CI {labels.ms(lo)}..{labels.ms(hi)} ms (±{(hi - lo) / 2 / med:.1%})"
    if num(row.get("warmup_done")) is not None:
        spread += f"; after {_plural(int(num(row['warmup_done'])), 'warm-up call')}"
    return (f"**Latency** {labels.ms(med)} ms median of {_plural(n, 'timed repeat')} ({spread}) for {_plural(n_img, 'image')} · "
            f"{labels.ms(row.get('per_image_ms'))} ms per image · cold (first) call {labels.ms(row.get('cold_ms'))} ms"
            + (f" · model load {labels.ms(row.get('load_ms'))} ms" if num(row.get("load_ms"))
               else " · model was already loaded"))


def _psnr_part(row: Mapping) -> str:
    """PSNR as the row's method gives it: pooled, with the per-image range and identical count; an older
    run's mean of per-image dB with its std, named as such."""
    n_img, psnr = _n_images(row), labels.number(row["psnr"])
    if not labels.psnr_is_pooled(row):
        spread = f" ± {labels.number(row.get('psnr_std') or 0)}" if n_img > 1 else ""
        return f"PSNR {psnr}{spread} dB (older run: mean of per-image dB, not pooled)"
    identical = int(num(row.get("identical_images")) or 0)
    if n_img and identical >= n_img:
        return (f"PSNR {psnr} dB (the cap: {'the image is' if n_img == 1 else f'all {n_img} images are'} "
                "identical to the reference)")
    if n_img <= 1:
        return f"PSNR {psnr} dB ({'one image' if n_img else 'pooled'})"
    lo, hi = labels.number(row.get("psnr_min")), labels.number(row.get("psnr_max"))
    per_image = lo if lo == hi else f"{lo}–{hi}"
    same = f", {identical} identical" if identical else ""
    return f"PSNR {psnr} dB (pooled over {n_img} images; per image {per_image} dB{same})"


def _quality_line(row: Mapping, reference: Mapping | None) -> str:
    ref = ""
    if reference:
        ref = (f" #{reference.get('id')} ({_reference_setup(reference)}, guidance "
               f"{labels.number(reference.get('guidance'), 1)}, same prompts and seeds)")
        g_ref, g_run = num(reference.get("guidance")), num(row.get("guidance"))
        if g_ref is not None and g_run is not None and g_ref != g_run:  # one guidance per reference (reference.py)
            ref += (f", **reference at guidance {g_ref:g}**, this run at guidance {g_run:g}: the scores include "
                    "the change of guidance")
    n_img = _n_images(row)
    if n_img > 1:
        ssim = (f"SSIM {labels.number(row.get('ssim'), 4)} ± {labels.number(row.get('ssim_std') or 0, 4)} "
                f"(mean ± std over {n_img} images)")
    else:
        ssim = f"SSIM {labels.number(row.get('ssim'), 4)} (one image, so no spread)"
    q = [_psnr_part(row), ssim, f"LPIPS {labels.number(row.get('lpips'), 4)}"]
    how = ("10·log10(1/MSE), the MSE pooled over every pixel of every image" if labels.psnr_is_pooled(row)
           else "each image's dB averaged, identical images counted as 100 dB")
    return (f"**Quality** vs reference{ref}: " + " · ".join(q)
            + f"\n\n*PSNR: {labels.psnr_method(row)}: {how}. {labels.ssim_method(row)}.*")


def quality_lines(row: Mapping) -> list[str]:
    """The emoji feature network's scores (on the run's images, and on its distribution set) and the standard
    metrics from local weights, each with its n, spread and method."""
    lines = []
    on_images = quality_text.emoji_image_text(row)
    if on_images:
        lines.append(f"**Emoji feature network** {on_images}")
    dist = quality_text.distribution_text(row)
    if dist:
        lines.append(f"**Distribution** {dist}\n\n*{quality_text.NOT_FID[0].upper() + quality_text.NOT_FID[1:]}. "
                     f"{row.get('dist_method') or ''}*")
    standard = quality_text.standard_text(row)
    if standard:
        lines.append(f"**Standard metrics** (local weights) {standard}")
    return lines


def metrics_card(row: Mapping, reference: Mapping | None = None, *, baseline: Mapping | None = None,
                 baseline_hint: bool = False, images: Sequence[np.ndarray] | None = None,
                 reference_images: Sequence[np.ndarray] | None = None) -> str:
    """The metrics card of one run (Markdown). ``baseline`` is the pinned run to compare with; without one,
    ``baseline_hint`` says how to pin it (the Generate tab). ``images`` and ``reference_images`` (the first
    few of each, same order) are shown side by side."""
    rid = int(row["id"])
    status = row.get("status") or "unknown"
    lines = [f"### Run {rid}: {status}"]
    what = [labels.configuration(row)]
    for col, fmt in (("steps", "{:.0f} steps"), ("guidance", "guidance {:g}")):
        if num(row.get(col)) is not None:
            what.append(fmt.format(num(row[col])))
    if num(row.get("height")) is not None and num(row.get("width")) is not None:
        what.append(f"{int(num(row['height']))}x{int(num(row['width']))} px")
    lines.append("*" + " · ".join(what) + "*")
    if row.get("lineage") and isinstance(row["lineage"], str):  # a distilled student (NaN in a frame: no lineage)
        lines.append(f"**Model** {row.get('model') or 'unknown'}: {row['lineage']}")
    if status != "ok":
        lines.append(f"**Error:** {row.get('error') or 'unknown'}")
    lines += timing_flags(row, baseline)
    if num(row.get("latency_median_ms")) is not None:
        lines.append(_latency_line(row))
        bar = time_bar(row)
        if bar:
            lines.append(bar)
    if baseline is not None:
        lines.append(baseline_text(row, baseline))
    elif baseline_hint:
        lines.append(PIN_HINT)
    memory = labels.memory_text(row)
    if memory:
        lines.append(f"**Peak memory** {memory}")
    energy = labels.energy_text(row)
    if energy:
        lines.append(f"**Energy** {energy}")
    if num(row.get("psnr")) is not None:
        lines.append(_quality_line(row, reference))
    strip = reference_strip(row, images, reference_images, reference)
    if strip:
        lines.append(strip)
    if num(row.get("fidelity_top1")) is not None:
        lines.append(f"**Prompt fidelity** top-1 {num(row['fidelity_top1']):.0%} · top-5 "
                     f"{num(row.get('fidelity_top5')) or 0:.0%} (n={int(num(row.get('fidelity_n')) or 0)}; "
                     "nearest training image by caption)")
    lines += quality_lines(row)
    if row.get("metrics_note"):
        lines.append(f"*Note: {row['metrics_note']}*")
    knobs = knob_lines(row)
    if knobs:
        lines.append("**Knobs**\n\n" + "\n".join(f"- {k}" for k in knobs))
    lines.append(f"**Setup** {setup_line(row)}")
    return "\n\n".join(lines)
