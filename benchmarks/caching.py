"""Feature caching and token merging, side by side: speed-up over uncached and quality against the reference.

One loaded pipeline, one process. Every round times each configuration once, in a rotated order, and
each knob is applied just before its call and undone just after, so drift in the machine's speed hits
every configuration alike. Timed by the shared harness (``_harness.py``): each call is one pass timed as
``Engine.run`` times a repeat, and every raw latency goes to ``benchmarks/results/caching-<date>.json``
(``caching_sd15-<date>.json`` with ``--sd15``; ``--dirty`` to measure on uncommitted code).
Reported per configuration: median latency over the rounds, the speed-up as
the median of the per-round ratios uncached / cached (robust to a noisy machine) with its range, PSNR and
SSIM (mean ± std over images) against the engine's reference (DPM++ 2M, 200 steps, fp32, no knobs) and
against the uncached output at the same steps, and what the knob reported (so a knob that did nothing
shows it).

    .venv/bin/python benchmarks/caching.py                 # embedded emoji-sd on this machine (CPU here)
    .venv/bin/python benchmarks/caching.py --sd15 --device cuda --dtype fp16   # SD 1.5-architecture UNet,
        # built from its published config with random weights (nothing downloaded), 512x512

With ``--sd15`` there is no trained model, so quality columns compare against the uncached output only.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = [
    ("uncached", None, None),
    ("DeepCache N=2", "deepcache", {"interval": 2}),
    ("DeepCache N=3", "deepcache", {"interval": 3}),
    ("DeepCache N=5", "deepcache", {"interval": 5}),
    ("DeepCache N=3 non-uniform", "deepcache", {"interval": 3, "schedule": "non-uniform"}),
    ("cross-attn cache, gate 10", "cross_attention_cache", {"gate_step": 10}),
    ("cross-attn cache, gate 10, keep CFG", "cross_attention_cache", {"gate_step": 10, "drop_cfg": False}),
    ("ToMe 30%", "token_merging", {"ratio": 0.3}),
    ("ToMe 50%", "token_merging", {"ratio": 0.5}),
]

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
    from architectures import sd15_pipeline

    from studio_core.knobs import KNOBS
    from studio_core.knobs.component_precision import torch_dtype
    from studio_core.measure.engine import Engine, image_metrics
    from studio_core.measure.environment import resolve_device
    from studio_core.measure.pipelines import call_kwargs
    from studio_core.spec import RunSpec, resolve
    from studio_core.store.store import RunStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--prompt-set", default="emoji-8")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sd15", action="store_true", help="SD 1.5-architecture UNet, random weights")
    ap.add_argument("--size", type=int, default=512, help="--sd15 image size")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    a = add_publish_args(ap).parse_args()
    check_tree(a.dirty)
    device = resolve_device(a.device)
    dtype = torch_dtype(a.dtype)

    # the pipeline, its images and the reference
    engine = Engine(RunStore(tempfile.mkdtemp(prefix="caching-bench-")))
    reference = None
    if a.sd15:
        pipe = sd15_pipeline(device, dtype)
        pairs, guidance, size = [("grinning face", 0)], 7.5, a.size
        model_line = f"SD 1.5-architecture UNet (published config, random weights), {size}x{size}, batch 1"
    else:
        spec, info = resolve(RunSpec(prompt_set=a.prompt_set, steps=a.steps, device=device, seeds=[0]))
        pipe, _ = engine.pipeline(info, device, {"dtype": a.dtype})
        pairs = list(spec.images())
        guidance, size = spec.guidance, spec.height
        _ref_row, reference = engine.reference_for(spec, info, device=device)
        model_line = f"embedded emoji-sd, {len(pairs)} images ({a.prompt_set}, seed 0) in one call, {size}x{size}"
    timer = PassTimer(pipe, pairs, device, num_inference_steps=a.steps, guidance_scale=guidance, height=size,
                      width=size)

    def with_knob(name, raw, warm=False):
        """One timed pass with the knob applied just before and undone just after (outside the timing)."""
        if name is None:
            return timer()
        knob = KNOBS[name]
        settings = knob.parse(raw)
        reason = knob.supports(pipe, settings)
        if reason:
            raise SystemExit(f"{name}: {reason}")
        applied = knob.apply(pipe, settings)
        try:
            kwargs = call_kwargs([(knob, settings, applied)])
            if not warm:
                return timer(**kwargs)
            with applied.instrument() if applied.instrument is not None else contextlib.nullcontext():
                out = timer(**kwargs)
            reports[name, str(raw)] = applied.report()
            return out
        finally:
            applied.undo()

    # one untimed warm-up round (counted by the knobs' instruments), then the rotated rounds
    reports: dict = {}
    images = {}
    for label, name, raw in CONFIGS:
        images[label] = with_knob(name, raw, warm=True).images
        print(f"warm-up {label}", file=sys.stderr)
    by_label = {label: (name, raw) for label, name, raw in CONFIGS}

    def run_once(label: str) -> float:
        p = with_knob(*by_label[label])
        if not (p.images == images[label]).all():
            print(f"note: {label} output changed between calls", file=sys.stderr)
        return p.total_ms

    times = time_rounds(list(by_label), a.rounds, run_once)

    # the table
    base = images["uncached"]
    scheduler = type(pipe.scheduler).__name__
    setup = setup_of(device, a.rounds, model=model_line, steps=a.steps, scheduler=scheduler, guidance=guidance,
                     dtype=a.dtype)
    setup_text = setup_line(f"{model_line}, {a.steps} steps, {scheduler}, guidance {guidance:g}, {a.dtype}", setup,
                            f"{a.rounds} timed rounds, each configuration once per round in rotated order after "
                            "one untimed warm-up round.")
    print("\n" + setup_text + "\n")
    ref_cols = ["PSNR vs reference (dB)", "SSIM vs reference"] if reference is not None else []
    header = ["configuration", "median latency (ms)", "speed-up (median of round ratios)", "range", *ref_cols,
              "PSNR vs uncached (dB)", "SSIM vs uncached", "what the knob reported"]
    rows = []
    for label, name, raw in CONFIGS:
        img = images[label]
        ratios = [b / c for b, c in zip(times["uncached"], times[label])]
        vs_base = image_metrics(img, base)
        cells = [label, f"{statistics.median(times[label]):.0f}", f"{statistics.median(ratios):.2f}x",
                 f"{min(ratios):.2f}..{max(ratios):.2f}"]
        if reference is not None:
            m = image_metrics(img, reference)
            cells += [f"{m['psnr']:.2f} ± {m['psnr_std']:.2f}", f"{m['ssim']:.3f} ± {m['ssim_std']:.3f}"]
        cells += ["identical" if name is None else f"{vs_base['psnr']:.2f} ± {vs_base['psnr_std']:.2f}",
                  f"{vs_base['ssim']:.3f}"]
        rep = reports.get((name, str(raw)))
        cells.append("-" if rep is None else (rep.summary + ("" if rep.active else " **[did nothing]**")))
        rows.append(cells)
    table = print_table(header, "lrrl" + "rr" * bool(ref_cols) + "rrl", rows)
    publish("caching_sd15" if a.sd15 else "caching", setup, times, table, setup_text=setup_text)


if __name__ == "__main__":
    main()
