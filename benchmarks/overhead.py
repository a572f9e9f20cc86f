"""Engine overhead: the same configuration through ``Engine.run`` and through a bare diffusers call.

Both sides use the same loaded pipeline, prompts, seeds (one ``torch.Generator`` per image), steps and
guidance, and ``output_type="np"``. They alternate round by round (engine run, then bare calls), so
drift in the machine's speed hits both. The engine's latency is its own reported median; the bare
side is timed with ``perf_counter`` around ``pipe(...)`` (plus ``torch.cuda.synchronize`` on GPU).
Target: engine median at most 3% above the bare median.

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

    from studio_core.engine import Engine, environment
    from studio_core.spec import RunSpec, resolve
    from studio_core.store import RunStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
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

    engine.run(spec)  # makes the reference once, outside the comparison
    bare()
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
    e, b = statistics.median(eng_medians), statistics.median(bare_medians)
    ratios = [x / y for x, y in zip(eng_medians, bare_medians)]
    print(f"\nSetup: embedded emoji-sd, {len(prompts)} images ({a.prompt_set}, seed 0) x {resolved.steps} steps, "
          f"{type(pipe.scheduler).__name__}, guidance {resolved.guidance:g}, {resolved.height}x{resolved.width}, fp32; "
          f"{env['device_name']}, {env['threads']} threads, torch {env['torch_version']}, diffusers "
          f"{env['diffusers_version']}; {a.rounds} alternating rounds x {a.repeats} timed calls each side")
    print()
    print("| path | median of round medians (ms) | min..max of round medians (ms) |")
    print("|---|---:|---:|")
    print(f"| bare `pipe(...)` | {b:.1f} | {min(bare_medians):.1f}..{max(bare_medians):.1f} |")
    print(f"| `Engine.run` (reported latency) | {e:.1f} | {min(eng_medians):.1f}..{max(eng_medians):.1f} |")
    print()
    print(f"engine / bare: median ratio {statistics.median(ratios):.4f} (per round {', '.join(f'{x:.3f}' for x in ratios)}); "
          f"overhead {100 * (statistics.median(ratios) - 1):+.2f}% (target <= +3%)")
    print(f"bookkeeping outside the timed region (reference lookup, scoring, store): median "
          f"{statistics.median(bookkeeping):.0f} ms per run")


if __name__ == "__main__":
    main()
