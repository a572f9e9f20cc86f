"""diffusers' transformer cache hooks as a knob, on a tiny Flux pipeline built from config (no downloads)."""

import dataclasses
import os

import pytest
import torch
from tiny_flux import build_tiny_flux

import studio_core.knobs.transformer_cache as tc
from studio_core.errors import SpecError
from studio_core.knobs import KNOBS
from studio_core.knobs._mag_ratios import model_key
from studio_core.measure.engine import Engine
from studio_core.spec import RunSpec, model_info, resolve
from studio_core.store.store import RunStore

KNOB = KNOBS["transformer_cache"]
REF = {"steps": 4}  # the reference: the model's own flow-matching solver at 4 steps (cheap)
STEPS = 6

# settings under which each method skips work within 6 steps of the tiny random model
FIRING = {
    "first_block": {"threshold": 0.3},
    "pyramid_attention_broadcast": {},  # diffusers' defaults: every 2nd call for 100 < t < 800
    "faster": {},  # every 2nd call for -1 < t < 681
    "taylorseer": {"cache_interval": 2, "disable_cache_before_step": 1},
    "mag": {"threshold": 1.0},  # ratios calibrated on the tiny model; its random blocks drift a lot
}


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("flux") / "pipe")


@pytest.fixture(scope="module")
def flux_pipe(tiny_flux_dir):
    from studio_core.models import load_pipeline

    return load_pipeline(tiny_flux_dir)


def _latents(pipe, **kwargs):
    return pipe("a red apple", num_inference_steps=STEPS, height=32, width=32, output_type="latent",
                generator=torch.Generator().manual_seed(0), **kwargs).images


def test_settings_defaults_are_diffusers_own():
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )
    from diffusers.hooks.mag_cache import MagCacheConfig

    assert tc.TransformerCacheSettings() == KNOB.parse({})  # every field has a default
    d = tc.DIFFUSERS_DEFAULTS
    assert d["first_block"]["threshold"] == FirstBlockCacheConfig().threshold
    pab = PyramidAttentionBroadcastConfig()
    assert (d["pyramid_attention_broadcast"]["skip_timestep_min"],
            d["pyramid_attention_broadcast"]["skip_timestep_max"]) == pab.spatial_attention_timestep_skip_range
    fc = FasterCacheConfig()
    assert d["faster"]["block_skip_range"] == fc.spatial_attention_block_skip_range
    assert (d["faster"]["skip_timestep_min"], d["faster"]["skip_timestep_max"]) == fc.spatial_attention_timestep_skip_range
    ts = TaylorSeerCacheConfig()
    assert d["taylorseer"] == {"cache_interval": ts.cache_interval, "max_order": ts.max_order,
                               "disable_cache_before_step": ts.disable_cache_before_step}
    mag = {f.name: f.default for f in dataclasses.fields(MagCacheConfig)}
    assert d["mag"] == {k: mag[k] for k in ("threshold", "max_skip_steps", "retention_ratio")}


@pytest.mark.parametrize("raw, field", [
    ({"method": "teacache"}, "method"),
    ({"threshold": -0.1}, "threshold"),
    ({"threshold": "high"}, "threshold"),
    ({"method": "faster", "block_skip_range": 0}, "block_skip_range"),
    ({"method": "pyramid_attention_broadcast", "skip_timestep_min": 900}, "skip_timestep_max"),
    ({"method": "faster", "attention_weight": 1.5}, "attention_weight"),
    ({"method": "taylorseer", "cache_interval": 2.5}, "cache_interval"),
    ({"method": "taylorseer", "disable_cache_before_step": 0}, "disable_cache_before_step"),
    ({"method": "taylorseer", "max_order": 9}, "max_order"),
    ({"method": "mag", "mag_ratios": "1.0, fast"}, "mag_ratios"),
    ({"method": "mag", "retention_ratio": 2}, "retention_ratio"),
    ({"method": "first_block", "cache_interval": 2}, "cache_interval"),  # belongs to taylorseer
    ({"interval": 2}, "interval"),  # not a setting at all
])
def test_bad_settings_raise_spec_error_naming_the_field(raw, field):
    with pytest.raises(SpecError) as err:
        KNOB.parse(raw)
    assert err.value.field == f"knobs.transformer_cache.{field}"


