"""The studio's Blocks app without a server: endpoints, widgets from the registry, handlers on a tiny pipeline."""

from pathlib import Path

import gradio as gr
import pytest

from app.layout import build_demo

ROOT = Path(__file__).resolve().parents[1]
REF = {"sampler": "DPM++ 2M", "steps": 6}
ENDPOINTS = {"build_spec", "generate", "build_sweep", "sweep", "cancel_sweep", "cancel_generation", "plot_frontier",
             "compare_runs", "runs", "export_csv", "run_details", "sweep_grid"}


def _fn(demo, api_name):
    return next(f for f in demo.fns.values() if f.api_name == api_name)


def _widget_values(demo, fn, **by_elem_id):
    """Each input's initial value, with some replaced by elem_id (as if typed into the page)."""
    return [by_elem_id.get(c.elem_id, c.value) for c in fn.inputs]


@pytest.fixture
def tiny_demo(tmp_path, tiny_pipeline_dir):
    demo = build_demo(str(tiny_pipeline_dir), tmp_path / "study", reference=REF)
    yield demo
    demo.studio.store.close()


def test_endpoints_are_named_and_measurements_pass_the_device_queue(tiny_demo):
    named = {f.api_name for f in tiny_demo.fns.values() if f.api_visibility == "public"}
    assert named == ENDPOINTS
    for name in ("generate", "sweep"):  # no gradio limit: the handler admits or refuses at once
        fn = _fn(tiny_demo, name)
        assert fn.concurrency_id == "gpu" and fn.concurrency_limit is None
    assert tiny_demo.studio.service.device.limit == 4  # then one at a time on the device lock (tests/test_serving.py)
    assert tiny_demo._queue.max_size == 32  # reads queue beside a measurement instead of waiting forever
    assert tiny_demo.studio.service._engine is None  # the engine (and torch) comes with the first run


def test_widgets_come_from_the_registry_and_a_new_knob_reaches_the_engine(tmp_path, tiny_pipeline_dir, dummy_knob):
    demo = build_demo(str(tiny_pipeline_dir), tmp_path / "study", reference=REF)
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {"setting-steps", "setting-height", "setting-width", "setting-sampler", "setting-timestep_spacing",
            "setting-precision", "setting-guidance", "use-dummy", "setting-knobs-dummy-interval",
            "setting-knobs-dummy-mode", "setting-knobs-dummy-note"} <= ids
    fn = _fn(demo, "build_spec")
    values = _widget_values(demo, fn, **{"use-dummy": True, "setting-knobs-dummy-interval": 3, "setting-steps": 2,
                                         "prompts": "grinning face", "repeats": 1})
    spec = fn.fn(*values)
    assert spec["knobs"] == {"dummy": {"interval": 3, "mode": "fast", "note": None}}
    assert spec["model"] == str(tiny_pipeline_dir) and spec["steps"] == 2 and spec["height"] == 32
    gallery, card, shown = demo.studio.generate(spec)
    assert len(gallery) == 1 and gallery[0][0].shape == (256, 256, 3) and gallery[0][1] == "grinning face · seed 0"
    assert "**Dummy cache interval 3**: interval 3: nothing cached **[did nothing]**" in card
    row = demo.studio.store.runs()[-1]
    assert row["knobs"] == {"dummy": {"interval": 3, "mode": "fast", "note": None}} and row["knobs_inactive"] == "dummy"
    # the form's one-line summary names the ticked knob by its label; it sits in a group of its own
    active = next(f for f in demo.fns.values() if [o.elem_id for o in f.outputs] == ["active-knobs"])
    assert active.fn(*_widget_values(demo, active, **{"use-dummy": True, "setting-knobs-dummy-interval": 3})) == (
        "**Active:** Dummy cache interval 3")
    assert "group-other-knobs" in ids
    # pinned as the baseline, the first run is what the next run's card compares with
    _, card, second = demo.studio.generate(spec, shown)
    assert second == shown + 1 and f"Against the baseline**, run {shown} (" in card and "×** the baseline's latency" in card
    assert "none pinned" in demo.studio.shown_card(second, None)
    demo.studio.store.close()


@pytest.mark.parametrize("change, message", [
    ({"setting-steps": 0}, "steps=0 is not allowed: a whole number from 1 to 1000"),
    ({"prompts": "  \n "}, "prompts=[] is not allowed: at least one prompt"),
    ({"seeds": "one"}, "seeds='one' is not allowed"),
    ({"setting-height": 30}, "height=30 is not allowed: a multiple of"),
    ({"model": "/no/such/folder"}, "model folder not found"),
])
def test_bad_input_is_a_readable_error_before_any_work(tiny_demo, change, message):
    fn = _fn(tiny_demo, "build_spec")
    with pytest.raises(gr.Error, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        fn.fn(*_widget_values(tiny_demo, fn, **change))
    assert "Traceback" not in str(err.value)
    assert tiny_demo.studio.store.db["runs"].count == 0


def test_sweep_estimate_before_the_first_run_is_unknown_then_grows_from_history(tiny_demo, tiny_pipeline_dir):
    studio = tiny_demo.studio
    base = {"model": str(tiny_pipeline_dir), "prompts": ["red heart"], "seeds": [0], "guidance": 2.0, "repeats": 1}
    sweep = {"name": "t", "base": base, "grid": {"steps": [2, 4]}, "reference": REF}
    assert "**2 runs** (2)" in studio.estimate(sweep) and "unknown until the first run" in studio.estimate(sweep)
    studio.generate({**base, "steps": 3})
    text = studio.estimate(sweep)
    assert "estimated **" in text and "per image-step" in text
    outputs = list(studio.run_sweep(sweep, False, None))
    assert "Sweep 1 finished" in outputs[-1][1] and outputs[-1][0].count("data-sweep-index") == 2
    assert "already finished (sweep 1)" in studio.estimate(sweep)
    again = list(studio.run_sweep(sweep, False, None))[-1]  # a finished sweep shows its grid, runs nothing
    assert "0 runs now" in again[1] and "already complete" in again[1]
