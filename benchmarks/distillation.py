"""The LCM student against its teacher: latency side by side, and the ``distillation-study`` preset.

Part 1, latency (the issue's target: the student at 4 steps at least 10x below the teacher's 50 guided steps). In
rotated rounds, each round times every configuration once, so drift on a shared machine hits all alike: the
teacher (emoji-sd) with its own sampler at 50 steps and at 4 steps with guidance (two UNet passes per step, batched
as one call of 2 x 4 images), and the student (emoji-sd-lcm) with LCMScheduler at 1, 2, 4 and 8 steps with its
guidance as an input (one call of 4 images per step). 4 images (the model cards' speed prompts, seeds 0-3) in
one pipeline call, timed as ``Engine.run`` times a repeat (``_harness.PassTimer``), after warm-up calls.

Part 2, quality and latency per cell of ``presets/distillation-study.yaml``: one ``Engine.run`` per cell on a fresh
study (the preset's prompts, seeds, warm-up and repeats), with a distribution set of N training captions (seed =
i) scored on the studio's emoji feature network, plus the student's cells once more on an untrained student as a
control (``distill --steps 0``: the sampler without distillation): FD-emoji, KID-emoji, precision / recall, the
classifier's top-5
on the distribution set, and prompt fidelity on the run's own images. PSNR against the same-seed reference is
kept in the raw file but not shown: a student is not trying to reproduce its teacher's sample paths.

    .venv/bin/python benchmarks/distillation.py            # both parts; results/distillation-<date>.json
    .venv/bin/python benchmarks/distillation.py --quick --dirty    # development: 2 rounds, N=50, 4 cells
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESET = ROOT / "presets" / "distillation-study.yaml"
CONTROL = "untrained student (control)"
RAW_KEYS = ("status", "error", "model", "sampler", "steps", "guidance", "scheduler_class", "nfe", "latencies_ms",
            "latency_median_ms", "latency_iqr_ms", "psnr", "fidelity_top1", "fidelity_top5", "fd_emoji", "kid_emoji",
            "kid_emoji_std", "precision_emoji", "recall_emoji", "dist_classifier_top5", "dist_n", "dist_method",
            "timing_note")


def _f(value, fmt: str, scale: float = 1.0) -> str:
    return "—" if value is None else format(value * scale, fmt)


def main() -> None:
    import torch
    from _harness import PassTimer, add_publish_args, check_tree, print_table, publish, setup_of, time_rounds

    from studio_core.embedded.training.evaluate import SPEED_PROMPTS
    from studio_core.measure.engine import Engine
    from studio_core.measure.timing import latency_spread
    from studio_core.models import load_pipeline, model_defaults, resolve_model
    from studio_core.store.store import RunStore
    from studio_core.study.sweep import load_preset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="emoji-sd")
    ap.add_argument("--student", default="emoji-sd-lcm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--distribution", type=int, default=200, help="images per distribution set in part 2")
    ap.add_argument("--skip-study", action="store_true", help="part 1 only")
    ap.add_argument("--quick", action="store_true", help="development: 2 rounds, N=50, the preset's first cells only")
    a = add_publish_args(ap).parse_args()
    check_tree(a.dirty)
    torch.set_num_threads(a.threads)
    rounds, n = (2, 50) if a.quick else (a.rounds, a.distribution)

    # ---------------------------------------------------------------- part 1: latency in rotated rounds
    pairs = list(zip(SPEED_PROMPTS, range(len(SPEED_PROMPTS))))
    tdef, sdef = model_defaults(resolve_model(a.teacher)), model_defaults(resolve_model(a.student))
    teacher, student = load_pipeline(a.teacher), load_pipeline(a.student)
    size = {"height": tdef["height"], "width": tdef["width"]}
    configs = {
        f"teacher {tdef['num_inference_steps']} steps": (teacher, tdef["num_inference_steps"], tdef["guidance_scale"]),
        "teacher 4 steps": (teacher, 4, tdef["guidance_scale"]),
        **{f"student {s} step{'s' * (s > 1)}": (student, s, sdef["guidance_scale"]) for s in (1, 2, 4, 8)},
    }
    timers = {k: PassTimer(pipe, pairs, "cpu", num_inference_steps=steps, guidance_scale=g, **size)
              for k, (pipe, steps, g) in configs.items()}
    for timer in timers.values():
        for _ in range(a.warmup):
            timer()
    times = time_rounds(list(configs), rounds, lambda k: timers[k]().total_ms)
    base = f"teacher {tdef['num_inference_steps']} steps"
    base_med = latency_spread(times[base])["median"]
    rows = []
    for k, (pipe, steps, g) in configs.items():
        s = latency_spread(times[k])
        ratio = [base_med / t for t in times[k]]
        guided = pipe is teacher and g > 1
        rows.append([k.split()[0], a.teacher if pipe is teacher else a.student, type(pipe.scheduler).__name__,
                     str(steps),
                     f"{g:g}" + (" (CFG: 2 passes)" if guided else (" (w input)" if pipe is student else "")),
                     f"{s['median']:.0f} ({s['iqr'] or 0:.0f})", f"{s['min']:.0f}–{s['max']:.0f}",
                     f"{base_med / s['median']:.1f}x ({min(ratio):.1f}–{max(ratio):.1f})"])
    print(f"# LCM student against its teacher: latency, {len(pairs)} images in one call\n")
    latency_table = print_table(["model", "name", "sampler", "steps", "guidance", "median ms (IQR)", "range ms",
                                 f"speed-up vs {base} (range over rounds)"], "lllrlrrr", rows)

    # ---------------------------------------------------------------- part 2: the preset's cells
    study_rows: list[dict] = []
    study_table = None
    sweep = None
    if not a.skip_study:
        from dataclasses import replace

        from studio_core.distill.run import DISTILL_RECIPES, distill

        sweep = load_preset(PRESET)
        specs = [s.to_dict() for s in (list(sweep.specs)[:4] if a.quick else sweep.specs)]
        with tempfile.TemporaryDirectory(prefix="distillation-") as tmp:
            # the control: the student before any training step (the teacher's UNet with a zero guidance projection,
            # so it ignores w, and LCMScheduler), to show what the sampler alone gives and what distillation adds
            control = Path(tmp) / "untrained-student"
            distill(a.teacher, control, replace(DISTILL_RECIPES["cpu"], steps=0), evaluate_after=False)
            specs += [{**s, "model": str(control)} for s in specs if s["model"] == a.student]
            engine = Engine(RunStore(Path(tmp) / "study"))
            for spec in specs:
                t0 = time.perf_counter()
                result = engine.run({**spec, "distribution": n}, reference=sweep.reference)
                row = dict(result.row)
                if spec["model"] == str(control):
                    row["model"] = CONTROL
                row["cell_s"] = round(time.perf_counter() - t0, 1)
                study_rows.append(row)
                print(f"{row['model']} {row.get('sampler')} {row.get('steps')} steps: {row['status']} in "
                      f"{row['cell_s']:.0f} s", file=sys.stderr, flush=True)
        lines = [[str(r.get("model")), str(r.get("sampler") or r.get("scheduler_class")), str(r.get("steps")),
                  _f(r.get("nfe"), ".0f"),
                  f"{_f(r.get('latency_median_ms'), '.0f')} ({_f(r.get('latency_iqr_ms'), '.0f')})",
                  _f(r.get("fd_emoji"), ".2f"),
                  f"{_f(r.get('kid_emoji'), '.2f', 1e3)} ± {_f(r.get('kid_emoji_std'), '.2f', 1e3)}",
                  _f(r.get("precision_emoji"), ".2f"), _f(r.get("recall_emoji"), ".2f"),
                  _f(r.get("dist_classifier_top5"), ".0%"), _f(r.get("fidelity_top5"), ".0%")]
                 if r.get("status") == "ok" else [str(r.get("model")), str(r.get("sampler")), str(r.get("steps")),
                                                   f"failed: {r.get('error')}"] + [""] * 7
                 for r in study_rows]
        print(f"\n# distillation-study preset: N = {n} images per distribution set\n")
        study_table = print_table(["model", "sampler", "steps", "denoiser calls", "median ms (IQR)", "FD-emoji",
                                   "KID-emoji ×10³ ± std", "precision", "recall", "top-5 (dist. set)",
                                   "prompt fidelity top-5 (own images)"], "lllrrrrrrrr", lines)

    setup = setup_of("cpu", rounds, warmup=a.warmup, teacher=a.teacher, student=a.student, images=len(pairs),
                     size=size, preset=str(PRESET.relative_to(ROOT)), distribution=n, quick=a.quick)
    setup_text = (f"Setup: part 1, {len(pairs)} images ({', '.join(SPEED_PROMPTS)}; seeds 0-3) in one pipeline call at "
                  f"{size['height']}x{size['width']} px, {a.warmup} warm-up calls each, {rounds} rotated rounds; "
                  "part 2, "
                  f"one Engine.run per cell of {PRESET.relative_to(ROOT)} on a fresh study, with a distribution set of "
                  f"{n} training captions (seed = i); {setup['device_name']}, {setup['threads']} torch threads, torch "
                  f"{setup['torch_version']}, diffusers {setup['diffusers_version']}, git {setup['git_commit']}")
    notes = [
        "Guidance: the teacher's is classifier-free (each step runs the UNet on the prompt and on the empty prompt, "
        "batched as one call of 8); the student's is an input of its UNet (w = guidance - 1 through "
        "time_cond_proj_dim), so one call of 4 per step.",
        "FD-emoji, KID-emoji and precision/recall are on the studio's own emoji feature network, not Inception: they "
        "are not FID or KID, and compare rows of this table only, at the same N.",
        f"{CONTROL}: the student before its first training step, made here with `distill --steps 0`: the teacher's "
        "UNet with the guidance projection at zero (so it ignores w) sampled by LCMScheduler. It shows how much of "
        "the student's few-step quality is the consistency sampler alone, and what distillation adds.",
        "Prompt fidelity top-5 in part 2 is over the preset's own images only (emoji-8: 8 images), so it moves in "
        "steps of 12.5%; the model card's figure is over 200 captions.",
    ]
    raw = {"latency_ms": times, "study": {f"{r.get('model')}, {r.get('sampler')}, {r.get('steps')} steps":
                                          {k: r.get(k) for k in (*RAW_KEYS, "cell_s")} for r in study_rows}}
    publish("distillation", setup, raw, latency_table, setup_text=setup_text, notes=notes,
            tables=[t for t in (latency_table, study_table) if t])


if __name__ == "__main__":
    main()
