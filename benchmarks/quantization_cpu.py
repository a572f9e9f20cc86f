"""Quantization on CPU, side by side: latency against fp32, weight memory, and quality.

The embedded emoji-sd model on the CPU. Every configuration has a pipeline of its own, loaded and (for the
quantization knob) quantized once before timing, since quantization cannot be undone in place. Every round
times each configuration once, in a rotated order, so drift in the machine's speed hits all alike (the shared
harness, ``_harness.py``: each call is one pass timed as ``Engine.run`` times a repeat; every raw latency
goes to ``benchmarks/results/quantization_cpu-<date>.json``; ``--dirty`` to measure on uncommitted code).
Reported per configuration: median latency over the rounds, the speed-up as the median of the per-round
ratios fp32 / configuration with its range, the weights of the denoiser and of the whole pipeline (torchao's
quantized tensors counted by their inner int8 / fp8 data and scales), PSNR and SSIM (mean ± std over
images) against the engine's reference (DPM++ 2M, 200 steps, fp32, no knobs) and against the fp32 output
at the same steps, and what the knob reported. Schemes that cannot run here are listed with the knob's
reason.

    .venv/bin/python benchmarks/quantization_cpu.py                 # 8 images (emoji-8), 20 steps, 3 rounds
    .venv/bin/python benchmarks/quantization_cpu.py --rounds 5 --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (label, precision, quantization settings or None)
CONFIGS = [
    ("fp32", "fp32", None),
    ("fp16", "fp16", None),
    ("bf16", "bf16", None),
    ("int8 weight-only, denoiser", "fp32", {"scheme": "int8_weight_only"}),
    ("int8 weight-only, all", "fp32", {"scheme": "int8_weight_only", "components": "all"}),
    ("int8 dynamic, denoiser", "fp32", {"scheme": "int8_dynamic"}),
    ("fp8 weight-only, denoiser", "fp32", {"scheme": "fp8_weight_only"}),
    ("fp8 dynamic, denoiser", "fp32", {"scheme": "fp8_dynamic"}),
    ("int4 weight-only, denoiser", "bf16", {"scheme": "int4_weight_only"}),
    ("bitsandbytes LLM.int8(), denoiser", "fp32", {"scheme": "bnb_8bit"}),
    ("bitsandbytes NF4, denoiser", "fp32", {"scheme": "bnb_4bit"}),
]
MIB = 2**20


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

    from studio_core.errors import SpecError
    from studio_core.knobs import KNOBS
    from studio_core.knobs._hooks import denoiser_of
    from studio_core.knobs.component_precision import torch_dtype
    from studio_core.knobs.quantization import component_modules, weight_bytes
    from studio_core.measure.engine import Engine, image_metrics
    from studio_core.models import load_pipeline
    from studio_core.spec import RunSpec, resolve
    from studio_core.store.store import RunStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompt-set", default="emoji-8")
    ap.add_argument("--store", default=None, help="run store folder (keeps the reference between runs); "
                                                  "default: a new temporary folder")
    a = add_publish_args(ap).parse_args()
    check_tree(a.dirty)
    device = "cpu"
    knob = KNOBS["quantization"]

    engine = Engine(RunStore(a.store or tempfile.mkdtemp(prefix="quantization-bench-")))
    spec, info = resolve(RunSpec(prompt_set=a.prompt_set, steps=a.steps, device=device, seeds=[0]))
    pairs = list(spec.images())
    print("generating the reference (DPM++ 2M, 200 steps) ...", file=sys.stderr)
    _ref_row, reference = engine.reference_for(spec, info, device=device)

    pipes, reports, refused = {}, {}, {}
    for label, precision, raw in CONFIGS:
        if raw is not None:  # the checks a run would make: resolve (spec) first, then the loaded pipeline
            try:
                resolve(RunSpec(prompt_set=a.prompt_set, steps=a.steps, device=device, seeds=[0],
                                precision=precision, knobs={"quantization": raw}), info)
            except SpecError as exc:
                refused[label] = exc.allowed
                continue
        pipe = load_pipeline(info.path, device=device, dtype=torch_dtype(precision))
        if raw is not None:
            settings = knob.parse(raw)
            reason = knob.supports(pipe, settings)
            if reason:
                refused[label] = reason
                continue
            reports[label] = knob.apply(pipe, settings).report()
        pipes[label] = pipe
    configs = [c for c in CONFIGS if c[0] in pipes]

    timers = {label: PassTimer(pipes[label], pairs, device, num_inference_steps=a.steps,
                               guidance_scale=spec.guidance, height=spec.height, width=spec.width)
              for label, _, _ in configs}

    # one untimed warm-up round, then the rotated rounds
    images = {}
    for label, _, _ in configs:
        p = timers[label]()
        images[label] = p.images
        print(f"warm-up {label}: {p.total_ms:.0f} ms", file=sys.stderr)

    def run_once(label: str) -> float:
        p = timers[label]()
        if not (p.images == images[label]).all():
            print(f"note: {label} output changed between calls", file=sys.stderr)
        return p.total_ms

    times = time_rounds([label for label, _, _ in configs], a.rounds, run_once)

    # the table
    base = images["fp32"]
    scheduler = type(pipes["fp32"].scheduler).__name__
    lead = (f"embedded emoji-sd, {len(pairs)} images ({a.prompt_set}, seed 0) in one call, {spec.height}x{spec.width}, "
            f"{a.steps} steps, {scheduler}, guidance {spec.guidance:g}")
    setup = setup_of(device, a.rounds, model=lead, torchao=_version("torchao"), bitsandbytes=_version("bitsandbytes"))
    how = (f"{a.rounds} timed rounds, each configuration once per round in rotated order after one untimed warm-up "
           "round. Weights in MiB (quantized tensors counted by their inner data and scales).")
    setup_text = setup_line(lead, setup, how, libraries=("torchao", "bitsandbytes"))
    print("\n" + setup_text + "\n")
    header = ["configuration", "median latency (ms)", "speed-up vs fp32 (median of round ratios)", "range",
              "denoiser weights (MiB)", "pipeline weights (MiB)", "PSNR vs reference (dB)", "SSIM vs reference",
              "PSNR vs fp32 (dB)", "SSIM vs fp32", "what the knob reported"]
    rows = []
    for label, _, _ in configs:
        pipe = pipes[label]
        img = images[label]
        ratios = [b / c for b, c in zip(times["fp32"], times[label])]
        m_ref, m_base = image_metrics(img, reference), image_metrics(img, base)
        den = weight_bytes(denoiser_of(pipe))
        total = sum(weight_bytes(m) for m in component_modules(pipe, "all").values())
        rep = reports.get(label)
        cells = [label, f"{statistics.median(times[label]):.0f}", f"{statistics.median(ratios):.2f}x",
                 f"{min(ratios):.2f}..{max(ratios):.2f}", f"{den / MIB:.2f}", f"{total / MIB:.2f}",
                 f"{m_ref['psnr']:.2f} ± {m_ref['psnr_std']:.2f}", f"{m_ref['ssim']:.3f} ± {m_ref['ssim_std']:.3f}",
                 "identical" if label == "fp32" else f"{m_base['psnr']:.2f} ± {m_base['psnr_std']:.2f}",
                 f"{m_base['ssim']:.3f}",
                 "-" if rep is None else rep.summary + ("" if rep.active else " **[did nothing]**")]
        rows.append(cells)
    table = print_table(header, "lrrlrrrrrrl", rows)
    notes = [f"Not run on this machine: {label} ({reason})." for label, reason in refused.items()]
    print("\n" + "\n".join(notes))
    publish("quantization_cpu", setup, times, table, setup_text=setup_text, notes=notes, refused=refused)


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
