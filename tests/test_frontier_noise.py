"""The noise-aware frontier on points of known answer: ties within the latency IQR, near-ties, one repeat,
exact costs, lower-is-better quality, missing values, and setups (device, threads) that never meet."""

import math

import pandas as pd
import pytest

from app import plots
from studio_core.study.frontier import (
    classify,
    cost_interval,
    dominates_beyond_noise,
    frontier_table,
    pareto_front,
    setup_label,
    setups,
)


def _run(id, ms, quality, iqr=None, metric="psnr", **kw):
    """A run of one setup (CPU, 2 threads) with median ``ms`` and latency IQR ``iqr`` (None: one repeat)."""
    return {"id": id, "latency_median_ms": ms, "latency_iqr_ms": iqr, metric: quality, "device_name": "CPU x",
            "threads": 2, "repeats": 1 if iqr is None else 3, **kw}


def _status(judged):
    return dict(zip(judged["id"], judged["front_status"]))


def test_a_near_tie_inside_a_wide_iqr_is_tied_and_inside_a_narrow_one_is_dominated():
    """The issue's case: 0.4 ms slower and 0.01 dB worse than a front run. With 15 ms IQRs the two
    latency intervals overlap almost entirely, so it is tied; with 0.1 ms IQRs they do not, and it is
    dominated. The strict rule calls it dominated both times."""
    wide = classify([_run(1, 100.0, 30.00, 15.0), _run(2, 100.4, 29.99, 15.0)])
    assert _status(wide) == {1: "front", 2: "tied"}
    tied = wide.set_index("id").loc[2]
    assert tied["tied_with"] == 1 and tied["dominated_by"] is None
    assert (tied["cost_low"], tied["cost_high"]) == pytest.approx((92.9, 107.9))
    narrow = classify([_run(1, 100.0, 30.00, 0.1), _run(2, 100.4, 29.99, 0.1)])
    assert _status(narrow) == {1: "front", 2: "dominated"}
    assert narrow.set_index("id").loc[2, "dominated_by"] == 1
    assert list(pareto_front([_run(1, 100.0, 30.00, 15.0), _run(2, 100.4, 29.99, 15.0)])["id"]) == [1]


def test_slower_beyond_the_noise_and_worse_is_dominated_with_quartiles_from_the_repeats():
    fast = _run(1, 100.0, 30.0, 4.0, latencies_ms="[98.0, 100.0, 102.0]")  # Q1..Q3 = 99..101
    slow = _run(2, 125.0, 29.0, 10.0, latencies_ms="[120.0, 125.0, 130.0]")  # 122.5..127.5
    assert cost_interval(fast) == (99.0, 101.0) and cost_interval(slow) == (122.5, 127.5)
    judged = classify([fast, slow, _run(3, 300.0, 35.0, 10.0)])
    assert _status(judged) == {1: "front", 2: "dominated", 3: "front"}
    assert judged.set_index("id").loc[2, "dominated_by"] == 1


def test_equal_latency_and_better_quality_dominates_only_when_the_latencies_have_no_spread():
    """Rule: a run must cost no more than the other whatever the noise (its high end at or below the
    other's low end). Equal medians with any spread overlap, so the worse one is tied; with no spread
    (one repeat each) it is the strict rule, and the worse one is dominated. Intervals that touch:
    dominated only when the quality is better too."""
    assert _status(classify([_run(1, 100.0, 30.0, 10.0), _run(2, 100.0, 25.0, 10.0)])) == {1: "front", 2: "tied"}
    assert _status(classify([_run(1, 100.0, 30.0), _run(2, 100.0, 25.0)])) == {1: "front", 2: "dominated"}
    touching_worse = classify([_run(1, 100.0, 30.0, 20.0), _run(2, 120.0, 25.0, 20.0)])  # 90..110 and 110..130
    touching_same = classify([_run(1, 100.0, 30.0, 20.0), _run(2, 120.0, 30.0, 20.0)])
    assert _status(touching_worse)[2] == "dominated" and _status(touching_same)[2] == "tied"
    assert dominates_beyond_noise((90, 110, 30), (110, 130, 25)) and not dominates_beyond_noise((90, 110, 30),
                                                                                                 (110, 130, 30))
    twins = classify([_run(1, 100.0, 30.0), _run(2, 100.0, 30.0)])  # identical: the first is the front's
    assert _status(twins) == {1: "front", 2: "tied"} and twins.set_index("id").loc[2, "tied_with"] == 1


