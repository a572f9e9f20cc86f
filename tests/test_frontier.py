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


def test_runs_of_different_models_devices_sizes_or_references_never_share_a_front(tmp_path):
    """A fast run of another model (or against another reference) must not knock a run off its own front."""
    from studio_core.store.store import RunStore
    from studio_core.study.frontier import frontier_table, setup_label, setups

    store = RunStore(tmp_path)
    base = {"model": "emoji-sd", "prompts": ["a"], "seeds": [0], "steps": 4, "sampler": "default", "guidance": 5.0,
            "height": 32, "width": 32, "precision": "fp32", "device": "cpu", "knobs": {}, "warmup": 1, "repeats": 3}
    points = [("emoji-sd", 32, 1, 100.0, 20.0), ("emoji-sd", 32, 1, 200.0, 25.0),  # one setup: both on its front
              ("other", 32, 2, 50.0, 30.0),  # another model, faster and better: its own front
              ("emoji-sd", 64, 3, 10.0, 40.0),  # another size and reference
              ("emoji-sd", 32, 4, 5.0, 50.0)]  # same model and size, another reference
    for i, (model, size, ref, ms, psnr) in enumerate(points):
        run = store.start_run({**base, "model": model, "height": size, "width": size}, config_hash=str(i))
        store.finish_run(run, {"latency_median_ms": ms, "psnr": psnr, "reference_id": ref, "device_name": "CPU x"})
    front = frontier_table(store)
    assert sorted(front["id"]) == [1, 2, 3, 4, 5] and front["setup"].nunique() == 4
    first = front[front["setup"] == setup_label(setups(store.runs_frame())[0][0])]
    assert list(first["id"]) == [1, 2] and first["setup"].iloc[0] == (
        "emoji-sd · CPU x · threads unknown · 32x32 px · reference #1")  # these runs record no thread count
