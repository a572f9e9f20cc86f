"""How runs are named for people: knob labels, the sampler as "model default", configurations, numbers."""

import json
import math

import pytest

from studio_core.knobs import KNOBS
from studio_core.study import labels


def _row(**kw) -> dict:
    base = {"id": 1, "sampler": "default", "scheduler_class": "DDIMScheduler", "precision": "fp32", "knobs": "{}",
            "knobs_inactive": None, "knob_report": "[]", "timestep_spacing": None}
    base.update(kw)
    return base


@pytest.mark.parametrize("knob, settings, expected", [
    ("deepcache", {"interval": 3}, "DeepCache N=3"),
    ("deepcache", {"interval": 5, "branch": 1}, "DeepCache N=5 branch 1"),
    ("token_merging", {"ratio": 0.5}, "ToMe 50%"),
    ("token_merging", {"ratio": 0.3, "max_downsample": 2}, "ToMe 30% down to 1/2"),
    ("cross_attention_cache", {"gate_step": 6}, "T-GATE from step 6"),
    ("quantization", {"scheme": "int8_dynamic"}, "int8 dynamic"),
    ("quantization", {"scheme": "fp8_weight_only", "components": "all"}, "fp8 weight-only (all)"),
    ("memory", {"channels_last": False, "vae_tiling": True}, "VAE tiling"),
    ("component_precision", {"vae": "bf16"}, "vae bf16"),
    ("compile", {"mode": "max-autotune"}, "compile (max-autotune)"),
    ("attention_backend", {"backend": "flash"}, "SDPA flash"),
    ("transformer_cache", {"method": "first_block", "threshold": 0.1}, "FBCache 0.1"),
])
def test_each_knob_names_its_settings_as_people_write_them(knob, settings, expected):
    k = KNOBS[knob]
    assert k.label(k.parse(settings)) == expected


def test_every_registered_knob_has_a_label_without_raw_values():
    for knob in KNOBS.values():
        try:
            settings = knob.Settings()
        except TypeError:  # built-in knobs: settings without defaults
            continue
        text = knob.label(settings)
        assert text and not any(bad in text for bad in ("{", "None", "nan", "_")), (knob.name, text)


def test_the_models_own_sampler_reads_as_model_default_whether_asked_by_name_or_not():
    assert labels.sampler_text(_row()) == "DDIM (model default)"
    named = _row(sampler="DDIM", knob_report=json.dumps([{"knob": "sampler", "active": False}]))
    assert labels.sampler_text(named) == "DDIM (model default)"
    old_row = _row(sampler="DDIM", knob_report=None, knobs_inactive="sampler")  # recorded before reports said so
    assert labels.sampler_text(old_row) == "DDIM (model default)"
    other = _row(sampler="DPM++ 2M", scheduler_class="DPMSolverMultistepScheduler",
                 knob_report=[{"knob": "sampler", "active": True}])
    assert labels.sampler_text(other) == "DPM++ 2M"
    assert labels.sampler_text(_row(scheduler_class="FlowMatchEulerDiscreteScheduler")) == \
        "Euler (flow, model default)"


def test_configuration_joins_sampler_precision_and_knobs_and_skips_the_sampler_from_did_nothing():
    row = _row(sampler="DPM++ 2M", precision="fp16", knob_report=[{"knob": "sampler", "active": True}],
               knobs=json.dumps({"token_merging": {"ratio": 0.5}, "deepcache": {"interval": 3}}),
               knobs_inactive="sampler, deepcache")
    assert labels.configuration(row) == "DPM++ 2M · fp16 · DeepCache N=3 · ToMe 50%"
    assert labels.inactive_knobs(row) == ["DeepCache N=3"]
    assert labels.knobs_text(_row(), empty="no knobs") == "no knobs"
    assert labels.knobs_text({"deepcache": {"interval": 2}}) == "DeepCache N=2"
    assert labels.configuration({"sampler": "Euler", "precision": "fp32"}) == "Euler"  # a row without knobs


def test_numbers_never_read_nan_or_none():
    for bad in (None, math.nan, "", "abc", math.inf):
        assert labels.ms(bad) == labels.mib(bad) == labels.number(bad) == "n/a"
    assert labels.ms(3.14159) == "3.14" and labels.ms(123.456) == "123.5" and labels.ms(12345.6) == "12,346"
    assert labels.mib(3 * 2**20) == "3.0 MiB" and labels.number(0.5, 1, "dB") == "0.5 dB"


def test_a_timing_is_noisy_when_its_iqr_is_over_a_quarter_of_its_median():
    assert labels.noisy({"latency_median_ms": 100, "latency_iqr_ms": 10, "repeats": 5}) is None
    text = labels.noisy({"latency_median_ms": 100, "latency_iqr_ms": 40, "repeats": 5})
    assert text and "40%" in text and "25%" in text
    assert labels.noisy({"latency_median_ms": 100, "latency_iqr_ms": 90, "repeats": 1}) is None  # no spread yet