def test_one_repeat_is_compared_by_its_value_and_the_interval_is_clipped_to_the_repeats():
    one = _run(2, 100.4, 29.99)  # IQR None: no spread to allow for
    assert cost_interval(one) == (100.4, 100.4)
    assert _status(classify([_run(1, 100.0, 30.0), one])) == {1: "front", 2: "dominated"}
    # against a noisy front run its point still falls inside that run's interval: tied
    assert _status(classify([_run(1, 100.0, 30.0, 15.0), one])) == {1: "front", 2: "tied"}
    clipped = _run(3, 100.0, 30.0, 40.0, latency_min_ms=95.0, latency_max_ms=130.0)
    assert cost_interval(clipped) == (95.0, 120.0)


def test_costs_without_spread_are_exact_and_per_image_scales_the_latency_interval():
    runs = [_run(1, 100.0, 30.0, 15.0, peak_mem_bytes=100, per_image_ms=50.0, n_images=2),
            _run(2, 100.4, 29.99, 15.0, peak_mem_bytes=101, per_image_ms=50.2, n_images=2)]
    assert cost_interval(runs[0], "peak_mem_bytes") == (100, 100)
    assert _status(classify(runs, "peak_mem_bytes")) == {1: "front", 2: "dominated"}  # memory has no noise
    assert cost_interval(runs[0], "per_image_ms") == pytest.approx((46.25, 53.75))
    assert _status(classify(runs, "per_image_ms")) == {1: "front", 2: "tied"}


def test_lower_is_better_quality():
    runs = [_run(1, 100.0, 0.20, 15.0, "lpips"), _run(2, 100.4, 0.21, 15.0, "lpips"),
            _run(3, 200.0, 0.21, 1.0, "lpips"), _run(4, 200.0, 0.19, 1.0, "lpips")]
    judged = classify(runs, y="lpips")
    assert _status(judged) == {1: "front", 2: "tied", 3: "dominated", 4: "front"}
    assert judged.set_index("id").loc[3, "dominated_by"] == 1
    assert _status(classify(runs, y="lpips", higher_is_better=True))[4] == "dominated"  # override: 0.21 wins


def test_runs_missing_a_value_are_left_out_and_the_others_keep_their_index():
    frame = pd.DataFrame([_run(1, 100.0, 30.0, 1.0), _run(2, None, 35.0, 1.0), _run(3, 50.0, math.nan, 1.0),
                          _run(4, 200.0, 31.0, 1.0)], index=[10, 11, 12, 13])
    judged = classify(frame)
    assert list(judged.index) == [10, 13] and _status(judged) == {1: "front", 4: "front"}
    assert classify(pd.DataFrame({"latency_median_ms": [], "psnr": []})).empty
    with pytest.raises(KeyError, match="no column 'nope'"):
        classify(frame, y="nope")


def test_runs_of_other_devices_or_thread_counts_never_tie_with_or_dominate_each_other():
    runs = [_run(1, 100.0, 30.0, 1.0), _run(2, 200.0, 25.0, 1.0),  # one setup: 2 is dominated by 1
            _run(3, 50.0, 40.0, 1.0, threads=4),  # faster and better, but 4 threads: its own front
            _run(4, 100.4, 29.99, 15.0, device_name="CPU y"),  # within run 1's noise, but another machine
            _run(5, 300.0, 20.0, 1.0, threads=4)]
    judged = classify(runs).set_index("id")
    assert judged["front_status"].to_dict() == {1: "front", 2: "dominated", 3: "front", 4: "front", 5: "dominated"}
    assert judged.loc[2, "dominated_by"] == 1 and judged.loc[5, "dominated_by"] == 3
    keys = [key for key, _ in setups(pd.DataFrame(runs))]
    assert len(keys) == 3
    assert [setup_label(k, keys) for k in keys] == ["CPU x · 2 threads", "CPU x · 4 threads", "CPU y · 2 threads"]
    assert setup_label(("m", "CPU x", 1, 32, 32, 1)) == "m · CPU x · 1 thread · 32x32 px · reference #1"


