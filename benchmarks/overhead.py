"""Engine overhead: the same configuration through ``Engine.run`` and through a bare diffusers call.

Both sides use the same loaded pipeline, prompts, seeds (one ``torch.Generator`` per image), steps and
guidance, and ``output_type="np"``. They alternate in rotated rounds (the shared harness,
``_harness.py``), so drift in the machine's speed hits both. The engine's side is its own timed pass
(probes on: text-encode / denoise / decode marks, NFE count) or its reported median; the bare side is
``pipe(...)`` timed by the same clock (``measure.timing.time_call``: CUDA events after a synchronise on
GPU, ``perf_counter`` on CPU) without probes. Two comparisons: (a) single calls, engine's timed pass and
bare call alternating, median of the paired ratios (robust to a noisy machine); (b) whole
``Engine.run`` calls against bare medians, round by round. Target: engine at most 3% above bare.

Also printed: the engine's bookkeeping per run (reference lookup, scoring, store writes), which happens
outside the timed region and is not part of the latency it reports. Every raw latency goes to
``benchmarks/results/overhead-<date>.json`` (``--dirty`` to measure on uncommitted code).

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

    from studio_core.measure.engine import Engine
    from studio_core.measure.environment import resolve_device
    from studio_core.measure.timing import Clock, time_call
    from studio_core.spec import RunSpec, resolve
    from studio_core.store.store import RunStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompt-set", default="emoji-4")
    ap.add_argument("--device", default="auto")
    a = add_publish_args(ap).parse_args()
    check_tree(a.dirty)

    engine = Engine(RunStore(tempfile.mkdtemp(prefix="overhead-")))
    spec = RunSpec(prompt_set=a.prompt_set, steps=a.steps, repeats=a.repeats, device=a.device)
    resolved, info = resolve(spec)
    device = resolve_device(a.device)
    pipe, _ = engine.pipeline(info, device, {"dtype": "fp32"})
    prompts = [p for p, _ in resolved.images()]
    seeds = [s for _, s in resolved.images()]
    call_kwargs = {"num_inference_steps": resolved.steps, "guidance_scale": resolved.guidance,
                   "height": resolved.height, "width": resolved.width}
    clock = Clock(device)

    def bare() -> float:
        """One bare diffusers call, timed by the engine's clock without its probes."""
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return time_call(lambda: pipe(prompts, generator=gens, output_type="np", **call_kwargs), clock)[1]

    # (a) paired calls: the engine's timed pass against a bare call, in rotated order (A B, B A, ...) so
    # both see the same machine state
    engine_pass = PassTimer(pipe, resolved.images(), device, batch=resolved.batch_size, **call_kwargs)
    engine_pass(), bare()
    single = time_rounds(["engine pass", "bare call"], a.pairs,
                         lambda side: engine_pass().total_ms if side == "engine pass" else bare())
    pairs = list(zip(single["engine pass"], single["bare call"]))
    ratios = [e_ / b_ for e_, b_ in pairs]

    # (b) whole runs: Engine.run's reported median against bare medians, in rotated rounds
    engine.run(spec)  # makes the reference once, outside the comparison
    bookkeeping = []

    def whole(side: str) -> float:
        if side == "bare":
            bare()  # the bare side gets the same one warm-up call per round
            return statistics.median(bare() for _ in range(a.repeats))
        t0 = time.perf_counter()
        res = engine.run(spec)
        wall = (time.perf_counter() - t0) * 1000
        assert res.status == "ok", res.error
        bookkeeping.append(wall - res.row["cold_ms"] - sum(res.row["latencies_ms"]))
        return res.row["latency_median_ms"]

    medians = time_rounds(["Engine.run", "bare"], a.rounds, whole)
    eng_medians, bare_medians = medians["Engine.run"], medians["bare"]

    # the table
    med = statistics.median
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    setup = setup_of(device, a.rounds, pairs=a.pairs, repeats=a.repeats, steps=resolved.steps)
    setup_text = setup_line(
        f"embedded emoji-sd, {len(prompts)} images ({a.prompt_set}, seed 0) x {resolved.steps} steps, "
        f"{type(pipe.scheduler).__name__}, guidance {resolved.guidance:g}, {resolved.height}x{resolved.width}, fp32",
        setup, f"(a) {a.pairs} rotated pairs, (b) {a.rounds} rotated rounds")
    print("\n" + setup_text + "\n")
    round_ratios = [x / y for x, y in zip(eng_medians, bare_medians)]
    table = print_table(["comparison", "engine median (ms)", "bare median (ms)", "engine / bare", "spread"], "lrrrl", [
        [f"(a) {a.pairs} alternating single calls", f"{med(p[0] for p in pairs):.1f}",
         f"{med(p[1] for p in pairs):.1f}",
         f"{med(ratios):.4f} (median of paired ratios)", f"IQR of ratios {q[0]:.3f}..{q[2]:.3f}"],
        [f"(b) {a.rounds} rounds of Engine.run ({a.repeats} repeats) vs {a.repeats} bare calls",
         f"{med(eng_medians):.1f}", f"{med(bare_medians):.1f}", f"{med(round_ratios):.4f} (median of round ratios)",
         f"rounds {', '.join(f'{r:.3f}' for r in round_ratios)}"],
    ])
    notes = [f"Engine overhead on the timed path (a): {100 * (med(ratios) - 1):+.2f}% (target <= +3%).",
             f"Bookkeeping outside the timed region (reference lookup, scoring, store writes): median "
             f"{med(bookkeeping):.0f} ms per run, not part of the reported latency."]
    print("\n" + "\n".join(notes))
    publish("overhead", setup, {"(a) engine pass": single["engine pass"], "(a) bare call": single["bare call"],
                                "(b) Engine.run median": eng_medians, "(b) bare median": bare_medians,
                                "bookkeeping": bookkeeping}, table, setup_text=setup_text, notes=notes)


if __name__ == "__main__":
    main()
