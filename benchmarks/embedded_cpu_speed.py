"""CPU speed of the embedded model: 4 images x 20 steps with classifier-free guidance.

Target (issue 2): median at most 2 s on 2 cores at the model's default resolution. Warm-up calls
are not counted; each timed call is the whole pipeline (text encoding, 20 UNet steps on a batch of
8 = 4 prompts x 2 for guidance, VAE decode). Run: ``python benchmarks/embedded_cpu_speed.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from studio_core.measure.generation import generate  # noqa: E402
from studio_core.models import EMBEDDED_MODEL_DIR, load_pipeline, model_defaults  # noqa: E402

PROMPTS = ["grinning face", "red heart", "rocket", "flag: France"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    pipe = load_pipeline("emoji-sd")
    d = model_defaults(EMBEDDED_MODEL_DIR)
    seeds = list(range(len(PROMPTS)))

    def once() -> float:
        t0 = time.perf_counter()
        generate(pipe, list(zip(PROMPTS, seeds)), num_inference_steps=args.steps, guidance_scale=d["guidance_scale"])
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        once()
    times = sorted(once() for _ in range(args.repeats))
    q = statistics.quantiles(times, n=4)
    print("# embedded model CPU speed")
    print(f"setup: model emoji-sd ({d['height']}x{d['width']}), {len(PROMPTS)} images x {args.steps} steps, "
          f"guidance {d['guidance_scale']} (UNet batch {2 * len(PROMPTS)}), sampler {type(pipe.scheduler).__name__}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical cores, warm-up {args.warmup}, repeats {args.repeats}")
    print("| metric | seconds |")
    print("|---|---|")
    print(f"| median | {statistics.median(times):.3f} |")
    print(f"| min | {times[0]:.3f} |")
    print(f"| max | {times[-1]:.3f} |")
    print(f"| IQR | {q[2] - q[0]:.3f} |")
    print(f"| per image | {statistics.median(times) / len(PROMPTS):.3f} |")
    print(f"target: median <= 2.000 s -> {'met' if statistics.median(times) <= 2.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
