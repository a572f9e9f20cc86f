"""CPU speed of the embedded model: 4 images x 20 steps with classifier-free guidance.

Target (issue 2): median at most 2 s on 2 cores at the model's default resolution. Warm-up calls
are not counted; each timed call is the whole pipeline (text encoding, 20 UNet steps on a batch of
8 = 4 prompts x 2 for guidance, VAE decode), timed as ``Engine.run`` times a repeat (the shared
harness, ``_harness.py``); every repeat goes to ``benchmarks/results/embedded_cpu_speed-<date>.json``. The
prompts are the model card's speed protocol (``SPEED_PROMPTS`` in ``embedded/training/evaluate.py``).
Run: ``python benchmarks/embedded_cpu_speed.py`` (``--dirty`` on uncommitted code).
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
from studio_core.models import EMBEDDED_MODEL_DIR, load_pipeline, model_defaults  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    args = add_publish_args(p).parse_args()
    check_tree(args.dirty)

    torch.set_num_threads(args.threads)
    pipe = load_pipeline("emoji-sd")
    d = model_defaults(EMBEDDED_MODEL_DIR)
    timer = PassTimer(pipe, list(zip(PROMPTS, range(len(PROMPTS)))), "cpu", num_inference_steps=args.steps,
                      guidance_scale=d["guidance_scale"])

    for _ in range(args.warmup):
        timer()
    # one configuration: its rounds are simply the timed repeats
    times_ms = time_rounds(["emoji-sd"], args.repeats, lambda _config: timer().total_ms)["emoji-sd"]
    s = {k: v / 1000 for k, v in latency_spread(times_ms).items()}
    setup = setup_of("cpu", args.repeats, warmup=args.warmup, steps=args.steps, images=len(PROMPTS),
                     guidance=d["guidance_scale"], sampler=type(pipe.scheduler).__name__)
    setup_text = (f"Setup: model emoji-sd ({d['height']}x{d['width']}), {len(PROMPTS)} images x {args.steps} steps, "
                  f"guidance {d['guidance_scale']} (UNet batch {2 * len(PROMPTS)}), sampler {setup['sampler']}, "
                  f"torch {setup['torch_version']}, diffusers {setup['diffusers_version']}, threads "
                  f"{setup['threads']}, {setup['device_name']}, git {setup['git_commit']}, warm-up {args.warmup}, "
                  f"repeats {args.repeats}")
    print(f"# embedded model CPU speed\n{setup_text}")
    table = print_table(["metric", "seconds"], "lr", [
        ["median", f"{s['median']:.3f}"], ["min", f"{s['min']:.3f}"], ["max", f"{s['max']:.3f}"],
        ["IQR", f"{s['iqr']:.3f}"], ["per image", f"{s['median'] / len(PROMPTS):.3f}"]])
    target = f"Target: median <= 2.000 s -> {'met' if s['median'] <= 2.0 else 'NOT met'}."
    print(target)
    publish("embedded_cpu_speed", setup, {"emoji-sd": times_ms}, table, setup_text=setup_text, notes=[target])


if __name__ == "__main__":
    main()
