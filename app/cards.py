"""Runs as text for people: the Generate tab's and the Runs tab's metrics card (Markdown).

Every number carries its setup and spread (median with IQR, min..max and n; quality with its std;
memory with what was measured), knobs that changed nothing are flagged, Pure functions of run rows.
"""

from __future__ import annotations

from typing import Any, Mapping

from app.plots import _num

__all__ = ["knob_lines", "metrics_card", "setup_line"]


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
