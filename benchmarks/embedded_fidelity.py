"""Prompt fidelity of the embedded model under several samplers and guidance scales.

Same fixed caption sample as the training report (200 training captions drawn with seed 1234, and
the held-out captions), one image per caption with seed = its index, 50 steps by default. Prints a
table with the setup and keeps every caption's rank in ``benchmarks/results/embedded_fidelity-<date>.json``.
Run: ``python benchmarks/embedded_fidelity.py [--guidance 3 5] [--samplers ...]`` (``--dirty`` on
uncommitted code).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from _harness import add_publish_args, check_tree, print_table, publish, setup_of  # noqa: E402
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler  # noqa: E402

from studio_core.embedded.training.data import load_or_build  # noqa: E402
from studio_core.embedded.training.evaluate import fidelity_captions, score_captions  # noqa: E402
from studio_core.measure.fidelity import PromptFidelityIndex  # noqa: E402
from studio_core.models import load_pipeline  # noqa: E402

SAMPLERS = {"DDIM": DDIMScheduler, "DPM++ 2M": DPMSolverMultistepScheduler, "Euler": EulerDiscreteScheduler,
            "UniPC": UniPCMultistepScheduler}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samplers", nargs="+", default=["DDIM"], choices=sorted(SAMPLERS))
    p.add_argument("--guidance", nargs="+", type=float, default=[3.0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = add_publish_args(p).parse_args()
    check_tree(args.dirty)
    torch.set_num_threads(args.threads)

    ds = load_or_build(ROOT / ".cache", 32)
    index = PromptFidelityIndex(ds.images, ds.captions)
    train_caps, held_caps = fidelity_captions(ds, args.n)
    pipe = load_pipeline("emoji-sd")
    base_config = pipe.scheduler.config
    setup = setup_of("cpu", 1, steps=args.steps, train_captions=len(train_caps), held_out=len(held_caps))
    setup_text = (f"Setup: emoji-sd 32x32, {args.steps} steps, {len(train_caps)} training captions + "
                  f"{len(held_caps)} held out, seed = caption index; {setup['device_name']}, {setup['threads']} "
                  f"torch threads, torch {setup['torch_version']}, diffusers {setup['diffusers_version']}, git "
                  f"{setup['git_commit']}")
    print(f"# embedded model prompt fidelity\n{setup_text}", flush=True)
    rows, ranks = [], {}
    for name in args.samplers:
        pipe.scheduler = SAMPLERS[name].from_config(base_config)
        for g in args.guidance:
            t0 = time.perf_counter()
            tr = score_captions(pipe, index, train_caps, args.steps, g)
            ho = score_captions(pipe, index, held_caps, args.steps, g)
            rows.append([name, f"{g:g}", f"{tr.top1:.1%}", f"{tr.top5:.1%}", f"{ho.top1:.1%}", f"{ho.top5:.1%}",
                         f"{time.perf_counter() - t0:.0f}"])
            ranks[f"{name}, guidance {g:g}, training ranks"] = tr.ranks
            ranks[f"{name}, guidance {g:g}, held-out ranks"] = ho.ranks
            print(f"{name} guidance {g:g} done", file=sys.stderr, flush=True)
    table = print_table(["sampler", "guidance", "train top-1", "train top-5", "held-out top-1", "held-out top-5",
                         "seconds"], "lrrrrrr", rows)
    publish("embedded_fidelity", setup, ranks, table, setup_text=setup_text,
            captions={"train": train_caps, "held_out": held_caps})

if __name__ == "__main__":
    main()
