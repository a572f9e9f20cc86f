"""The UI's pure parts: widgets from the knob registry -> run specs and sweeps, the tables, and the sweep estimate."""


import pandas as pd
import pytest

from app import tables, widgets
from studio_core.errors import SpecError
from studio_core.knobs import KNOBS
from studio_core.knobs.sampler import SAMPLERS
from studio_core.study import estimate, labels, sweep


# ------------------------------------------------------------------------------------------ widgets
def _settings(name):
    return {s.name: s for s in widgets.knob_settings(KNOBS[name])}


def test_builtin_knobs_map_to_spec_fields_with_types_and_choices():
    steps, res, sampler = _settings("steps"), _settings("resolution"), _settings("sampler")
    assert steps["steps"].kind is int and steps["steps"].builtin and steps["steps"].axis == "steps"
    assert [s.axis for s in res.values()] == ["height", "width"]
    assert sampler["sampler"].choices == ("default", *SAMPLERS)
    assert sampler["timestep_spacing"].optional and sampler["timestep_spacing"].choices == ("leading", "trailing",
                                                                                             "linspace")
    assert _settings("precision")["precision"].choices == ("fp32", "fp16", "bf16")
    assert _settings("guidance")["guidance"].kind is float


def test_a_new_knob_gets_widgets_spec_entries_and_sweep_axes_without_ui_code(dummy_knob):
    s = _settings("dummy")
    assert (s["interval"].kind, s["interval"].default, s["interval"].axis) == (int, 2, "knobs.dummy.interval")
    assert s["mode"].choices == ("fast", "exact") and s["note"].optional and not s["note"].builtin
    axes = widgets.axis_choices()
    assert axes["knobs.dummy.interval"] == (int, False) and axes["steps"] == (int, False) and "seeds" in axes
    values = {"steps": 4, "knobs.dummy.interval": 3.0, "knobs.dummy.mode": "exact", "knobs.dummy.note": ""}
    on = widgets.build_spec("emoji-sd", "red heart", None, "0", values, {"dummy": True})
    assert on["knobs"] == {"dummy": {"interval": 3, "mode": "exact", "note": None}}
    off = widgets.build_spec("emoji-sd", "red heart", None, "0", values, {"dummy": False})
    assert off["knobs"] == {}  # every knob is off until the user turns it on
    sweep = widgets.build_sweep(off, [("knobs.dummy.interval", "2, 4")])
    assert sweep["grid"] == {"knobs.dummy.interval": [2, 4]}


def test_build_spec_from_widget_values():
    values = {"precision": "fp16", "steps": 10.0, "guidance": 3, "height": 32, "width": 32, "sampler": "Euler",
              "timestep_spacing": ""}
    spec = widgets.build_spec(" emoji-sd ", "grinning face\n\n red heart ", widgets.NO_PROMPT_SET, "0, 1", values,
                               {}, warmup=1, repeats=2.0, batch_size=0)
    assert spec == {"model": "emoji-sd", "prompts": ["grinning face", "red heart"], "seeds": [0, 1],
                    "precision": "fp16", "steps": 10, "guidance": 3.0, "height": 32, "width": 32, "sampler": "Euler",
                    "timestep_spacing": None, "flow_shift": None, "knobs": {}, "warmup": 1, "repeats": 2,
                    "device": "auto", "batch_size": None}
    by_set = widgets.build_spec("emoji-sd", "ignored", "emoji-4", "0", {"sampler": None, "steps": None}, {})
    assert by_set["prompt_set"] == "emoji-4" and "prompts" not in by_set
    assert by_set["sampler"] == "default" and by_set["steps"] is None and by_set["precision"] == "fp32"


@pytest.mark.parametrize("text, seeds", [("0", [0]), ("0, 1 2", [0, 1, 2]), ("3-5", [3, 4, 5]), ("", []),
                                         (7.0, [7])])
def test_parse_seeds(text, seeds):
    assert widgets.parse_seeds(text) == seeds


@pytest.mark.parametrize("text, message", [("a", "seeds='a'"), ("1.5", "seeds='1.5'"), ("5-1", "seeds='5-1'")])
def test_bad_seeds_name_the_field(text, message):
    with pytest.raises(SpecError, match=message):
        widgets.parse_seeds(text)


