"""The one benchmark harness: configurations timed in rotated rounds by the engine's own timing core.

Every script in this folder times through here, so a published table is timed by the code users run:
``PassTimer`` is one pass over (prompt, seed) pairs exactly as ``Engine.run`` times a repeat
(``measure.timing.timed_pass`` around ``measure.generation.generate``: CUDA events after a synchronise
on GPU, ``perf_counter`` on CPU), and ``time_rounds`` is ``measure.timing.rotated_rounds``: each round
runs every configuration once, in a rotated order, so drift on a shared machine hits all alike.
``write_results`` keeps the setup and every raw latency as JSON in ``benchmarks/results/``, beside the
tables in ``RESULTS.md``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio_core.measure.environment import environment  # noqa: E402
from studio_core.measure.generation import generate  # noqa: E402
from studio_core.measure.timing import Clock, Probe, TimedPass, rotated_rounds, timed_pass  # noqa: E402

__all__ = ["RESULTS_DIR", "PassTimer", "print_table", "setup_line", "setup_of", "time_rounds", "write_results"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class PassTimer:
    """One pass over ``pairs`` timed as ``Engine.run`` times a repeat: ``timed_pass`` around ``generate``."""

    def __init__(self, pipe, pairs: Sequence[tuple[str, int]], device: str, *, batch: int | None = None,
                 **call_kwargs):
        self.pipe, self.pairs, self.batch, self.call_kwargs = pipe, list(pairs), batch, call_kwargs
        self.clock = Clock(device)

    def __call__(self, **extra_kwargs) -> TimedPass:
        """Time one pass; ``extra_kwargs`` (a knob's call arguments) go to every pipeline call."""
        def run(probe: Probe) -> np.ndarray:
            return generate(self.pipe, self.pairs, batch=self.batch, on_call=probe.new_call,
                            **self.call_kwargs, **extra_kwargs)

        return timed_pass(self.pipe, run, self.clock)


def time_rounds(configs: Sequence[Hashable], rounds: int, run_once: Callable[[Hashable], float]) -> dict:
    """``rotated_rounds`` with progress on stderr: each configuration's latency (ms) per round."""
    return rotated_rounds(configs, rounds, run_once,
                          on_round=lambda r: print(f"round {r + 1}/{rounds} done", file=sys.stderr))


def setup_of(device: str, rounds: int, **extra) -> dict:
    """The setup a table is measured on: ``environment(device)`` (device, threads, torch and diffusers
    versions, commit, Python), the device string, the number of timed rounds, and the script's own facts."""
    return {**environment(device), "device": device, "rounds": rounds, **extra}


def setup_line(lead: str, setup: dict, how: str, libraries: Sequence[str] = ()) -> str:
    """``Setup:`` line of a table: the script's ``lead`` (model, images, steps), then the machine and
    versions from ``setup`` (with the versions of ``libraries``, keys of ``setup``), then ``how`` it was timed."""
    versions = "".join(f", {name} {setup[name]}" for name in libraries)
    return (f"Setup: {lead}; {setup['device_name']}, {setup['threads']} torch threads, torch "
            f"{setup['torch_version']}, diffusers {setup['diffusers_version']}{versions}, git {setup['git_commit']}; "
            f"{how}")


def print_table(header: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> None:
    """A markdown table; ``align`` has one letter per column, ``l`` left or ``r`` right."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def write_results(script: str, setup: dict, latencies_ms: dict, **extra) -> Path:
    """Raw results as JSON in ``benchmarks/results/<script>-<UTC timestamp>.json``: the command line, the
    setup, every raw latency per configuration (in round order) and the script's ``extra`` figures."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{script}-{stamp}.json"
    data = {"script": f"benchmarks/{script}.py", "argv": sys.argv[1:], "utc": stamp, "setup": setup,
            "latencies_ms": {str(k): [round(float(x), 3) for x in v] for k, v in latencies_ms.items()}, **extra}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"\nraw results: {path.relative_to(RESULTS_DIR.parents[1])}", file=sys.stderr)
    return path
