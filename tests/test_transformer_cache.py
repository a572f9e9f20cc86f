"""diffusers' transformer cache hooks as a knob, on a tiny Flux pipeline built from config (no downloads), and on
an emoji-flux-shaped one (the tiny training recipe: no guidance embedding, so guidance is true CFG with two
transformer calls per step) with MagCache's ratios shipped in the model folder."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from tiny_flux import build_tiny_flux

import studio_core.knobs.transformer_cache as tc
from studio_core.errors import KnobUnsupported, ModelLoadError, SpecError
from studio_core.knobs import KNOBS
from studio_core.knobs._mag_ratios import (
    SHIPPED_FILE,
    calibrate_mag_ratios,
    measure_mag_ratios,
    model_key,
    ratios_for,
    write_mag_ratios,
)
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


# ------------------------------------------------------------------------------------------ emoji-flux-shaped, true CFG
CFG_STEPS = 8
CFG = {"num_inference_steps": CFG_STEPS, "guidance_scale": 3.5, "height": 64, "width": 64}
PAIRS = [("grinning face", 0), ("pizza", 1)]
# settings under which each method skips work within 8 steps of the tiny-recipe model: diffusers' defaults,
# but for First Block Cache, whose default 0.05 never fires on it (nor on the tiny model above)
CFG_FIRING = {"first_block": {"threshold": 0.2}, "pyramid_attention_broadcast": {}, "faster": {}, "taylorseer": {},
              "mag": {}}


@pytest.fixture(scope="session")
def emoji_flux_dir(tiny_emoji_flux):
    """emoji-flux's shapes family, trained for the tiny recipe's few steps (guidance_embeds=False: true CFG)."""
    return tiny_emoji_flux


@pytest.fixture(scope="module")
def emoji_flux_pipe(emoji_flux_dir):
    from studio_core.models import load_pipeline

    return load_pipeline(emoji_flux_dir)


@pytest.fixture(scope="module")
def shipped_dir(emoji_flux_dir, tmp_path_factory):
    """A copy of the emoji-flux-shaped folder with MagCache's ratios shipped in it (6 steps, two prompts)."""
    folder = tmp_path_factory.mktemp("shipped") / "pipe"
    shutil.copytree(emoji_flux_dir, folder)
    write_mag_ratios(folder, prompts=[p for p, _ in PAIRS], seeds=(0, 1), steps=6, made_by="tests")
    return folder


def _cached_run(pipe, raw: dict, **call):
    """Images and knob report of one pipeline pass through ``generate`` (true CFG, as the engine runs it)."""
    from studio_core.measure.generation import generate

    settings = KNOB.parse(raw)
    assert KNOB.supports(pipe, settings) is None
    applied = KNOB.apply(pipe, settings)
    try:
        with applied.instrument():
            images = generate(pipe, PAIRS, **{**CFG, **call}, **applied.call_kwargs)
        return images, applied.report()
    finally:
        applied.undo()


@pytest.mark.parametrize("method", tc.METHODS)
def test_every_method_reports_hits_on_emoji_flux_with_true_cfg(emoji_flux_pipe, method):
    """Two calls per step (cond, uncond): each branch reuses its cache, and the report counts every call."""
    images, report = _cached_run(emoji_flux_pipe, {"method": method, **CFG_FIRING[method]})
    d = report.details
    assert report.active and d["denoiser_calls"] == 2 * CFG_STEPS and d["calls_per_step"] == 2
    assert 0 < d["cache_hits"] < 2 * CFG_STEPS and "cond / uncond" in d["note"]
    cond, uncond = d["call_marks"][0::2], d["call_marks"][1::2]
    assert "C" in cond and "C" in uncond, d["call_marks"]  # both branches cached, each against itself
    assert f"{d['cache_hits']} of {2 * CFG_STEPS} denoiser calls reused the cache" in report.summary
    assert not emoji_flux_pipe.transformer.is_cache_enabled