def test_parse_axis_values_types_none_and_errors():
    assert widgets.parse_axis_values("steps", "10, 20 ,", int) == [10, 20]
    assert widgets.parse_axis_values("guidance", "1, 7.5", float) == [1.0, 7.5]
    assert widgets.parse_axis_values("sampler", "DDIM, DPM++ 2M Karras", str) == ["DDIM", "DPM++ 2M Karras"]
    assert widgets.parse_axis_values("timestep_spacing", "none, trailing", str, True) == [None, "trailing"]
    with pytest.raises(SpecError, match="grid.steps='ten'"):
        widgets.parse_axis_values("steps", "10, ten", int)
    with pytest.raises(SpecError, match="distinct values"):
        widgets.parse_axis_values("steps", "10, 10", int)
    with pytest.raises(SpecError, match="comma-separated values"):
        widgets.parse_axis_values("steps", " , ", int)


def test_off_on_a_knob_axis_is_the_knob_left_out():
    assert widgets.parse_axis_values("knobs.deepcache.interval", "off, 3", int) == [sweep.OFF, 3]
    assert widgets.parse_axis_values("knobs.memory.channels_last", "OFF, true, false", bool) == ["off", True, False]
    with pytest.raises(SpecError, match="grid.steps='off'"):  # a run-spec field has no knob to leave out
        widgets.parse_axis_values("steps", "off, 4", int)
    with pytest.raises(SpecError, match="distinct values"):
        widgets.parse_axis_values("knobs.deepcache.interval", "off, 3, off", int)
    assert "off = without DeepCache" in widgets.axis_hint("knobs.deepcache.interval")
    assert "off" not in widgets.axis_hint("steps")
    # the Generate form has DeepCache at N=2, branch 1; the axis sets the interval, or leaves the knob out
    base = {"model": "emoji-sd", "prompts": ["sun"], "seeds": [0], "steps": 4, "sampler": "default",
            "timestep_spacing": None, "batch_size": None, "knobs": {"deepcache": {"interval": 2, "branch": 1}}}
    data = widgets.build_sweep(base, [("knobs.deepcache.interval", "off, 3")])
    assert data["grid"] == {"knobs.deepcache.interval": ["off", 3]}
    assert data["base"]["knobs"] == {"deepcache": {"branch": 1}}
    assert "timestep_spacing" not in data["base"] and "batch_size" not in data["base"]  # unset: the spec's own
    cells = sweep.sweep_from_dict(data)
    assert [s.knobs for s in cells.specs] == [{}, {"deepcache": {"branch": 1, "interval": 3}}]


def test_build_sweep_overrides_the_base_and_checks_axes():
    base = {"model": "emoji-sd", "prompts": ["sun"], "seeds": [0], "steps": 50, "sampler": "default", "knobs": {}}
    sweep = widgets.build_sweep(base, [("steps", "4, 8"), (None, ""), ("seeds", "0, 1")], name="", question="q?",
                                 reference={"sampler": "DPM++ 2M", "steps": 10})
    assert sweep["grid"] == {"steps": [4, 8], "seeds": [0, 1]}
    assert "steps" not in sweep["base"] and "seeds" not in sweep["base"] and sweep["base"]["sampler"] == "default"
    assert sweep["name"] == "ui sweep: steps x seeds" and sweep["question"] == "q?"
    assert sweep["reference"] == {"sampler": "DPM++ 2M", "steps": 10}
    with pytest.raises(SpecError, match="axis='nope'"):
        widgets.build_sweep(base, [("nope", "1")])
    with pytest.raises(SpecError, match="each axis at most once"):
        widgets.build_sweep(base, [("steps", "1"), ("steps", "2")])
    with pytest.raises(SpecError, match="at least one axis"):
        widgets.build_sweep(base, [(None, "")])


def test_axis_hints_say_what_values_an_axis_takes():
    assert "DPM++ 2M" in widgets.axis_hint("sampler")
    assert widgets.axis_hint("steps").startswith("whole numbers")
    assert "none =" in widgets.axis_hint("timestep_spacing")


