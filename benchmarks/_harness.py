"""The one benchmark harness: configurations timed in rotated rounds by the engine's own timing core.

Every script in this folder times through here, so a published table is timed by the code users run:
``PassTimer`` is one pass over (prompt, seed) pairs exactly as ``Engine.run`` times a repeat
(``measure.timing.timed_pass`` around ``measure.generation.generate``: CUDA events after a synchronise
on GPU, ``perf_counter`` on CPU), and ``time_rounds`` is ``measure.timing.rotated_rounds``: each round
runs every configuration once, in a rotated order, so drift on a shared machine hits all alike.
``publish`` keeps what a table is made of as JSON in ``benchmarks/results/<name>-<YYYY-MM-DD>.json``: the
commit, whether the tree was clean, the setup, every raw repeat and the table rows; ``make_results.py``
builds ``RESULTS.md`` from those files alone. A published figure must be reproducible from its commit, so a
script refuses to start on a tree with uncommitted changes (``check_tree``) unless given ``--dirty``
(``add_publish_args``); such a file says ``"dirty": true`` and its table is marked as measured on
uncommitted code.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio_core.measure.environment import environment  # noqa: E402
from studio_core.measure.generation import generate  # noqa: E402
from studio_core.measure.timing import Clock, Probe, TimedPass, rotated_rounds, timed_pass  # noqa: E402

__all__ = ["RESULTS_DIR", "PassTimer", "add_publish_args", "check_tree", "markdown_table", "print_table", "publish",
           "setup_line", "setup_of", "time_rounds", "tree_state"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# what a benchmark writes, not what it runs: changes here do not make a measurement irreproducible
OUTPUTS = ("benchmarks/results/", "benchmarks/RESULTS.md")


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


def markdown_table(header: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` left or ``r`` right."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def print_table(header: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> dict:
    """Print a markdown table and return it as ``publish`` keeps it: ``header``, ``align``, ``rows``."""
    print(markdown_table(header, align, rows))
    return {"header": list(header), "align": align, "rows": [list(r) for r in rows]}


def tree_state(root: Path = ROOT) -> dict:
    """The checkout a figure is measured on: ``commit`` (``git rev-parse HEAD``), ``dirty`` and the
    ``changed`` paths (``git status --porcelain`` lines, the benchmarks' own outputs left out). Outside a
    git checkout the tree counts as dirty, since nothing proves which code ran."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return dict(commit="unknown", dirty=True, changed=[f"(git failed: {exc})"])
    if head.returncode or status.returncode:
        return dict(commit="unknown", dirty=True, changed=["(not a git checkout)"])
    changed = [line for line in status.stdout.splitlines() if not line[3:].strip('"').startswith(OUTPUTS)]
    return dict(commit=head.stdout.strip(), dirty=bool(changed), changed=changed)


def add_publish_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flag every table-producing script takes: ``--dirty`` allows a run on uncommitted code."""
    parser.add_argument("--dirty", action="store_true",
                        help="measure even with uncommitted changes (the results file and its table say so)")
    return parser


def check_tree(allow_dirty: bool, root: Path = ROOT) -> dict:
    """Before any work: refuse (exit 2, one line) on a tree with uncommitted changes unless ``allow_dirty``."""
    state = tree_state(root)
    if state["dirty"] and not allow_dirty:
        first = state["changed"][0].strip()
        more = f" and {len(state['changed']) - 1} more" if len(state["changed"]) > 1 else ""
        print(f"refused: the tree has uncommitted changes ({first}{more}); published figures are measured on a "
              "clean commit. Commit first, or pass --dirty to measure anyway (marked as uncommitted code).",
              file=sys.stderr)
        raise SystemExit(2)
    if state["dirty"]:
        print(f"note: measuring on uncommitted code ({len(state['changed'])} changed paths); the results file "
              "says \"dirty\": true", file=sys.stderr)
    return state


def publish(name: str, setup: dict, raw: dict, table: dict, *, setup_text: str = "", notes: Sequence[str] = (),
            script: str | None = None, argv: Sequence[str] | None = None, root: Path = ROOT,
            results_dir: Path = RESULTS_DIR, **extra) -> Path:
    """Write ``<results_dir>/<name>-<YYYY-MM-DD>.json`` (``-2``, ``-3``... when that day already has one,
    so no run overwrites another): the command that reproduces it (``script`` and ``argv`` default to this
    process's), the UTC time, the commit and whether the tree was clean when the figures were written, the
    ``setup`` and its printed ``setup_text``, every raw repeat (``raw``: configuration -> list, in round order), the ``table`` (``header``, ``align``, ``rows``),
    the ``notes`` printed under it and the script's ``extra`` figures."""
    argv = list(sys.argv[1:] if argv is None else argv)
    state = tree_state(root)
    now = time.gmtime()
    results_dir.mkdir(parents=True, exist_ok=True)
    path, n = results_dir / f"{name}-{time.strftime('%Y-%m-%d', now)}.json", 1
    while path.exists():
        n += 1
        path = results_dir / f"{name}-{time.strftime('%Y-%m-%d', now)}-{n}.json"
    script = script or f"benchmarks/{Path(sys.argv[0]).name}"
    command = " ".join([f".venv/bin/python {script}", *(a for a in argv if a != "--dirty")])
    data = {"name": name, "command": command, "argv": argv, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", now),
            "commit": state["commit"], "dirty": state["dirty"], "changed": state["changed"], "setup": setup,
            "setup_text": setup_text, "raw": {str(k): _plain(v) for k, v in raw.items()}, "table": table,
            "notes": list(notes), **extra}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"\nraw results: {path.relative_to(root) if path.is_relative_to(root) else path}"
          + (" (measured on uncommitted code)" if state["dirty"] else ""), file=sys.stderr)
    return path


def _plain(values):
    """Raw repeats as JSON numbers (floats to 3 decimals, integers as they are)."""
    if not isinstance(values, (list, tuple)):
        return values
    return [int(x) if isinstance(x, (int, np.integer)) else round(float(x), 3)
            if isinstance(x, (float, np.floating)) else x for x in values]
