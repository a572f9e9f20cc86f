"""The sampler shootout on distribution metrics: does a sampler's standing change between PSNR and FD-emoji?

PSNR and SSIM ask how close a run's images come to the same-seed reference (DPM++ 2M at 200 steps); a
stochastic sampler leaves that path by design, so it ranks low there whatever its images look like. The
distribution metrics ask instead whether the images it draws look like the training set: FD-emoji, KID,
precision / recall and the classifier's top-5 on a distribution set of N images (N training captions,
seed = i), all on the studio's own emoji feature network (``measure.emoji_metrics``).

On a fresh temporary study, one ``Engine.run`` per cell: every sampler of ``presets/sampler-shootout.yaml``
at each of its step counts (emoji-8, seed 0, 1 warm-up call, 3 timed repeats, then the distribution set,
timed apart as ``dist_gen_ms``), and the model's own default (DDIM at 50 steps) as the baseline row. The
table ranks the grid rows by PSNR and by FD-emoji side by side; a failed run is a row with its reason. Every
row's figures go to ``benchmarks/results/sampler_distribution-<date>.json`` (``--dirty`` on uncommitted code).

    .venv/bin/python benchmarks/sampler_distribution.py                      # 12 samplers x 10/20 steps, N=100
    .venv/bin/python benchmarks/sampler_distribution.py --quick --dirty      # development: 2 samplers, N=50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESET = ROOT / "presets" / "sampler-shootout.yaml"
QUICK_SAMPLERS = ("DDIM", "Euler a")  # one deterministic, one stochastic
BASE = {"model": "emoji-sd", "prompt_set": "emoji-8", "seeds": [0], "warmup": 1, "repeats": 3}
# a row's figures kept in the results file (with its wall time, ``cell_s``)
RAW_KEYS = ("status", "error", "sampler", "steps", "scheduler_class", "nfe", "cold_ms", "latencies_ms",
            "latency_median_ms", "latency_iqr_ms", "psnr", "psnr_std", "psnr_min", "psnr_max", "identical_images",
            "ssim", "ssim_std", "perceptual_emoji", "perceptual_emoji_std", "classifier_top1", "classifier_top5",
            "fd_emoji", "kid_emoji", "kid_emoji_std", "precision_emoji", "recall_emoji", "dist_classifier_top1",
            "dist_classifier_top5", "dist_classifier_n", "dist_n", "dist_gen_ms", "dist_score_ms", "dist_method",
            "metrics_note", "timing_note")


def is_stochastic(row: dict) -> bool:
    """Whether the row's sampler injects fresh noise each step (``SamplerDef.stochastic``: ancestral, SDE, DDPM);
    the model's default is looked up by its scheduler class."""
    from studio_core.knobs.sampler import SAMPLERS

    name = row.get("sampler")
    if name in SAMPLERS:
        return SAMPLERS[name].stochastic
    plain = [d for d in SAMPLERS.values() if d.cls == row.get("scheduler_class") and not d.overrides]
    return bool(plain and plain[0].stochastic)


def ranks(rows: list[dict], key: str, *, higher_is_better: bool) -> dict[int, int]:
    """Competition ranks (1 = best, ties share the better rank) of the rows that have ``key``, by index."""
    values = {i: r[key] for i, r in enumerate(rows) if r.get("status") == "ok" and r.get(key) is not None}
    sign = -1 if higher_is_better else 1
    return {i: 1 + sum(sign * w < sign * v for w in values.values()) for i, v in values.items()}


def _f(value, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, fmt)


def table_row(label: str, steps, row: dict, psnr_rank: int | None, fd_rank: int | None) -> list[str]:
    """One table row: the figures of an ok run, or its reason in the latency cell of a failed one."""
    cells = [label, str(steps), "yes" if is_stochastic(row) else "no"]
    if row.get("status") != "ok":
        reason = " ".join(str(row.get("error") or row.get("status")).split()).replace("|", "/")
        return cells + [f"**{row.get('status', 'failed')}**: {reason}"] + ["-"] * 10
    iqr = row.get("latency_iqr_ms")
    return cells + [
        f"{row['latency_median_ms']:.0f} ({_f(iqr, '.0f')})",
        _f(row.get("psnr"), ".2f"), _f(row.get("ssim"), ".3f"), _f(row.get("fd_emoji"), ".2f"),
        f"{_f(row.get('kid_emoji'), '.2f', 1e3)} ± {_f(row.get('kid_emoji_std'), '.2f', 1e3)}",
        _f(row.get("precision_emoji"), ".2f"), _f(row.get("recall_emoji"), ".2f"),
        _f(row.get("dist_classifier_top5"), ".1%"),
        f"{_f(row.get('perceptual_emoji'), '.3f')} ± {_f(row.get('perceptual_emoji_std'), '.3f')}",
        "-" if psnr_rank is None else str(psnr_rank), "-" if fd_rank is None else str(fd_rank),
    ]