def test_axes_are_named_for_people():
    assert labels.axis_label("knobs.deepcache.interval") == "DeepCache: interval"
    assert labels.axis_label("knobs.cross_attention_cache.gate_step") == "Cross-attention caching: gate step"
    assert [labels.axis_label(a) for a in ("steps", "sampler", "timestep_spacing", "height", "batch_size")] == [
        "steps", "sampler", "timestep spacing", "height", "batch size"]
    assert not [a for a in widgets.axis_choices() if "knobs." in labels.axis_label(a) or "_" in labels.axis_label(a)]
    assert [labels.axis_value("knobs.deepcache.interval", v) for v in ("off", 3, None, 0.5, True)] == [
        "off", "3", "default", "0.5", "true"]
    assert labels.axis_value("knobs", {}) == "no knobs"
    assert labels.axis_value("knobs", {"deepcache": {}}) == "DeepCache N=3"


# ------------------------------------------------------------------------------------------ tables and estimate
def _row(**kw):
    row = {"id": 1, "status": "ok", "model": "emoji-sd", "model_path": "/m", "prompts": '["sun", "pizza"]',
           "seeds": "[0, 1]", "n_images": 4, "steps": 10, "sampler": "DDIM", "guidance": 3.0, "precision": "fp32",
           "height": 32, "width": 32, "knobs": "{}", "knobs_label": "", "warmup": 1, "repeats": 3,
           "latency_median_ms": 1000.0,
           "denoise_ms": 800.0, "cold_ms": 1000.0, "load_ms": 0.0, "per_image_ms": 250.0,
           "created_at": "2026-01-01T00:00:00.000+00:00", "finished_at": "2026-01-01T00:00:04.500+00:00"}
    row.update(kw)
    return row


def test_estimate_uses_past_runs_breakdown_per_image_step_and_run_overhead():
    history = pd.DataFrame([_row()])
    spec = {"prompts": ["sun"], "seeds": [0, 1], "steps": 20, "warmup": 1, "repeats": 1, "height": 32, "width": 32}
    seconds, basis = estimate.estimate_seconds(history, [spec], "/m")
    # 800 ms / (10 steps x 4 images) = 20 ms per image-step; (1000 - 800) / 4 = 50 ms per image outside;
    # overhead = 4500 ms wall - 4 passes x 1000 ms = 500 ms per run
    per_pass = 2 * (50 + 20 * 20)
    assert seconds == pytest.approx((per_pass * 2 + 500) / 1000)
    assert "20.00 ms per image-step" in basis and "500 ms per run" in basis
    with_ref, basis = estimate.estimate_seconds(history, [spec], "/m", reference_steps=100)
    assert with_ref == pytest.approx(seconds + 2 * (50 + 100 * 20) / 1000) and "1 new reference" in basis
    assert estimate.estimate_seconds(history, [spec], "/other") == (None, "unknown until the first run of this model")
    assert estimate.estimate_seconds(pd.DataFrame(), [spec])[0] is None
    # a distribution set is one more pass over its images; a past run's set is not counted as its overhead
    with_dist, basis = estimate.estimate_seconds(history, [{**spec, "distribution": 100}], "/m")
    assert with_dist == pytest.approx(seconds + 100 * (50 + 20 * 20) / 1000) and "100 distribution-set images" in basis
    past = pd.DataFrame([{**_row(), "dist_gen_ms": 30000.0, "dist_score_ms": 1000.0}])
    past["finished_at"] = (pd.Timestamp(_row()["finished_at"]) + pd.Timedelta(seconds=31)).isoformat()
    assert estimate.estimate_seconds(past, [spec], "/m")[0] == pytest.approx(seconds)


def test_format_duration():
    assert [estimate.format_duration(s) for s in (None, 45, 210, 7560)] == ["unknown", "45 s", "3.5 min", "2.1 h"]


def test_run_filters_skip_all_and_name_runs_without_a_prompt_set():
    assert tables.run_filters(tables.ALL, None, "") == {}
    assert tables.run_filters("ok", "3", "emoji-sd") == {"status": "ok", "sweep_id": 3, "model": "emoji-sd"}
    assert tables.run_filters(prompt_set=tables.CUSTOM_PROMPTS) == {"prompt_set": None}


