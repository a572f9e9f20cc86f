"""Transformer caching on a Flux-family model: the cells of ``presets/transformer-caching.yaml`` side by side.

One loaded pipeline, one process. The configurations are the preset's grid (the uncached baseline, First
Block Cache at two thresholds, FasterCache, PAB, TaylorSeer, MagCache with the model's shipped ratios) on
``--model`` (default emoji-flux; any Flux-family folder), at the preset's steps and the model's own guidance
(true CFG on emoji-flux: two transformer calls per step). Each knob is applied through the engine's own
``apply_knobs`` just before its pass and undone just after, and every round times each configuration once, in
a rotated order, through the shared harness (``_harness.py``), so drift in the machine's speed hits every
configuration alike. Raw latencies go to ``benchmarks/results/transformer_caching-<date>.json`` (``--dirty``
to measure on uncommitted code).

Reported per configuration: median latency over the rounds; the speed-up as the median of the per-round
ratios uncached / cached, with its range; PSNR and SSIM (mean ± std over images) against the uncached output
and against the engine's reference (the model's own solver at 200 steps, fp32, no knobs); prompt fidelity
top-1 / top-5 for an emoji-domain model; and what the knob reported (transformer calls that reused the cache,
of all calls). Under the table, each method's figure beside its published one on FLUX.1-dev.

    .venv/bin/python benchmarks/transformer_caching.py          # emoji-flux, the preset's 8 prompts, 5 rounds
    .venv/bin/python benchmarks/transformer_caching.py --model DIR --prompts 4 --rounds 3   # quicker

About 4 minutes with emoji-flux on 2 shared CPU cores (254 s measured, loading and the reference included).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESET = ROOT / "presets" / "transformer-caching.yaml"

# published figures to read each method against (../shared/ANCHORS.md, and the methods' own READMEs where
# ANCHORS.md has none): (what was measured, speed-up, source)
ANCHORS = {
    "first_block": ("FLUX.1-dev, 1024 px, 28 steps, one L20, threshold 0.08: 26.36 s -> 17.01 s", 1.55,
                    "diffusers docs, para_attn"),
    "taylorseer": ("FLUX.1-dev, its own interval and order (4.99x fewer FLOPs, ImageReward unchanged)", 3.53,
                   "Shenyi-Z/TaylorSeer README"),
    "mag": ("FLUX.1 [dev], one A800, threshold 0.24, K 5, retention 0.1: 14.26 s -> 5.05 s", 2.8,
            "Zehong-Ma/MagCache, MagCache4FLUX README"),
    "faster": ("CogVideoX (video, batched CFG, CFG-Cache on): 245.9 s -> 159.0 s, peak memory 24.4 -> 40.7 GB",
               1.55, "diffusers PR #10163"),
}


def preset_sweep(model: str, prompts: int, steps: int | None):
    """The preset's cells on ``model`` with its first ``prompts`` prompts (and ``steps`` if given), resolved
    and checked like a sweep's; the first cell must be the uncached baseline."""
    from studio_core.prompts import PROMPT_SETS
    from studio_core.study.sweep import sweep_from_dict

    data = yaml.safe_load(PRESET.read_text(encoding="utf-8"))
    base = dict(data["base"])
    chosen = list(base.pop("prompts", None) or PROMPT_SETS[base.pop("prompt_set")])[:prompts]
    base.pop("prompt_set", None)
    data["base"] = {**base, "model": model, "prompts": chosen, **({"steps": steps} if steps else {})}
    sweep = sweep_from_dict(data, str(PRESET))
    if sweep.specs[0].knobs:
        raise SystemExit(f"{PRESET.name}: its first cell must be the uncached baseline {{}}")
    return sweep


def anchor_notes(rows: list[dict]) -> list[str]:
    """One line per method beside its published figure (generated from the measured rows)."""
    notes = ["Against the published figures (../shared/ANCHORS.md and the methods' READMEs):"]
    for method in ("first_block", "faster", "pyramid_attention_broadcast", "taylorseer", "mag"):
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        here = "; ".join(f"{r['label']} {r['speedup']:.2f}x with {r['hits']} of {r['calls']} calls cached, "
                         f"{r['psnr_uncached']:.1f} dB vs uncached" for r in mine)
        if method in ANCHORS:
            setup, ratio, source = ANCHORS[method]
            notes.append(f"- {here}. Published: {ratio:.2f}x ({setup}; {source}).")
        else:
            notes.append(f"- {here}. No published Flux figure for PAB in ANCHORS.md (its paper measures video "
                         "models).")
    return notes