def main() -> None:
    import torch
    from _harness import add_publish_args, check_tree, print_table, publish, setup_line, setup_of

    from studio_core.errors import SpecError
    from studio_core.measure.engine import Engine
    from studio_core.measure.environment import resolve_device
    from studio_core.store.store import RunStore
    from studio_core.study.labels import sampler_text
    from studio_core.study.sweep import load_preset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distribution", type=int, default=None, help="images per distribution set (default 100; "
                    "50 with --quick)")
    ap.add_argument("--quick", action="store_true", help=f"development: {' and '.join(QUICK_SAMPLERS)} only, N=50")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    a = add_publish_args(ap).parse_args()
    check_tree(a.dirty)
    torch.set_num_threads(a.threads)
    n = a.distribution or (50 if a.quick else 100)

    # 1. the grid and the reference, from the preset (every cell resolved and checked before any work)
    sweep = load_preset(PRESET)
    axes = dict(sweep.axes)
    samplers = [s for s in axes["sampler"] if not a.quick or s in QUICK_SAMPLERS]
    cells = [(s, steps) for steps in axes["steps"] for s in samplers]
    reference = sweep.reference
    device = resolve_device("auto")

    # 2. one Engine.run per cell on a fresh study: the baseline (the model's defaults) first, then the grid
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sampler-distribution-") as study:
        engine = Engine(RunStore(study))
        for sampler, steps in [(None, None), *cells]:
            spec = {**BASE, "distribution": n, **({"sampler": sampler, "steps": steps} if sampler else {})}
            t0 = time.perf_counter()
            try:
                result = engine.run(spec, reference=reference)
                row = dict(result.row)
            except SpecError as exc:  # refused before any work: still a row, with the reason
                row = {"status": "failed", "error": f"refused: {exc}", "sampler": sampler, "steps": steps}
            row["cell_s"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(f"{sampler or 'model default'}, {row.get('steps') or steps} steps: {row['status']} in "
                  f"{row['cell_s']:.0f} s", file=sys.stderr, flush=True)

    # 3. the table: ranks among the grid rows only (the baseline is the yardstick, not a contender)
    base, grid = rows[0], rows[1:]
    psnr_rank = ranks(grid, "psnr", higher_is_better=True)
    fd_rank = ranks(grid, "fd_emoji", higher_is_better=False)
    lines = [table_row(f"{sampler_text(base)}, baseline", base.get("steps") or "default", base, None, None)]
    lines += [table_row(s, steps, r, psnr_rank.get(i), fd_rank.get(i)) for i, ((s, steps), r) in
              enumerate(zip(cells, grid))]
    setup = setup_of(device, BASE["repeats"], model="emoji-sd", prompt_set=BASE["prompt_set"], seeds=BASE["seeds"],
                     warmup=BASE["warmup"], repeats=BASE["repeats"], distribution=n, samplers=samplers,
                     steps=list(axes["steps"]), reference=reference, quick=a.quick)
    setup_text = setup_line(
        f"emoji-sd 32x32, emoji-8 (8 images, seed 0) in one call, guidance 5; {len(samplers)} samplers x steps "
        f"{'/'.join(map(str, axes['steps']))} from presets/sampler-shootout.yaml and the model's default; "
        f"reference {reference['sampler']} at {reference['steps']} steps; distribution set of {n} training "
        "captions per row (seed = i)", setup,
        f"each row one Engine.run on a fresh study: 1 warm-up call, {BASE['repeats']} timed repeats, then the "
        "distribution set (generated and scored outside the timed repeats); rows one after another, not rotated.")
    print(f"# samplers on the distribution metrics\n{setup_text}\n")
    header = ["sampler", "steps", "stochastic", "median latency (ms) (IQR)", "PSNR vs ref (dB, pooled)", "SSIM vs ref",
              "FD-emoji", "KID-emoji ×10³ ± std", "precision", "recall", "top-5 (dist. set)",
              "perceptual distance ± std", "PSNR rank", "FD rank"]
    table = print_table(header, "lrlrrrrrrrrrrr", lines)

    # 4. notes under the table, then the results file
    ok = [r for r in rows if r.get("status") == "ok" and r.get("dist_method")]
    stochastic = [i for i, r in enumerate(grid) if is_stochastic(r) and i in psnr_rank and i in fd_rank]
    notes = [
        "FD-emoji, KID-emoji and precision/recall are on the studio's own emoji feature network, not Inception: "
        "they are not FID or KID, and compare rows of this table only. Method: "
        f"{ok[0]['dist_method'] if ok else 'none (no run scored a distribution set)'}.",
        f"n = {n} generated images per row (training captions spread evenly over the split, seed = i, the run's "
        "settings); FD falls as n grows, so compare rows only at the same n. PSNR is pooled over the 8 images "
        "against the same-seed reference, SSIM their mean; the perceptual distance (to the same-seed reference, "
        "on the feature network) is mean ± std over the 8 images; top-5 is the classifier's over the distribution "
        "set.",
        "Stochastic = the sampler injects fresh noise at every step (ancestral, SDE and DDPM samplers; "
        "`SamplerDef.stochastic`): with the same seed it leaves the reference's path by design, so its PSNR "
        "says \"different image\", not \"worse image\"; the distribution metrics do not reward staying on that "
        "path.",
        f"Ranks: 1 = best of the {len(psnr_rank)} ranked rows (the baseline is not ranked; a failed row has "
        "none): highest PSNR, lowest FD-emoji."
        + (f" Stochastic rows: PSNR ranks {sorted(psnr_rank[i] for i in stochastic)} (median "
           f"{statistics.median(psnr_rank[i] for i in stochastic):g}), FD ranks "
           f"{sorted(fd_rank[i] for i in stochastic)} (median {statistics.median(fd_rank[i] for i in stochastic):g})."
           if stochastic else ""),
    ]
    print("\n" + "\n".join(notes))
    raw = {f"{line[0]}, {line[1]} steps": {k: r.get(k) for k in (*RAW_KEYS, "cell_s")}
           for line, r in zip(lines, rows)}
    publish("sampler_distribution", setup, raw, table, setup_text=setup_text, notes=notes)


if __name__ == "__main__":
    main()