def test_filter_choices_come_from_the_log():
    frame = pd.DataFrame([_row(id=1, prompt_set="emoji-4"), _row(id=2, prompt_set=None, status="failed"),
                          _row(id=3, prompt_set=None, model="/x")])
    sweeps = [{"id": 1, "name": "a", "status": "done", "n_total": 2}, {"id": 2, "name": "b", "status": "running",
                                                                       "n_total": 4}]
    models, sets, sweep_items, runs = tables.choices_from(frame["model"].tolist(), frame["prompt_set"].tolist(),
                                                         sweeps, frame[frame["status"] == "ok"])
    assert models == [tables.ALL, "/x", "emoji-sd"] and sets == [tables.ALL, "emoji-4", tables.CUSTOM_PROMPTS]
    assert sweep_items == [(tables.ALL, tables.ALL), ("2: b (running, 4 runs)", "2"), ("1: a (done, 2 runs)", "1")]
    assert [i for _, i in runs] == [3, 1]  # ok runs only, newest first


def test_run_label_and_choices():
    assert tables.run_label(_row(id=12, knobs='{"deepcache": {"interval": 3}}')) == \
        "12: DDIM · DeepCache N=3 · 10 steps · guidance 3 · 32×32"
    assert tables.run_label(_row(id=3, status="failed", model="/x/tiny")) == \
        "3: DDIM · 10 steps · guidance 3 · 32×32 · tiny (failed)"
    frame = pd.DataFrame([_row(id=1), _row(id=2)])
    assert [i for _, i in tables.run_choices(frame)] == [2, 1]


def test_image_pairs_are_prompt_major():
    assert tables.image_pairs(_row()) == [("sun", 0), ("sun", 1), ("pizza", 0), ("pizza", 1)]
    assert tables.image_pairs({"prompts": ["a"], "seeds": [5]}) == [("a", 5)]


def test_differing_settings_read_like_settings_not_json():
    a = _row(id=1, knobs='{"deepcache": {"interval": 2}}', sampler="default", scheduler_class="DDIMScheduler")
    b = _row(id=9, steps=20, seeds="[0, 1, 2, 3]", prompts='["sun"]', knobs="{}", sampler="DDIM",
             knobs_inactive="sampler", scheduler_class="DDIMScheduler")
    diff = tables.differing_settings([a, b])
    assert diff.to_dict("records") == [{"setting": "prompts", "run 1": "sun; pizza", "run 9": "sun"},
                                       {"setting": "seeds", "run 1": "0, 1", "run 9": "0–3"},
                                       {"setting": "steps", "run 1": "10", "run 9": "20"},
                                       {"setting": "knobs", "run 1": "DeepCache N=2", "run 9": "none"}]
    # "default" and "DDIM" on a DDIM model read the same ("DDIM (model default)"), so they do not differ
    assert tables.seeds_text([0, 1, 2, 5, 7, 8]) == "0–2, 5, 7, 8"


def test_metric_deltas_have_units_fixed_decimals_and_words():
    a = _row(id=1, psnr=30.0, ssim=0.9, peak_mem_bytes=200 * 2**20, latency_iqr_ms=10.0, fidelity_top1=0.5)
    b = _row(id=2, steps=20, latency_median_ms=12790.0, psnr=29.58, ssim=0.9001, peak_mem_bytes=202 * 2**20,
             latency_iqr_ms=10.0, per_image_ms=1370 / 4, fidelity_top1=0.75)
    deltas = tables.metric_deltas([a, b]).set_index("metric")
    assert deltas.loc["median latency", "run 1"] == "1,000 ms"
    assert deltas.loc["median latency", "run 2"] == "12,790 ms (+11,790 ms, 12.8× slower)"  # never 1.179e+04
    assert deltas.loc["per image", "run 2"] == "342.5 ms (+92.5 ms, +37%, worse)"
    assert deltas.loc["PSNR", "run 2"] == "29.58 dB (−0.42 dB, worse)"
    assert deltas.loc["SSIM", "run 2"] == "0.900 (same)"  # never "-0% worse"
    assert deltas.loc["peak memory", "run 2"] == "202.0 MiB (+2.0 MiB, +1%, worse)"
    assert deltas.loc["fidelity top-1", "run 2"] == "75% (+25 pts, better)"
    assert deltas.loc["latency IQR", "run 2"] == "10.0 ms (same)"
    assert "LPIPS" not in deltas.index  # no run has it
    faster = tables.metric_deltas([a, {**a, "id": 3, "latency_median_ms": 625.0}]).set_index("metric")
    assert faster.loc["median latency", "run 3"] == "625.0 ms (−375.0 ms, 1.6× faster)"
    noisy = tables.metric_deltas([{**a, "latency_iqr_ms": 50.0}, {**a, "id": 2, "latency_median_ms": 1040.0}])
    assert noisy.set_index("metric").loc["median latency", "run 2"] == "1,040 ms (+40.0 ms, within IQR)"
    assert noisy.set_index("metric").loc["per image", "run 2"] == "250.0 ms (same)"
    assert not any("e+" in v or "-0%" in v or "nan" in v for v in deltas.to_numpy().ravel())