def test_pab_reuses_each_guidance_branchs_own_attention(emoji_flux_pipe):
    """diffusers' PAB keeps one state per layer; with cond and uncond as separate calls the uncond call would
    return the attention output the cond call just computed. The knob gives each branch its own state."""
    from studio_core.measure.generation import generate

    layer = dict(emoji_flux_pipe.transformer.named_modules())[tc._attention_layers(emoji_flux_pipe.transformer,
                                                                                    "pyramid_attention_broadcast")[0]]
    outputs = []
    handle = layer.register_forward_hook(lambda m, a, out: outputs.append(out[0].clone()))
    try:
        _images, report = _cached_run(emoji_flux_pipe, {"method": "pyramid_attention_broadcast"})
    finally:
        handle.remove()
    marks = report.details["call_marks"]
    skipped = [k for k, mark in enumerate(marks) if mark == "C"]
    assert skipped and all(k >= 2 for k in skipped)
    for k in skipped:  # the same branch's output of the step before, not the other branch's of this step
        assert torch.equal(outputs[k], outputs[k - 2]) and not torch.equal(outputs[k], outputs[k - 1])
    outputs.clear()
    plain = generate(emoji_flux_pipe, PAIRS, **CFG)
    assert not outputs and plain.shape == (2, 64, 64, 3)  # the forward hook is gone with the knob's hooks


def test_mag_calibration_measures_each_guidance_branch_and_averages_the_images(emoji_flux_pipe):
    by_context = measure_mag_ratios(emoji_flux_pipe, 6, PAIRS, 64, 64, 3.5)
    assert set(by_context) == {"cond", "uncond"} and all(len(r) == 6 and r[0] == 1.0 for r in by_context.values())
    assert by_context["cond"] != by_context["uncond"]
    alone = [measure_mag_ratios(emoji_flux_pipe, 6, [pair], 64, 64, 3.5)["cond"] for pair in PAIRS]
    mean = [sum(values) / len(values) for values in zip(*alone)]
    assert by_context["cond"] == pytest.approx(mean, rel=1e-4)  # one batched call = the mean over the images
    assert calibrate_mag_ratios(emoji_flux_pipe, 6, 64, 64, 3.5, pairs=PAIRS) == by_context["cond"]
    assert not hasattr(emoji_flux_pipe.transformer, "_diffusers_hook") or \
        not emoji_flux_pipe.transformer._diffusers_hook.hooks  # the context watcher is removed


def test_shipped_ratios_file_says_how_they_were_made(shipped_dir, emoji_flux_pipe):
    data = json.loads((shipped_dir / SHIPPED_FILE).read_text())
    assert data["steps"] == 6 and len(data["ratios"]) == 6 and data["ratios"][0] == 1.0
    assert (data["height"], data["width"], data["guidance_scale"]) == (64, 64, 3.5)
    assert data["prompts"] == [p for p, _ in PAIRS] and data["seeds"] == [0, 1] and data["made_by"] == "tests"
    assert data["scheduler"] == "FlowMatchEulerDiscreteScheduler" and data["scheduler_config"]["use_dynamic_shifting"]
    assert data["dtype"] == "float32" and set(data["ratios_by_context"]) == {"cond", "uncond"}
    assert data["ratios"] == data["ratios_by_context"]["cond"]
    assert data["model_fingerprint"] == model_info(str(shipped_dir)).fingerprint  # the file is not a loader file
    pairs = [(p, s) for p, _ in PAIRS for s in (0, 1)]
    assert data["ratios"] == pytest.approx(calibrate_mag_ratios(emoji_flux_pipe, 6, 64, 64, 3.5, pairs=pairs),
                                           abs=2e-6)  # the same weights in another folder: the same curve