def main() -> None:
    from _harness import (
        PassTimer,
        add_publish_args,
        check_tree,
        print_table,
        publish,
        setup_line,
        setup_of,
        time_rounds,
    )

    from studio_core.measure import emoji_metrics, quality
    from studio_core.measure.engine import Engine, image_metrics
    from studio_core.measure.environment import resolve_device
    from studio_core.measure.pipelines import PipelineCache, apply_knobs, call_kwargs, undo_knobs
    from studio_core.spec import resolve
    from studio_core.store.store import RunStore
    from studio_core.study.labels import knobs_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="emoji-flux", help="a Flux-family model: emoji-flux or a pipeline folder")
    ap.add_argument("--prompts", type=int, default=8, help="the first N prompts of the preset's prompt set")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's (28)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    a = add_publish_args(ap).parse_args()
    check_tree(a.dirty)
    device = resolve_device(a.device)

    # the configurations, the pipeline, the reference
    sweep = preset_sweep(a.model, a.prompts, a.steps)
    spec, info = resolve(sweep.specs[0])
    if info.pipeline_class != "FluxPipeline":
        raise SystemExit(f"{a.model} is a {info.pipeline_class}; this benchmark measures Flux-family models")
    engine = Engine(RunStore(tempfile.mkdtemp(prefix="transformer-caching-bench-")))
    pipe, _ = engine.pipeline(info, device, {"dtype": a.dtype})
    pairs = list(spec.images())
    _ref_row, reference = engine.reference_for(spec, info, sweep.reference, device=device)
    timer = PassTimer(pipe, pairs, device)  # steps, guidance and size come from the cell's built-in knobs
    configs = {knobs_text(s.knobs, "uncached"): s for s in sweep.specs}
    if len(configs) < len(sweep.specs):
        raise SystemExit(f"{PRESET.name}: two cells have the same label; each configuration needs its own")
    knob_cache = PipelineCache()  # apply_knobs' cache to evict from: these knobs all undo in place

    def run_config(label: str, warm: bool = False):
        """One timed pass with the cell's knobs applied just before and undone just after (outside the timing)."""
        applied = apply_knobs(pipe, configs[label], knob_cache)
        try:
            with contextlib.ExitStack() as stack:
                if warm:
                    for _knob, _settings, one in applied:
                        if one.instrument is not None:
                            stack.enter_context(one.instrument())
                out = timer(**call_kwargs(applied))
            if warm:
                reports[label] = [one.report() for _knob, _settings, one in applied if one.report is not None]
            return out
        finally:
            undo_knobs(pipe, applied, knob_cache)

    # one untimed warm-up round (counted by the knobs' instruments), then the rotated rounds
    reports: dict = {}
    images = {}
    for label in configs:
        images[label] = run_config(label, warm=True).images
        print(f"warm-up {label}", file=sys.stderr)

    def run_once(label: str) -> float:
        p = run_config(label)
        if not (p.images == images[label]).all():
            print(f"note: {label} output changed between calls", file=sys.stderr)
        return p.total_ms

    times = time_rounds(list(configs), a.rounds, run_once)

    # the table
    base = images["uncached"]
    fidelity_index = (quality.load_fidelity_index(spec.height, ROOT / ".cache")
                      if emoji_metrics.is_emoji_domain(info) else None)
    scheduler = type(pipe.scheduler).__name__
    model_line = (f"{a.model} ({info.pipeline_class}), {len(pairs)} images ({', '.join(spec.prompts)}; seed "
                  f"{', '.join(map(str, spec.seeds))}) in one call, {spec.height}x{spec.width}")
    setup = setup_of(device, a.rounds, model=a.model, model_fingerprint=info.fingerprint, steps=spec.steps,
                     scheduler=scheduler, guidance=spec.guidance, dtype=a.dtype, prompts=list(spec.prompts),
                     seeds=list(spec.seeds), preset=str(PRESET.relative_to(ROOT)))
    guidance = f"guidance {spec.guidance:g}" + (" (true CFG: two transformer calls per step)"
                                                 if not getattr(pipe.transformer.config, "guidance_embeds", True)
                                                 and spec.guidance > 1 else "")
    setup_text = setup_line(f"{model_line}, {spec.steps} steps, {scheduler}, {guidance}, {a.dtype}", setup,
                            f"{a.rounds} timed rounds, each configuration once per round in rotated order after "
                            "one untimed warm-up round.")
    print("\n" + setup_text + "\n")
    header = ["configuration", "median latency (ms)", "speed-up (median of round ratios)", "range",
              "PSNR vs uncached (dB)", "SSIM vs uncached", "PSNR vs reference (dB)", "SSIM vs reference",
              "fidelity top-1 / top-5", "cached calls", "what the knob reported"]
    rows, measured = [], []
    for label, cell in configs.items():
        img = images[label]
        ratios = [b / c for b, c in zip(times["uncached"], times[label])]
        vs_base, vs_ref = image_metrics(img, base), image_metrics(img, reference)
        fidelity = "-"
        if fidelity_index is not None:
            scores, _notes = quality.prompt_fidelity(fidelity_index, spec, img)
            if scores:
                fidelity = f"{scores['fidelity_top1']:.0%} / {scores['fidelity_top5']:.0%}"
        report = next((r for r in reports.get(label, []) if r.knob == "transformer_cache"), None)
        d = report.details if report is not None else {}
        hits = "-" if report is None else f"{d.get('cache_hits', 0)} of {d.get('denoiser_calls', 0)}"
        rows.append([label, f"{statistics.median(times[label]):.0f}", f"{statistics.median(ratios):.2f}x",
                     f"{min(ratios):.2f}..{max(ratios):.2f}",
                     "identical" if not cell.knobs else f"{vs_base['psnr']:.2f} ± {vs_base['psnr_std']:.2f}",
                     f"{vs_base['ssim']:.3f} ± {vs_base['ssim_std']:.3f}", f"{vs_ref['psnr']:.2f} ± {vs_ref['psnr_std']:.2f}",
                     f"{vs_ref['ssim']:.3f} ± {vs_ref['ssim_std']:.3f}", fidelity, hits,
                     "-" if report is None else report.summary + ("" if report.active else " **[did nothing]**")])
        if report is not None:
            measured.append({"label": label, "method": d["method"], "speedup": statistics.median(ratios),
                             "hits": d.get("cache_hits", 0), "calls": d.get("denoiser_calls", 0),
                             "psnr_uncached": vs_base["psnr"]})
    table = print_table(header, "lrrlrrrrrrl", rows)
    notes = anchor_notes(measured)
    print("\n" + "\n".join(notes))
    publish("transformer_caching", setup, times, table, setup_text=setup_text, notes=notes,
            knob_reports={label: [r.details for r in reps] for label, reps in reports.items()})


if __name__ == "__main__":
    main()