def test_check_model_accepts_flux_and_refuses_a_unet_with_the_reason(tiny_flux_dir, tiny_pipeline_dir):
    flux = model_info(str(tiny_flux_dir))
    assert flux.size_multiple == 8  # 4x VAE, then Flux packs 2x2 latent patches
    for method in tc.METHODS:
        assert KNOB.check_model(flux, KNOB.parse({"method": method})) is None
    assert KNOB.check_model(flux, KNOB.parse({"method": "mag", "mag_ratios": "flux1"})) is None
    unet = model_info(str(tiny_pipeline_dir))
    reason = KNOB.check_model(unet, tc.TransformerCacheSettings())
    assert reason == ("diffusers' cache hooks apply to transformer denoisers (CacheMixin); this model's denoiser "
                      "is UNet2DConditionModel — use DeepCache or cross-attention caching")
    with pytest.raises(SpecError) as err:  # resolve refuses before any work
        resolve(RunSpec(model=str(tiny_pipeline_dir), prompts=("a",), knobs={"transformer_cache": {}}))
    assert err.value.field == "knobs.transformer_cache" and "UNet2DConditionModel" in str(err.value)
    from studio_core.models import load_pipeline

    assert "denoiser is UNet2DConditionModel — use DeepCache" in KNOB.supports(load_pipeline(tiny_pipeline_dir),
                                                                                tc.TransformerCacheSettings())


def test_check_model_names_transformers_without_cache_support(tiny_flux_dir, tmp_path):
    import json

    flux = model_info(str(tiny_flux_dir))
    (tmp_path / "transformer").mkdir()

    def check(cls_name, method):
        (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": cls_name}))
        return KNOB.check_model(dataclasses.replace(flux, path=str(tmp_path)), KNOB.parse({"method": method}))

    assert check("SD3Transformer2DModel", "pyramid_attention_broadcast") == (
        "SD3Transformer2DModel has no CacheMixin, so diffusers' cache hooks cannot be enabled on it")
    assert "no block metadata for ChromaTransformer2DModel" in check("ChromaTransformer2DModel", "first_block")
    assert check("ChromaTransformer2DModel", "pyramid_attention_broadcast") is None  # attention hooks need none


@pytest.mark.parametrize("method", list(FIRING))
def test_each_method_skips_work_changes_the_output_and_undo_restores_it_exactly(flux_pipe, method):
    pipe = flux_pipe
    uncached = _latents(pipe)
    settings = KNOB.parse({"method": method, **FIRING[method]})
    assert KNOB.supports(pipe, settings) is None
    applied = KNOB.apply(pipe, settings)
    try:
        assert pipe.transformer.is_cache_enabled
        with applied.instrument():
            cached = _latents(pipe, **applied.call_kwargs)
        report = applied.report()
        assert torch.equal(_latents(pipe, **applied.call_kwargs), cached)  # state is reset between calls
    finally:
        applied.undo()
    assert not pipe.transformer.is_cache_enabled
    assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in pipe.transformer.modules())
    assert torch.equal(_latents(pipe), uncached)  # undone exactly
    assert not torch.equal(cached, uncached)
    d = report.details
    assert report.active and d["denoiser_calls"] == STEPS and 0 < d["cache_hits"] < STEPS
    assert d["cache_hits"] + d["recomputed"] == STEPS and d["call_marks"][0] == "F"
    assert d["layers_run_fraction_mean"] < 1.0
    assert f"{d['cache_hits']} of {STEPS} denoiser calls reused the cache" in report.summary
    assert "% of linear layers ran on average" in report.summary
    if method == "mag":
        assert d["ratios_source"] == "calibrated on this model" and d["calibration"]["steps"] == 4
        assert len(d["mag_ratios"]) == 4 and d["mag_ratios"][0] == 1.0


