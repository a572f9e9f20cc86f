"""Pareto fronts on hand-checkable points."""

import pandas as pd
import pytest

from studio_core.study.frontier import pareto_front


def _ids(front):
    return list(front["id"])


def test_front_keeps_only_undominated_points_sorted_by_cost():
    runs = [
        {"id": 1, "latency_median_ms": 10, "psnr": 20},
        {"id": 2, "latency_median_ms": 20, "psnr": 25},
        {"id": 3, "latency_median_ms": 15, "psnr": 18},   # dominated by 1 (slower and worse)
        {"id": 4, "latency_median_ms": 30, "psnr": 24},   # dominated by 2
        {"id": 5, "latency_median_ms": 40, "psnr": 30},
        {"id": 6, "latency_median_ms": 5, "psnr": None},  # no metric: left out
    ]
    assert _ids(pareto_front(runs, "latency_median_ms", "psnr")) == [1, 2, 5]


def test_lower_is_better_metric_and_ties():
    runs = pd.DataFrame([
        {"id": 1, "peak_mem_bytes": 100, "lpips": 0.3},
        {"id": 2, "peak_mem_bytes": 100, "lpips": 0.2},  # same cost, better: replaces 1
        {"id": 3, "peak_mem_bytes": 200, "lpips": 0.2},  # same quality, costlier: dominated
        {"id": 4, "peak_mem_bytes": 300, "lpips": 0.1},
    ])
    assert _ids(pareto_front(runs, "peak_mem_bytes", "lpips")) == [2, 4]


def test_higher_is_better_override_and_missing_column():
    runs = [{"id": 1, "x": 1, "q": 5}, {"id": 2, "x": 2, "q": 1}]
    assert _ids(pareto_front(runs, "x", "q", higher_is_better=False)) == [1, 2]
    with pytest.raises(KeyError, match="nope"):
        pareto_front(runs, "x", "nope")
    assert pareto_front(pd.DataFrame({"x": [], "q": []}), "x", "q").empty
