"""Timing: the clock, the probe that splits a pipeline call into parts, the statistics, rotated rounds.

One implementation for the engine and the benchmarks: ``Engine.run`` times its passes with
``timed_pass``, and ``benchmarks/_harness.py`` times configurations with the same ``timed_pass``
inside ``rotated_rounds``, so a published table is timed by the code users run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence, TypeVar

import numpy as np

__all__ = ["PARTS", "Clock", "Probe", "TimedPass", "latency_spread", "rotated_order", "rotated_rounds",
           "time_call", "timed_pass", "timing_summary"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

# breakdown column -> the probe marks that bound it in one pipeline call
PARTS: dict[str, tuple[str, str]] = {
    "text_encode_ms": ("encode_start", "encode_end"),
    "denoise_ms": ("denoise_start", "decode_start"),
    "decode_ms": ("decode_start", "decode_end"),
}


class Clock:
    """Timestamps on one device: CUDA events on GPU (read after one synchronise), perf_counter on CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def mark(self):
        """A timestamp: a recorded ``torch.cuda.Event`` on GPU, ``time.perf_counter()`` on CPU."""
        if self.cuda:
            import torch

            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def sync(self) -> None:
        """Wait for queued GPU work (``torch.cuda.synchronize``); nothing on CPU."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def ms(self, a, b) -> float:
        """Milliseconds from mark ``a`` to mark ``b`` (``Event.elapsed_time`` on GPU, after a sync)."""
        return a.elapsed_time(b) if self.cuda else (b - a) * 1000.0


class Probe:
    """Marks where a pipeline call encodes text, starts denoising and decodes, and counts denoiser calls."""

    def __init__(self, pipe, clock: Clock):
        self.pipe, self.clock = pipe, clock
        self.calls: list[dict] = []
        self._handles: list[Callable[[], object]] = []

    def new_call(self) -> dict:
        """Start the record of one pipeline call (``generate`` calls this before each call)."""
        self.calls.append({"nfe": 0})
        return self.calls[-1]

    def _wrap(self, owner, attr: str, start: str, end: str) -> None:
        """Instance-level wrapper that marks ``start``/``end`` around ``owner.attr``; undone by popping it."""
        original = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            self.calls[-1][start] = self.clock.mark()
            out = original(*args, **kwargs)
            self.calls[-1][end] = self.clock.mark()
            return out

        setattr(owner, attr, wrapped)
        self._handles.append(lambda: owner.__dict__.pop(attr, None))

    def __enter__(self) -> Probe:
        """Hook the denoiser (forward pre-hook: first call marks the loop start), ``encode_prompt`` and VAE decode."""
        pipe = self.pipe
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)

        def pre_hook(module, args):
            call = self.calls[-1]
            if call["nfe"] == 0:
                call["denoise_start"] = self.clock.mark()
            call["nfe"] += 1

        self._handles.append(denoiser.register_forward_pre_hook(pre_hook).remove)
        if hasattr(pipe, "encode_prompt"):
            self._wrap(pipe, "encode_prompt", "encode_start", "encode_end")
        self._wrap(pipe.vae, "decode", "decode_start", "decode_end")
        return self

    def __exit__(self, *exc) -> None:
        """Remove every hook and wrapper, last first."""
        for undo in reversed(self._handles):
            undo()
        self._handles.clear()


@dataclass
class TimedPass:
    """One timed pass over all images: the images, its end-to-end time, its parts and denoiser calls."""

    images: np.ndarray
    total_ms: float
    parts: dict[str, float | None]  # PARTS column -> ms summed over the pass's pipeline calls; None: not marked
    nfe: int


def time_call(fn: Callable[[], T], clock: Clock) -> tuple[T, float]:
    """Run ``fn`` between a synchronise and two clock marks (read after a second synchronise): its result and ms."""
    clock.sync()
    t0 = clock.mark()
    out = fn()
    t1 = clock.mark()
    clock.sync()
    return out, clock.ms(t0, t1)


def timed_pass(pipe, run: Callable[[Probe], np.ndarray], clock: Clock) -> TimedPass:
    """Time ``run(probe)`` end to end with ``time_call``, with the probe's breakdown into parts."""
    with Probe(pipe, clock) as probe:
        images, total_ms = time_call(lambda: run(probe), clock)
    parts: dict[str, float | None] = {}
    for column, (start, end) in PARTS.items():
        marked = all(start in c and end in c for c in probe.calls)
        parts[column] = sum(clock.ms(c[start], c[end]) for c in probe.calls) if marked else None
    return TimedPass(images, total_ms, parts, sum(c["nfe"] for c in probe.calls))


def latency_spread(latencies: Sequence[float]) -> dict[str, float | None]:
    """Median, interquartile range (inclusive-method quartiles), min, max and mean. One value has no
    spread: its IQR is None (shown "n/a"), never a 0 that would read as a perfectly steady timing."""
    lat = list(latencies)
    if not lat:
        raise ValueError("no latencies to summarise")
    q = statistics.quantiles(lat, n=4, method="inclusive") if len(lat) > 1 else None
    return {"median": statistics.median(lat), "iqr": q[2] - q[0] if q else None, "min": min(lat), "max": max(lat),
            "mean": statistics.fmean(lat)}


def timing_summary(cold_ms: float, passes: Sequence[TimedPass], n_images: int, steps: int) -> dict:
    """A run's timing columns: spread of the passes' latencies, per image, and each breakdown part as
    its median over the passes (None when a pass did not mark it); NFE of the last pass."""
    lat = [p.total_ms for p in passes]
    spread = latency_spread(lat)
    parts: dict[str, float | None] = {}
    for column in PARTS:
        values = [p.parts[column] for p in passes]
        parts[column] = None if any(v is None for v in values) else statistics.median(values)
    denoise = parts["denoise_ms"]
    return {
        "cold_ms": round(cold_ms, 3), "latencies_ms": [round(x, 3) for x in lat],
        "latency_median_ms": spread["median"], "latency_iqr_ms": spread["iqr"],
        "latency_min_ms": spread["min"], "latency_max_ms": spread["max"], "latency_mean_ms": spread["mean"],
        "per_image_ms": spread["median"] / n_images,
        **parts,
        "step_mean_ms": denoise / steps if denoise else None,  # per requested step (Heun: 2 calls)
        "nfe": passes[-1].nfe,
    }


def rotated_order(configs: Sequence[K], round_index: int) -> list[K]:
    """Round ``r`` runs the configurations starting at index ``r mod n``, wrapping around."""
    k = round_index % len(configs)
    return list(configs[k:]) + list(configs[:k])


def rotated_rounds(configs: Sequence[K], rounds: int, run_once: Callable[[K], float], *,
                   on_round: Callable[[int], None] | None = None) -> dict[K, list[float]]:
    """Rotated rounds: each round runs every configuration once in ``rotated_order``, so drift in a
    shared machine's speed hits all alike; returns each configuration's latencies in round order."""
    if not configs:
        raise ValueError("no configurations to time")
    if len(set(configs)) != len(configs):
        raise ValueError("configuration names must be distinct")
    times: dict[K, list[float]] = {c: [] for c in configs}
    for r in range(rounds):
        for config in rotated_order(configs, r):
            times[config].append(float(run_once(config)))
        if on_round is not None:
            on_round(r)
    return times