def test_mag_calibration_key_is_the_folder_not_the_loaded_object(tiny_flux_dir, flux_pipe):
    """A pipeline loaded again from the same folder reuses the ratios calibrated on the first one; the key and
    the model's defaults come from the folder the pipeline was loaded from, without resolving a spec."""
    from studio_core.models import load_pipeline

    path, fingerprint, defaults = model_key(flux_pipe)
    assert path == str(tiny_flux_dir.resolve()) and defaults["num_inference_steps"] == 4
    assert model_key(load_pipeline(tiny_flux_dir)) == (path, fingerprint, defaults)
    (tiny_flux_dir / "transformer" / "config.json").touch()  # the key follows content, not file times
    assert model_key(flux_pipe)[1] == fingerprint
    weights = next((tiny_flux_dir / "transformer").glob("*.safetensors"))
    original = weights.read_bytes()
    os.utime(weights)  # a touched file with the same bytes is the same model
    assert model_key(flux_pipe)[1] == fingerprint
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # new weights (one bit of the last tensor)
    try:
        assert model_key(flux_pipe)[1] != fingerprint
    finally:
        weights.write_bytes(original)
    assert model_key(flux_pipe)[1] == fingerprint
    in_memory = load_pipeline(tiny_flux_dir)
    in_memory.register_to_config(_name_or_path="")
    assert model_key(in_memory) == ("pipeline@" + str(id(in_memory)), str(id(in_memory.transformer)), {})


def test_faster_cache_never_skips_a_first_call_inside_its_window(flux_pipe):
    """diffusers' FasterCache indexes an empty cache when the first call falls inside its timestep window
    (TypeError); the knob reports the first call of each pipeline call as outside the window."""
    applied = KNOB.apply(flux_pipe, KNOB.parse({"method": "faster", "skip_timestep_max": 1000}))
    try:
        with applied.instrument():  # custom sigmas: the first timestep is 934, inside (-1, 1000)
            flux_pipe("a", sigmas=[0.9, 0.7, 0.5, 0.3], height=32, width=32, output_type="latent",
                      generator=torch.Generator().manual_seed(0))
        report = applied.report()
    finally:
        applied.undo()
    assert report.details["call_marks"] == "FCFC"


def test_a_cache_that_never_fires_is_reported_inactive(flux_pipe):
    applied = KNOB.apply(flux_pipe, KNOB.parse({"method": "first_block", "threshold": 0.0}))
    try:
        with applied.instrument():
            _latents(flux_pipe, **applied.call_kwargs)
        report = applied.report()
    finally:
        applied.undo()
    assert not report.active and report.details["cache_hits"] == 0
    assert "no denoiser call reused the cache" in report.summary


def test_engine_runs_the_flux_folder_and_stores_the_knob_report(tiny_flux_dir, tmp_path):
    engine = Engine(RunStore(tmp_path / "study"))
    try:
        spec = {"model": str(tiny_flux_dir), "prompts": ["a"], "seeds": [0], "steps": 4, "warmup": 1, "repeats": 1}
        plain = engine.run(spec, reference=REF)
        assert plain.status == "ok", plain.error
        assert plain.row["nfe"] == 4 and plain.images.shape == (1, 32, 32, 3)
        fbc = engine.run({**spec, "knobs": {"transformer_cache": {"method": "first_block", "threshold": 0.3}}},
                         reference=REF)
        assert fbc.status == "ok", fbc.error
        report = [k for k in fbc.row["knob_report"] if k["knob"] == "transformer_cache"][0]
        assert report["active"] and fbc.row["knobs_inactive"] is None
        assert report["details"]["denoiser_calls"] == 4 and report["details"]["cache_hits"] >= 1
        assert report["summary"].startswith("first_block threshold 0.3: ")
        assert fbc.row["psnr"] < 100  # scored against the same reference as the plain run
        assert fbc.row["reference_id"] == plain.row["reference_id"]
        pipe = next(iter(engine._pipes.values()))
        assert not pipe.transformer.is_cache_enabled  # undone after the run
        mag = engine.run({**spec, "knobs": {"transformer_cache": {"method": "mag", "threshold": 1.0}}}, reference=REF)
        assert mag.status == "ok", mag.error
        details = [k for k in mag.row["knob_report"] if k["knob"] == "transformer_cache"][0]["details"]
        assert details["ratios_source"] == "calibrated on this model" and len(details["mag_ratios"]) == 4
        idle = engine.run({**spec, "knobs": {"transformer_cache": {"method": "first_block", "threshold": 0.0}}},
                          reference=REF)
        assert idle.status == "ok" and idle.row["knobs_inactive"] == "transformer_cache"
        assert idle.row["psnr"] == plain.row["psnr"]  # nothing skipped: the plain run's images
    finally:
        engine.store.close()
