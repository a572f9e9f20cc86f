"""The timing core on hand-checkable numbers: statistics, rotated rounds, and the probe with a counting clock."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio_core.measure.timing import (
    Clock,
    Probe,
    TimedPass,
    latency_spread,
    rotated_order,
    rotated_rounds,
    timed_pass,
    timing_summary,
)


# ------------------------------------------------------------------------------------------ statistics
def test_latency_spread_known_answers():
    s = latency_spread([5.0, 1.0, 4.0, 2.0, 3.0])
    # inclusive quartiles of 1..5 are 2 and 4
    assert s == {"median": 3.0, "iqr": 2.0, "min": 1.0, "max": 5.0, "mean": 3.0}
    # two values: quartiles interpolate to 12.5 and 17.5
    assert latency_spread([10.0, 20.0]) == {"median": 15.0, "iqr": 5.0, "min": 10.0, "max": 20.0, "mean": 15.0}
    assert latency_spread([7.0]) == {"median": 7.0, "iqr": None, "min": 7.0, "max": 7.0, "mean": 7.0}  # no spread
    with pytest.raises(ValueError, match="no latencies"):
        latency_spread([])


def _pass(total: float, encode: float | None, denoise: float, decode: float, nfe: int = 4) -> TimedPass:
    return TimedPass(np.zeros((1, 1, 1, 3), np.uint8), total,
                     {"text_encode_ms": encode, "denoise_ms": denoise, "decode_ms": decode}, nfe)


def test_timing_summary_takes_each_part_as_its_median_over_the_passes():
    passes = [_pass(100.0, 10.0, 80.0, 5.0), _pass(130.0, 12.0, 90.0, 8.0, nfe=6), _pass(110.0, 11.0, 70.0, 6.0)]
    s = timing_summary(40.12345, passes, n_images=2, steps=10)
    assert s["cold_ms"] == 40.123 and s["latencies_ms"] == [100.0, 130.0, 110.0]
    assert s["latency_median_ms"] == 110.0 and s["per_image_ms"] == 55.0
    assert s["latency_min_ms"] == 100.0 and s["latency_max_ms"] == 130.0 and s["latency_mean_ms"] == 340 / 3
    assert s["latency_iqr_ms"] == 120.0 - 105.0
    assert (s["text_encode_ms"], s["denoise_ms"], s["decode_ms"]) == (11.0, 80.0, 6.0)
    assert s["step_mean_ms"] == 8.0 and s["nfe"] == 4  # NFE of the last pass
    # 11 + 80 + 6 = 97 <= 110 here, but medians of parts need not add up to the median total in general:
    # per pass 10+80+5 <= 100, 12+90+8 <= 130, 11+70+6 <= 110
    assert all(sum(p.parts.values()) <= p.total_ms for p in passes)


def test_a_part_missing_from_any_pass_is_none():
    s = timing_summary(1.0, [_pass(100.0, 10.0, 80.0, 5.0), _pass(100.0, None, 80.0, 5.0)], n_images=1, steps=4)
    assert s["text_encode_ms"] is None and s["denoise_ms"] == 80.0 and s["step_mean_ms"] == 20.0


# ------------------------------------------------------------------------------------------ rotated rounds
def test_rotated_rounds_run_every_configuration_once_per_round_in_rotated_order():
    assert rotated_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotated_order(["a", "b", "c"], 4) == ["b", "c", "a"]
    calls, rounds_done = [], []

    def run_once(config: str) -> float:
        calls.append(config)
        return float(len(calls))

    times = rotated_rounds(["a", "b", "c"], 3, run_once, on_round=rounds_done.append)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times == {"a": [1.0, 6.0, 8.0], "b": [2.0, 4.0, 9.0], "c": [3.0, 5.0, 7.0]}
    assert rounds_done == [0, 1, 2]
    with pytest.raises(ValueError, match="distinct"):
        rotated_rounds(["a", "a"], 1, run_once)


# ------------------------------------------------------------------------------------------ clock and probe
def test_cpu_clock_is_perf_counter_in_milliseconds():
    clock = Clock("cpu")
    assert not clock.cuda and clock.ms(1.0, 1.25) == 250.0
    a = clock.mark()
    assert isinstance(a, float) and clock.ms(a, clock.mark()) >= 0


class _CountingClock:
    """Each mark is the next integer, so every span is the number of marks between its ends."""

    cuda = False

    def __init__(self):
        self.t = -1

    def mark(self) -> int:
        self.t += 1
        return self.t

    def sync(self) -> None:
        pass

    def ms(self, a: int, b: int) -> float:
        return float(b - a)


class _Vae:
    def decode(self, x):
        return x


class _Pipe:
    """Text encoding, ``steps`` denoiser calls and a decode per call, as a diffusers pipeline orders them."""

    def __init__(self, steps: int):
        self.unet, self.vae, self.steps = torch.nn.Identity(), _Vae(), steps

    def encode_prompt(self, prompt):
        return torch.zeros(1)

    def __call__(self, prompt):
        x = self.encode_prompt(prompt)
        for _ in range(self.steps):
            x = self.unet(x)
        return self.vae.decode(x)


def test_probe_marks_parts_counts_denoiser_calls_and_cleans_up():
    pipe, clock = _Pipe(steps=3), _CountingClock()

    def two_calls(probe: Probe) -> np.ndarray:
        for prompt in ("a", "b"):
            probe.new_call()
            pipe(prompt)
        return np.zeros((2, 1, 1, 3), np.uint8)

    p = timed_pass(pipe, two_calls, clock)
    # marks: t0=0 | call 1: encode 1-2, denoise start 3, decode 4-5 | call 2: encode 6-7, denoise 8, decode 9-10 | t1=11
    assert p.total_ms == 11.0 and p.nfe == 6
    assert p.parts == {"text_encode_ms": 2.0, "denoise_ms": 2.0, "decode_ms": 2.0}
    assert not pipe.unet._forward_pre_hooks  # probes removed
    assert "encode_prompt" not in pipe.__dict__ and "decode" not in pipe.vae.__dict__


def test_a_pipeline_without_encode_prompt_has_no_text_encode_part():
    class Plain:  # a denoiser and a VAE, no encode_prompt (its text encoding is not marked)
        unet, vae = torch.nn.Identity(), _Vae()

        def __call__(self, prompt):
            return self.vae.decode(self.unet(self.unet(torch.zeros(1))))

    plain, clock = Plain(), _CountingClock()

    def one_call(probe: Probe) -> np.ndarray:
        probe.new_call()
        plain("a")
        return np.zeros((1, 1, 1, 3), np.uint8)

    p = timed_pass(plain, one_call, clock)
    assert p.parts["text_encode_ms"] is None and p.parts["denoise_ms"] == 1.0 and p.nfe == 2
