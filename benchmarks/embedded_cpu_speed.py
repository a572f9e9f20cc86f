"""CPU speed of the embedded models: 4 images x 20 steps with classifier-free guidance, side by side.

Target (issue 2 for emoji-sd, issue 20 for emoji-flux): median at most 2 s on 2 cores at each model's default
resolution. Warm-up calls are not counted; each timed call is the whole pipeline (text encoding, 20 denoiser
steps with guidance, VAE decode), timed as ``Engine.run`` times a repeat (the shared harness, ``_harness.py``).
emoji-sd's UNet runs one batch of 8 per step (4 prompts x 2 for guidance); emoji-flux's transformer runs two
calls of batch 4 per step (FluxPipeline's true CFG). The models alternate in rotated rounds, so drift in the
machine's speed hits both alike; every repeat goes to ``benchmarks/results/embedded_cpu_speed-<date>.json``.
The prompts are the model cards' speed protocol (``SPEED_PROMPTS`` in ``embedded/training/evaluate.py``).
Run: ``python benchmarks/embedded_cpu_speed.py`` (``--models emoji-sd`` for one; ``--dirty`` on uncommitted code).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _harness import PassTimer, add_publish_args, check_tree, print_table, publish, setup_of, time_rounds  # noqa: E402

from studio_core.embedded.training.evaluate import SPEED_PROMPTS as PROMPTS  # noqa: E402
from studio_core.measure.timing import latency_spread  # noqa: E402
from studio_core.models import EMBEDDED_MODELS, load_pipeline, model_defaults, resolve_model  # noqa: E402

TARGET_S = 2.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["emoji-sd", "emoji-flux"], choices=sorted(EMBEDDED_MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    args = add_publish_args(p).parse_args()
    check_tree(args.dirty)

    torch.set_num_threads(args.threads)
    pairs = list(zip(PROMPTS, range(len(PROMPTS))))
    timers, facts = {}, {}
    for name in args.models:
        pipe = load_pipeline(name)
        d = model_defaults(resolve_model(name))
        timers[name] = PassTimer(pipe, pairs, "cpu", num_inference_steps=args.steps, guidance_scale=d["guidance_scale"],
                                 height=d["height"], width=d["width"])
        flux = type(pipe).__name__ == "FluxPipeline"
        facts[name] = {"size": f"{d['height']}x{d['width']}", "guidance": d["guidance_scale"],
                       "sampler": type(pipe.scheduler).__name__,
                       "denoiser": (f"transformer: 2 calls of batch {len(PROMPTS)} per step (true CFG)" if flux else
                                    f"UNet: 1 call of batch {2 * len(PROMPTS)} per step")}
        for _ in range(args.warmup):
            timers[name]()
    times_ms = time_rounds(args.models, args.repeats, lambda name: timers[name]().total_ms)
    setup = setup_of("cpu", args.repeats, warmup=args.warmup, steps=args.steps, images=len(PROMPTS), models=facts)
    setup_text = (f"Setup: {len(PROMPTS)} images x {args.steps} steps with each model's default guidance, at its "
                  f"default size, in one pipeline call; torch {setup['torch_version']}, diffusers "
                  f"{setup['diffusers_version']}, {setup['threads']} threads, {setup['device_name']}, git "
                  f"{setup['git_commit']}, warm-up {args.warmup} calls per model, {args.repeats} rounds with the "
                  "models in rotated order")
    print(f"# embedded models' CPU speed\n{setup_text}")
    rows, notes = [], []
    for name in args.models:
        s = {k: v / 1000 for k, v in latency_spread(times_ms[name]).items()}
        f = facts[name]
        verdict = "met" if s["median"] <= TARGET_S else "NOT met"
        rows.append([name, f["size"], f"{f['sampler']}, guidance {f['guidance']:g}", f["denoiser"],
                     f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}", f"{s['iqr']:.3f}",
                     f"{s['median'] / len(PROMPTS):.3f}", verdict])
        notes.append(f"{name}: median {s['median']:.3f} s, target <= {TARGET_S:.3f} s -> {verdict}.")
    table = print_table(["model", "size", "sampler", "denoiser work", "median s", "min s", "max s", "IQR s",
                         "per image s", f"target <= {TARGET_S:g} s"], "llllrrrrrl", rows)
    print("\n".join(notes))
    publish("embedded_cpu_speed", setup, times_ms, table, setup_text=setup_text, notes=notes)


if __name__ == "__main__":
    main()