def test_shipped_ratios_are_the_default_and_the_report_names_them(shipped_dir):
    from studio_core.models import load_pipeline

    pipe = load_pipeline(shipped_dir)
    shipped = json.loads((shipped_dir / SHIPPED_FILE).read_text())["ratios"]
    _images, report = _cached_run(pipe, {"method": "mag", "threshold": 0.2}, num_inference_steps=6)
    d = report.details
    assert d["ratios_source"] == "shipped with the model (mag_ratios.json)" and d["mag_ratios"] == pytest.approx(shipped, abs=1e-5)
    assert d["shipped"]["steps"] == 6 and d["shipped"]["prompts"] == 2 and "mag_ratios_interpolated" not in d
    assert "(the model's shipped ratios)" in report.summary and "interpolated" not in report.summary
    _images, report = _cached_run(pipe, {"method": "mag", "mag_ratios": "shipped"})  # 8 steps: interpolated
    assert report.details["mag_ratios_interpolated"] == {"from": 6, "to": 8, "how": "nearest (diffusers)"}
    assert report.summary.endswith("; ratios interpolated (nearest) from 6 to 8 steps")
    _images, report = _cached_run(pipe, {"method": "mag", "mag_ratios": "calibrate"})
    assert report.details["ratios_source"] == "calibrated on this model"


def test_shipped_ratios_that_do_not_fit_the_run_are_calibrated_instead(shipped_dir):
    """Another scheduler, other weights, or other calibration steps: unset ratios are calibrated (and the report
    says why the file was not used); ratios asked for as 'shipped' are refused with the same reason."""
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    from studio_core.models import load_pipeline

    pipe = load_pipeline(shipped_dir)
    own = pipe.scheduler
    shipped = KNOB.parse({"method": "mag", "mag_ratios": "shipped"})
    cases = [(DPMSolverMultistepScheduler.from_config(own.config, use_flow_sigmas=True,
                                                      prediction_type="flow_prediction"),
              "measured with FlowMatchEulerDiscreteScheduler; this run uses DPMSolverMultistepScheduler"),
             (FlowMatchEulerDiscreteScheduler.from_config(own.config, shift=2.0),
              "measured with another FlowMatchEulerDiscreteScheduler configuration (shift differ)")]
    try:
        for scheduler, why in cases:
            pipe.scheduler = scheduler
            ratios, info = ratios_for(pipe, None)
            assert info["ratios_source"] == "calibrated on this model" and why in info["shipped_not_used"]
            assert why in KNOB.supports(pipe, shipped)
            with pytest.raises(KnobUnsupported, match="mag_ratios 'shipped' cannot be used"):
                ratios_for(pipe, "shipped")
    finally:
        pipe.scheduler = own
    _ratios, info = ratios_for(pipe, None, calibration_steps=4)
    assert "calibration_steps 4 asked; mag_ratios.json holds ratios for 6" in info["shipped_not_used"]
    path = shipped_dir / SHIPPED_FILE
    original = path.read_text()
    try:
        path.write_text(json.dumps({**json.loads(original), "model_fingerprint": "0" * 16}))
        _ratios, info = ratios_for(pipe, None)
        assert "measured on other weights (fingerprint 0000000000000000" in info["shipped_not_used"]
        assert "other weights" in KNOB.supports(pipe, shipped)
    finally:
        path.write_text(original)
    assert ratios_for(pipe, None)[1]["ratios_kind"] == "shipped"


