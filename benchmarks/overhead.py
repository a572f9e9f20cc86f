"""Engine overhead: the same configuration through ``Engine.run`` and through a bare diffusers call.

Both sides use the same loaded pipeline, prompts, seeds (one ``torch.Generator`` per image), steps and
guidance, and ``output_type="np"``. They alternate round by round (engine run, then bare calls), so
drift in the machine's speed hits both. The engine's latency is its own reported median; the bare
side is timed with ``perf_counter`` around ``pipe(...)`` (plus ``torch.cuda.synchronize`` on GPU).
Two comparisons: (a) single calls, engine's timed pass and bare call alternating, median of the paired
ratios (robust to a noisy machine); (b) whole ``Engine.run`` calls against bare medians, round by round.
Target: engine at most 3% above bare.

Also printed: the engine's bookkeeping per run (reference lookup, scoring, store writes), which happens
outside the timed region and is not part of the latency it reports.

    .venv/bin/python benchmarks/overhead.py [--rounds 5] [--repeats 5] [--steps 20] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from studio_core.measure.engine import Engine, environment
    from studio_core.spec import RunSpec, resolve
    from studio_core.store.store import RunStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompt-set", default="emoji-4")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    engine = Engine(RunStore(tempfile.mkdtemp(prefix="overhead-")))
    spec = RunSpec(prompt_set=a.prompt_set, steps=a.steps, repeats=a.repeats, device=a.device)
    resolved, info = resolve(spec)
    device = "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    pipe, _ = engine.pipeline(info, device, {"dtype": "fp32"})
    prompts = [p for p, _ in resolved.images()]
    seeds = [s for _, s in resolved.images()]

    def bare() -> float:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pipe(prompts, num_inference_steps=resolved.steps, guidance_scale=resolved.guidance, generator=gens,
             output_type="np", height=resolved.height, width=resolved.width)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000

    from studio_core.measure.engine import _Clock

    # (a) paired calls: the engine's timed pass (probes on: text-encode / denoise / decode marks, NFE
    # count) against a bare call, alternating A B A B so both see the same machine state
    clock = _Clock(device)
    engine_pass = lambda: engine._timed_pass(pipe, resolved, call_kwargs, clock)[1]  # noqa: E731
    call_kwargs = {"num_inference_steps": resolved.steps, "guidance_scale": resolved.guidance,
                   "height": resolved.height, "width": resolved.width}
    engine_pass(), bare()
    pairs = []
    for i in range(a.pairs):
        e_ms, b_ms = (engine_pass(), bare()) if i % 2 == 0 else tuple(reversed((bare(), engine_pass())))
        pairs.append((e_ms, b_ms))
    ratios = [e_ / b_ for e_, b_ in pairs]

    # (b) whole runs: Engine.run's reported median against bare medians, round by round
    engine.run(spec)  # makes the reference once, outside the comparison
    eng_medians, bare_medians, bookkeeping = [], [], []
    for r in range(a.rounds):
        t0 = time.perf_counter()
        res = engine.run(spec)
        wall = (time.perf_counter() - t0) * 1000
        assert res.status == "ok", res.error
        row = res.row
        eng_medians.append(row["latency_median_ms"])
        bookkeeping.append(wall - row["cold_ms"] - sum(row["latencies_ms"]))
        bare()  # the bare side gets the same one warm-up call per round
        bare_medians.append(statistics.median(bare() for _ in range(a.repeats)))
        print(f"round {r + 1}: engine {eng_medians[-1]:.1f} ms, bare {bare_medians[-1]:.1f} ms", file=sys.stderr)

    env = environment(device)
    med = statistics.median
    q = statistics.quantiles(ratios, n=4)
    print(f"\nSetup: embedded emoji-sd, {len(prompts)} images ({a.prompt_set}, seed 0) x {resolved.steps} steps, "
          f"{type(pipe.scheduler).__name__}, guidance {resolved.guidance:g}, {resolved.height}x{resolved.width}, fp32; "
          f"{env['device_name']}, {env['threads']} threads, torch {env['torch_version']}, diffusers "
          f"{env['diffusers_version']}, git {env['git_commit']}")
    print()
    print("| comparison | engine median (ms) | bare median (ms) | engine / bare | spread |")
    print("|---|---:|---:|---:|---|")
    print(f"| (a) {a.pairs} alternating single calls | {med(p[0] for p in pairs):.1f} | {med(p[1] for p in pairs):.1f} | "
          f"{med(ratios):.4f} (median of paired ratios) | IQR of ratios {q[0]:.3f}..{q[2]:.3f} |")
    print(f"| (b) {a.rounds} rounds of Engine.run ({a.repeats} repeats) vs {a.repeats} bare calls | {med(eng_medians):.1f} | "
          f"{med(bare_medians):.1f} | {med(x / y for x, y in zip(eng_medians, bare_medians)):.4f} (median of round ratios) | "
          f"rounds {', '.join(f'{x / y:.3f}' for x, y in zip(eng_medians, bare_medians))} |")
    print()
    print(f"engine overhead on the timed path (a): {100 * (med(ratios) - 1):+.2f}% (target <= +3%)")
    print(f"bookkeeping outside the timed region (reference lookup, scoring, store writes): median "
          f"{med(bookkeeping):.0f} ms per run, not part of the reported latency")


if __name__ == "__main__":
    main()