def test_table_view_puts_key_columns_first_titled_for_people_and_drops_empty_ones():
    frame = pd.DataFrame([
        _row(id=1, peak_mem_bytes=3 * 2**20, psnr=30.123, ssim=0.9, latency_iqr_ms=400.0, prompt_set=None,
             knobs='{"deepcache": {"interval": 2}}', sweep_id=2.0, error=None),
        _row(id=2, peak_mem_bytes=2**20, psnr=float("nan"), ssim=float("nan"), latency_iqr_ms=5.0, prompt_set=None,
             sampler="default", scheduler_class="DDIMScheduler", sweep_id=float("nan"), status="failed",
             error="out of memory")])
    view = tables.table_view(frame)
    assert list(view.columns)[:9] == ["run", "configuration", "steps", "median latency (ms)", "latency IQR (ms)",
                                      "timing noise", "PSNR (pooled, dB)", "SSIM", "peak memory (MiB)"]
    assert list(view.columns)[9:12] == ["status", "error", "model"] and list(view.columns)[-2:] == ["created",
                                                                                                       "sweep"]
    assert "prompt set" not in view.columns  # blank for every run shown
    assert list(view["run"]) == [2, 1] and list(view["peak memory (MiB)"]) == [1.0, 3.0]
    assert list(view["configuration"]) == ["DDIM (model default)", "DDIM · DeepCache N=2"]
    assert list(view["timing noise"]) == ["", "noisy (IQR 40% of median)"]
    assert list(view["error"]) == ["out of memory", ""]
    assert view["created"][0] == "2026-01-01 00:00:00" and view["PSNR (pooled, dB)"][1] == 30.12
    cells = [str(v) for v in view.select_dtypes(exclude="number").to_numpy().ravel()]
    assert not any(c in ("nan", "None") or "{" in c for c in cells)


def test_split_values_reads_the_generate_widgets_in_order(dummy_knob):
    settings = [s for k in widgets.registry_knobs() for s in widgets.knob_settings(k)]
    values = ["emoji-sd", "sun", None, "0", 1, 3, "auto", None, 0, *range(len(settings)), True]
    parts = widgets.split_values(values, settings, ["dummy"])
    assert parts["model"] == "emoji-sd" and parts["batch_size"] is None and parts["enabled"] == {"dummy": True}
    assert list(parts["values"]) == [s.axis for s in settings]
    assert parts["values"][settings[-1].axis] == len(settings) - 1
    with pytest.raises(ValueError, match="widget values"):
        widgets.split_values(values[:-1], settings, ["dummy"])


def test_optional_knob_settings_blank_means_the_knobs_own_and_bool_text_is_parsed():
    """Optional numbers are text boxes (blank = None, never 0) and optional booleans three-state dropdowns."""
    tc = _settings("transformer_cache")
    assert tc["threshold"].optional and tc["threshold"].kind is float
    assert widgets.coerce(tc["threshold"], "") is None and widgets.coerce(tc["threshold"], "0.2") == 0.2
    ca = _settings("cross_attention_cache")
    assert widgets.coerce(ca["drop_cfg"], "false") is False and widgets.coerce(ca["drop_cfg"], True) is True
    with pytest.raises(SpecError):
        widgets.coerce(ca["drop_cfg"], "maybe")
    spec = widgets.build_spec("emoji-sd", "red heart", None, "0",
                               {"knobs.transformer_cache.method": "first_block", "knobs.transformer_cache.threshold": ""},
                               {"transformer_cache": True})
    assert spec["knobs"]["transformer_cache"]["threshold"] is None