def test_frontier_table_lists_front_and_tied_runs_and_the_dominated_on_request(tmp_path):
    from studio_core.store.store import RunStore

    store = RunStore(tmp_path)
    base = {"model": "emoji-sd", "prompts": ["a"], "seeds": [0], "steps": 4, "sampler": "default", "guidance": 5.0,
            "height": 32, "width": 32, "precision": "fp32", "device": "cpu", "knobs": {}, "warmup": 1, "repeats": 3}
    for i, (ms, iqr, psnr) in enumerate([(100.0, 15.0, 30.0), (100.4, 15.0, 29.99), (200.0, 1.0, 25.0),
                                         (300.0, 1.0, 35.0)]):
        run = store.start_run(base, config_hash=str(i))
        store.finish_run(run, {"latency_median_ms": ms, "latency_iqr_ms": iqr, "psnr": psnr, "reference_id": 1,
                               "device_name": "CPU x", "threads": 2})
    table = frontier_table(store)
    assert list(table["id"]) == [1, 2, 4] and list(table["front_status"]) == ["front", "tied", "front"]
    assert table["setup"].iloc[0] == "emoji-sd · CPU x · 2 threads · 32x32 px · reference #1"
    everything = frontier_table(store, include_dominated=True)
    assert list(everything["id"]) == [1, 2, 3, 4] and everything["front_status"].iloc[2] == "dominated"
    store.close()


def test_the_figure_rings_tied_runs_in_the_front_colour_and_says_why_in_the_hover():
    frame = pd.DataFrame([_run(1, 100.0, 30.0, 15.0), _run(2, 100.4, 29.99, 15.0), _run(3, 200.0, 35.0, 1.0),
                          _run(4, 300.0, 20.0, 1.0)]).assign(steps=4, n_images=1)
    fig = plots.make_frontier_plot(frame, "psnr", "latency_median_ms", color=None)
    front = [t for t in fig.data if t.mode == "lines"][0]
    assert list(front.x) == [100.0, 200.0]  # the line joins the strict front only
    ring = [t for t in fig.data if t.name == plots.TIED_NAME][0]
    assert list(ring.x) == [100.4] and ring.marker.symbol == "circle-open" and ring.hoverinfo == "skip"
    assert ring.marker.color == front.line.color
    assert "4 runs, 2 on the Pareto front, 1 tied with it within the noise" in fig.layout.title.text
    points = [t for t in fig.data if t.mode == "markers"]
    assert sorted(i for t in points for i in t.customdata) == [1, 2, 3, 4]  # the ring is no run point
    hover = dict(zip(points[0].customdata, points[0].hovertext))
    assert "<b>tied with run 1</b> on the front" in hover[2] and "within the latency noise" in hover[2]
    assert "IQR 92.9–107.9 ms vs IQR 92.5–107.5 ms" in hover[2]
    assert "on the Pareto front" in hover[1] and "dominated by run 1 beyond the latency noise" in hover[4]
    assert all(len(line.replace("<b>", "").replace("</b>", "")) <= plots.HOVER_WIDTH
               for text in hover.values() for line in text.split("<br>"))


def test_a_memory_front_leaves_out_older_runs_whose_peak_was_the_whole_process():
    """Since issue 18 a run's peak is above its own baseline (``peak_mem_method`` says so); older rows hold the
    process's peak, which depends on what ran before: mixed in, they would move the front for that reason."""
    from studio_core.study.frontier import comparable

    runs = pd.DataFrame([{"id": 1, "peak_mem_bytes": 900, "peak_mem_method": None},
                         {"id": 2, "peak_mem_bytes": 50, "peak_mem_method": "cpu: process peak RSS above the baseline"},
                         {"id": 3, "peak_mem_bytes": 70, "peak_mem_method": ""}])
    assert list(comparable(runs, "peak_mem_bytes")["id"]) == [2]
    assert list(comparable(runs, "latency_median_ms")["id"]) == [1, 2, 3]  # other costs: every run
    assert comparable(runs.drop(columns="peak_mem_method"), "peak_mem_bytes").empty
