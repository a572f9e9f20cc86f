"""Strict versus noise-aware frontier: how many runs of one study are front, tied or dominated under each rule.

The strict rule (``pareto_front``, the frontier before issue 18) compares medians: a run 0.4 ms slower and
0.01 dB worse than another is off the front even when its repeats scatter by 15 ms. The noise-aware rule
(``classify``) calls a run dominated only when another run of its setup costs less beyond the latency IQR and is
no worse; the rest of the runs off the strict front are *tied*. The front itself is the same under both rules,
so the only runs that move are dominated -> tied; the table counts them per quality metric and lists each one
with the run it ties with and both latency intervals.

By default it builds a small study in a temporary folder first: a sweep of the embedded model (steps 4/6/8/12 x
samplers DDIM, Euler, DPM++ 2M; one prompt, seed 0; warmup 1, repeats 3; reference DPM++ 2M at 30 steps) through
the command line, as a user would (a few minutes on 2 busy cores). ``--study DIR`` reads an existing study instead
(read-only). The output is a table to read, not a result file: nothing is saved.

Run: ``python benchmarks/frontier_noise.py [--study DIR] [--metric psnr --metric ssim] [--cost latency_median_ms]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio_core.store.store import RunStore  # noqa: E402
from studio_core.study.frontier import (  # noqa: E402
    COSTS,
    QUALITIES,
    STATUSES,
    classify,
    pareto_front,
    setup_label,
    setups,
)
from studio_core.study.labels import COLUMN_LABELS, configuration, ms  # noqa: E402

SWEEP = """name: frontier-noise
question: How many runs does the latency noise move off or onto the frontier?
base: {model: emoji-sd, prompts: [grinning face], seeds: [0], warmup: 1, repeats: 3}
grid:
  steps: [4, 6, 8, 12]
  sampler: [DDIM, Euler, DPM++ 2M]
reference: {sampler: DPM++ 2M, steps: 30}
"""


def build_study(folder: Path) -> None:
    """Run the default sweep into ``folder`` through the command line (``studio_core sweep``)."""
    from studio_core.cli import main as cli

    preset = folder / "frontier-noise.yaml"
    preset.write_text(SWEEP)
    if cli(["--data-dir", str(folder / "study"), "sweep", str(preset)]) != 0:
        raise SystemExit("the sweep failed: see its output above")


def compare_rules(runs, cost: str, metric: str) -> tuple[dict, dict, list[str]]:
    """Counts per status under the strict and the noise-aware rule, and a line per run that moved."""
    strict = {s: 0 for s in STATUSES}
    noise = {s: 0 for s in STATUSES}
    moved: list[str] = []
    keys = [key for key, _ in setups(runs)]
    for key, group in setups(runs):
        front = set(pareto_front(group, cost, metric)["id"])
        judged = classify(group, cost, metric)
        by_id = judged.set_index("id")
        for r in judged.to_dict("records"):
            before = "front" if r["id"] in front else "dominated"
            strict[before] += 1
            noise[r["front_status"]] += 1
            if before != r["front_status"]:
                other = by_id.loc[r["tied_with"]]
                where = f" [{setup_label(key, keys)}]" if len(keys) > 1 else ""
                moved.append(f"  run {int(r['id'])} ({configuration(r)}, {int(r['steps'])} steps){where}: "
                             f"{before} -> {r['front_status']} with run {int(r['tied_with'])}; latency IQR "
                             f"{ms(r['cost_low'])}-{ms(r['cost_high'])} vs {ms(other['cost_low'])}-"
                             f"{ms(other['cost_high'])} ms, {COLUMN_LABELS.get(metric, metric)} "
                             f"{r[metric]:.3f} vs {other[metric]:.3f}")
    return strict, noise, moved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", type=Path, help="an existing study folder (default: build one in a temp folder)")
    p.add_argument("--metric", action="append", choices=list(QUALITIES), help="quality metric (repeatable)")
    p.add_argument("--cost", default="latency_median_ms", choices=list(COSTS))
    a = p.parse_args(argv)
    metrics = a.metric or ["psnr", "ssim"]

    # 1. the study: given, or a fresh sweep of the embedded model
    with tempfile.TemporaryDirectory(prefix="frontier-noise-") as tmp:
        study = a.study
        if study is None:
            build_study(Path(tmp))
            study = Path(tmp) / "study"
        store = RunStore(study, read_only=True)
        runs = store.runs_frame(matching={"status": "ok"})
        store.close()

    # 2. both rules on the same runs, one table per metric
    print(f"\nstudy {a.study or 'built by this script (removed)'}: {len(runs)} successful runs, "
          f"{len(setups(runs))} setup(s); cost {COSTS[a.cost]}")
    for metric in metrics:
        have = runs[runs[metric].notna() & runs[a.cost].notna()] if metric in runs and a.cost in runs else runs[:0]
        strict, noise, moved = compare_rules(have, a.cost, metric)
        print(f"\n{COLUMN_LABELS.get(metric, metric)} ({'higher' if QUALITIES[metric] else 'lower'} is better), "
              f"{len(have)} runs with a value")
        print(f"  {'status':<10} {'strict rule':>12} {'noise-aware':>12}")
        for s in STATUSES:
            print(f"  {s:<10} {strict[s] if s != 'tied' else '-':>12} {noise[s]:>12}")
        print(f"  moved: {len(moved)} run(s) dominated -> tied" + (":" if moved else ""))
        print("\n".join(moved))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
