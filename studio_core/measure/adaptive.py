"""Adaptive warm-up and repeats: how many calls a run makes before and while it is timed.

A spec's ``warmup`` and ``repeats`` are a fixed count (1-20 and 1-100) or ``AUTO`` (0, also written
``"auto"``), the default:

- Warm-up ``AUTO`` calls until two consecutive calls agree within ``WARMUP_AGREEMENT`` (10 %), at least
  ``AUTO_MIN_WARMUP`` (2: one pair to compare) and at most ``AUTO_MAX_WARMUP`` (10) calls. With the compile
  knob on, at least ``COMPILE_MIN_WARMUP`` (3) calls, whatever the spec says: inductor compiles on the
  first call, and in mode reduce-overhead CUDA graphs are recorded on the second and third, so none of
  that lands in a timed repeat.
- Repeats ``AUTO`` time until the 95 % confidence interval of the median is within ``AUTO_CI_TARGET``
  (±5 %) of the median, at least ``AUTO_MIN_REPEATS`` (6) and at most ``AUTO_MAX_REPEATS`` (30) repeats; a
  run that reaches the maximum first is recorded as not converged and flagged.

The interval is the distribution-free order-statistic interval of the median (``median_ci``): with n
sorted latencies, [x_(k), x_(n+1-k)] for the largest k with P(Binomial(n, 1/2) < k) <= 2.5 %. It needs no
assumption about the shape of the latencies (skewed, with the odd slow outlier when the machine is
busy), it is exact rather than resampled (a bootstrap of 6-10 values underestimates the spread and
needs a seed), and it is why the minimum is 6: five values cannot give 95 % (their widest interval,
min..max, covers the median with 1 - 2/32 = 93.75 %).

The defaults come from the embedded model on the shared 2-core CPU machine this was written on (DPM++ 2M,
30 repeats after 3 warm-ups, other jobs running beside it): 4 steps x 1 image (median 126 ms) reached ±5 %
at 6 repeats (±4.2 % there); 8 steps x 4 images (396 ms) was at ±8.4 % after 6 and ±5.6 % after 30, and
would have stopped at 24 (±5 % first reached there); 20 steps x 4 images (about 1 s) was at ±6.6 % after
12 quiet repeats, then drifted to 3-50 s passes as the machine filled up and never converged. So ±5 % is
reachable in 6-24 repeats when the machine is steady, and a busy machine shows up as an unconverged run
rather than a confident median: that is what the flag is for. A tighter target would rarely converge on
shared CPUs; a looser one would hide differences of 10 %, which many knobs make. The maximum keeps a run's
cost bounded (30 passes) and is also lowered to fit the spec's work cap (``pass_plan``'s ``max_passes``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = ["AUTO", "AUTO_CI_TARGET", "AUTO_MAX_REPEATS", "AUTO_MAX_WARMUP", "AUTO_MIN_REPEATS", "AUTO_MIN_WARMUP",
           "COMPILE_MIN_WARMUP", "MAX_REPEATS", "MAX_WARMUP", "WARMUP_AGREEMENT", "PassPlan", "ci_half_width",
           "convergence_summary", "expected_passes", "median_ci", "pass_plan", "plan_for", "warmed_up"]

AUTO = 0  # warmup / repeats: adaptive (the default)
MAX_WARMUP, MAX_REPEATS = 20, 100  # the caps on a fixed count
AUTO_MIN_WARMUP, AUTO_MAX_WARMUP = 2, 10
COMPILE_MIN_WARMUP = 3  # compile on call 1, CUDA-graph recording on calls 2-3 (mode reduce-overhead)
WARMUP_AGREEMENT = 0.10  # two consecutive warm-up calls within 10 % of the faster one: warm
AUTO_MIN_REPEATS, AUTO_MAX_REPEATS = 6, 30
AUTO_CI_TARGET = 0.05  # half-width of the median's 95 % CI, as a fraction of the median
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PassPlan:
    """How many warm-up calls and timed repeats a run may make; ``ci_target`` None: a fixed count."""

    warmup_min: int
    warmup_max: int
    repeats_min: int
    repeats_max: int
    ci_target: float | None = None

    @property
    def adaptive_warmup(self) -> bool:
        return self.warmup_max > self.warmup_min

    @property
    def min_passes(self) -> int:
        return self.warmup_min + self.repeats_min

    @property
    def max_passes(self) -> int:
        return self.warmup_max + self.repeats_max


def pass_plan(warmup: int, repeats: int, *, compiled: bool = False, max_passes: int | None = None) -> PassPlan:
    """The plan for a spec's ``warmup`` and ``repeats`` (``AUTO`` or a count). ``compiled`` (the compile knob
    is on) raises the warm-up to ``COMPILE_MIN_WARMUP``. ``max_passes`` (the work cap over one pass's work)
    lowers what is adaptive to fit: the maxima first (repeats, then warm-up), then the minima, down to one
    repeat and the warm-up floor (a run too short for a CI is then flagged not converged); the caller
    refuses a plan whose ``min_passes`` is still over it."""
    floor = COMPILE_MIN_WARMUP if compiled else 1
    if warmup == AUTO:
        w_min, w_max = max(AUTO_MIN_WARMUP, floor), max(AUTO_MAX_WARMUP, floor)
    else:
        w_min = w_max = max(warmup, floor)
    if repeats == AUTO:
        r_min, r_max, target = AUTO_MIN_REPEATS, AUTO_MAX_REPEATS, AUTO_CI_TARGET
    else:
        r_min, r_max, target = repeats, repeats, None
    if max_passes is not None:
        over = w_max + r_max - max_passes

        def cut(room: int) -> int:
            nonlocal over
            c = min(max(over, 0), room)
            over -= c
            return c

        r_max -= cut(r_max - r_min)
        w_max -= cut(w_max - w_min)
        if repeats == AUTO:
            c = cut(r_min - 1)
            r_min, r_max = r_min - c, r_max - c
        if warmup == AUTO:
            c = cut(w_min - floor)
            w_min, w_max = w_min - c, w_max - c
    return PassPlan(w_min, w_max, r_min, r_max, target)


def expected_passes(warmup: int, repeats: int, *, compiled: bool = False) -> int:
    """Passes a run typically makes, for time estimates: the plan's minima (a quiet machine's count)."""
    return pass_plan(warmup, repeats, compiled=compiled).min_passes


def warmed_up(calls_ms: Sequence[float], agreement: float = WARMUP_AGREEMENT) -> bool:
    """The last two warm-up calls agree within ``agreement`` of the faster one."""
    if len(calls_ms) < 2:
        return False
    a, b = calls_ms[-2], calls_ms[-1]
    return abs(a - b) <= agreement * min(a, b)


def _order_index(n: int, confidence: float = CONFIDENCE) -> int | None:
    """The largest k (1-based) with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2; None when none exists."""
    alpha, below, k = (1 - confidence) / 2, 0.0, None
    for j in range(n // 2 + 1):
        below += math.comb(n, j) / 2**n  # P(B <= j) = P(B < j + 1)
        if below > alpha:
            break
        k = j + 1
    return k


def median_ci(latencies: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the median from order statistics (binomial); None when
    there are too few values for ``confidence`` (fewer than 6 for 95 %)."""
    xs = sorted(latencies)
    k = _order_index(len(xs), confidence)
    if k is None:
        return None
    return xs[k - 1], xs[len(xs) - k]