@pytest.mark.parametrize("content, why", [
    ("{not json", "is not readable JSON"),
    ("[1.0, 1.1]", "must hold a JSON object"),
    ('{"ratios": [1.0, 1.1]}', "'steps' must be a whole number (found null)"),
    ("ratios=-1", "'ratios' must be positive numbers"),
    ("steps=3", "'ratios' has 6 values for 'steps' 3; it needs one per step"),
])
def test_a_malformed_shipped_file_is_a_clear_error(shipped_dir, tmp_path, content, why):
    folder = tmp_path / "pipe"
    shutil.copytree(shipped_dir, folder)
    data = json.loads((folder / SHIPPED_FILE).read_text())
    if content == "ratios=-1":
        content = json.dumps({**data, "ratios": [1.0, -1.0, 1.0, 1.0, 1.0, 1.0]})
    elif content == "steps=3":
        content = json.dumps({**data, "steps": 3})
    (folder / SHIPPED_FILE).write_text(content)
    info = model_info(str(folder))
    reason = KNOB.check_model(info, KNOB.parse({"method": "mag"}))
    assert reason.startswith(str(folder / SHIPPED_FILE)) and why in reason
    with pytest.raises(SpecError) as err:  # refused before loading anything, naming the knob and the file
        resolve(RunSpec(model=str(folder), prompts=("a",), knobs={"transformer_cache": {"method": "mag"}}))
    assert err.value.field == "knobs.transformer_cache" and why in str(err.value)
    assert KNOB.check_model(info, KNOB.parse({"method": "mag", "mag_ratios": "calibrate"})) is None
    from studio_core.models import load_pipeline

    with pytest.raises(ModelLoadError, match=why.replace("(", r"\(").replace(")", r"\)")):
        ratios_for(load_pipeline(folder), None)


def test_shipped_ratios_asked_of_a_folder_without_them_are_refused(emoji_flux_dir):
    reason = KNOB.check_model(model_info(str(emoji_flux_dir)), KNOB.parse({"method": "mag", "mag_ratios": "shipped"}))
    assert reason == ("mag_ratios 'shipped' needs the model folder's mag_ratios.json, which it does not have (leave "
                      "mag_ratios unset to calibrate them on this model)")
    assert KNOB.check_model(model_info(str(emoji_flux_dir)), KNOB.parse({"method": "mag"})) is None


def test_engine_run_on_emoji_flux_reports_the_shipped_ratios(shipped_dir, tmp_path):
    engine = Engine(RunStore(tmp_path / "study"))
    try:
        spec = {"model": str(shipped_dir), "prompts": ["grinning face"], "seeds": [0], "steps": 6, "warmup": 1,
                "repeats": 1, "knobs": {"transformer_cache": {"method": "mag", "threshold": 0.2}}}
        run = engine.run(spec, reference=REF)
        assert run.status == "ok", run.error
        report = [k for k in run.row["knob_report"] if k["knob"] == "transformer_cache"][0]
        assert report["details"]["ratios_source"] == "shipped with the model (mag_ratios.json)"
        assert report["details"]["denoiser_calls"] == 12 and report["details"]["cache_hits"] > 0
        assert "(the model's shipped ratios)" in report["summary"]
    finally:
        engine.store.close()


def test_every_cache_of_the_transformer_caching_preset_skips_work_on_emoji_flux():
    """presets/transformer-caching.yaml's rows each reuse the cache on the shipped emoji-flux at 28 steps with its
    own guidance, MagCache on the ratios shipped with it (one image per row, as the engine runs it)."""
    from studio_core.measure.generation import generate
    from studio_core.measure.pipelines import PipelineCache, apply_knobs, call_kwargs, undo_knobs
    from studio_core.models import load_pipeline
    from studio_core.study.sweep import load_preset

    sweep = load_preset(Path(__file__).resolve().parents[1] / "presets" / "transformer-caching.yaml")
    pipe, cache = load_pipeline("emoji-flux"), PipelineCache()
    assert not sweep.specs[0].knobs and all(s.knobs for s in sweep.specs[1:])
    for spec in sweep.specs[1:]:
        applied = apply_knobs(pipe, spec, cache)
        try:
            mine = [a for knob, _s, a in applied if knob.name == "transformer_cache"][0]
            with mine.instrument():
                generate(pipe, spec.images()[:1], **call_kwargs(applied))
            report = mine.report()
        finally:
            undo_knobs(pipe, applied, cache)
        assert report.active and report.details["cache_hits"] > 0, report.summary
        assert report.details["denoiser_calls"] == 2 * spec.steps  # true CFG: cond and uncond
        if report.details["method"] == "mag":
            assert report.details["ratios_source"] == "shipped with the model (mag_ratios.json)"