def ci_half_width(latencies: Sequence[float]) -> float | None:
    """Half the width of the median's 95 % CI as a fraction of the median; None without an interval."""
    ci = median_ci(latencies)
    med = statistics.median(latencies) if latencies else 0
    if ci is None or med <= 0:
        return None
    return (ci[1] - ci[0]) / 2 / med


def plan_for(spec, max_image_steps: int) -> PassPlan:
    """The plan of a resolved spec: its warm-up and repeats, the compile knob's warm-up floor, and the
    adaptive maxima lowered to fit ``max_image_steps`` (steps x images x passes)."""
    per_pass = max(spec.steps * spec.n_images, 1)
    return pass_plan(spec.warmup, spec.repeats, compiled="compile" in (spec.knobs or {}),
                     max_passes=max_image_steps // per_pass)


def convergence_summary(plan: PassPlan, warm_ms: Sequence[float], latencies: Sequence[float],
                        asked_warmup: int) -> dict:
    """The run's convergence columns: calls made, the median's 95 % CI, whether every adaptive part
    converged (None when nothing was adaptive) and a note saying what did not, or what was raised."""
    ci, half = median_ci(latencies), ci_half_width(latencies)
    notes, converged = [], []
    if plan.adaptive_warmup:
        settled = warmed_up(warm_ms)
        converged.append(settled)
        if not settled:
            a, b = warm_ms[-2:] if len(warm_ms) > 1 else (warm_ms[-1], warm_ms[-1])
            notes.append(f"warm-up did not settle: the last two of {len(warm_ms)} calls differed by "
                         f"{abs(a - b) / min(a, b):.0%} (target {WARMUP_AGREEMENT:.0%})")
    elif asked_warmup != AUTO and len(warm_ms) > asked_warmup:
        notes.append(f"warm-up raised from {asked_warmup} to {len(warm_ms)} calls: compile and CUDA-graph "
                     "recording happen in the first calls, never in a timed repeat")
    if plan.ci_target is not None:
        ok = half is not None and half <= plan.ci_target
        converged.append(ok)
        if not ok:
            width = f"±{half:.1%}" if half is not None else "not computable"
            notes.append(f"not converged: the median's 95% CI is {width} after {len(latencies)} repeats "
                         f"(target ±{plan.ci_target:.0%})")
    return {
        "warmup_done": len(warm_ms), "repeats_done": len(latencies),
        "timing_converged": int(all(converged)) if converged else None,
        "latency_ci_low_ms": ci[0] if ci else None, "latency_ci_high_ms": ci[1] if ci else None,
        "timing_note": "; ".join(notes) or None,
    }
