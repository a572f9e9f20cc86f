"""DeepCache and cross-attention caching (T-GATE idea): exactness, undo, reports, refusals, the engine."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from studio_core.errors import SpecError
from studio_core.knobs import KNOBS
from studio_core.knobs.cross_attention_cache import CrossAttentionCacheSettings, cross_attention_modules
from studio_core.knobs.deepcache import DeepCacheSettings, down_layers, full_steps, skipped_modules
from studio_core.measure.engine import Engine
from studio_core.measure.pipelines import call_kwargs
from studio_core.spec import model_info
from studio_core.store.store import RunStore

DC, CA = KNOBS["deepcache"], KNOBS["cross_attention_cache"]
REF = {"sampler": "DDIM", "steps": 4}


@pytest.fixture(scope="module")
def tiny_pipe(tiny_pipeline_dir):
    from studio_core.models import load_pipeline

    return load_pipeline(tiny_pipeline_dir)


def _images(pipe, call_kwargs=None, steps=6, guidance=2.0):
    return pipe(["grinning face", "red heart"], num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
                **(call_kwargs or {})).images


def _with(knob, pipe, settings, steps=6, guidance=2.0, count=False):
    """(images, report, images after undo) of one call with the knob applied."""
    applied = knob.apply(pipe, settings)
    try:
        kwargs = call_kwargs([(knob, settings, applied)])
        if count:
            with applied.instrument():
                images = _images(pipe, kwargs, steps, guidance)
        else:
            images = _images(pipe, kwargs, steps, guidance)
        report = applied.report()
    finally:
        applied.undo()
    return images, report, _images(pipe, None, steps, guidance)


# ------------------------------------------------------------------------------------------ DeepCache
def test_deepcache_interval_1_reproduces_uncached_and_undo_is_exact(tiny_pipe):
    base = _images(tiny_pipe)
    images, report, after = _with(DC, tiny_pipe, DeepCacheSettings(interval=1))
    assert np.abs(images - base).max() <= 1e-5
    assert not report.active and report.details["cache_hits"] == 0 and "no step reused the cache" in report.summary
    assert np.array_equal(after, base)


def test_deepcache_interval_3_caches_reports_and_undoes(tiny_pipe):
    base = _images(tiny_pipe)
    images, report, after = _with(DC, tiny_pipe, DeepCacheSettings(interval=3), count=True)
    assert np.abs(images - base).max() > 1e-3  # cached steps change the result
    d = report.details
    assert report.active and d["schedule_marks"] == "FCCFCC" and d["cache_hits"] == 4 and d["full_steps"] == 2
    assert d["full_step_indices"] == [0, 3]
    runs = d["layers_run_per_call"]  # counted by the instrument: full steps run every layer, cached ones fewer
    assert len(runs) == 6 and runs[0] == runs[3] == d["layers_total"] and max(runs[1], runs[2]) < d["layers_total"]
    assert "4 of 6 steps reused the cache" in report.summary
    assert np.array_equal(after, base)
    # hooks gone: no studio hook left on any module
    assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in tiny_pipe.unet.modules())


def test_deepcache_repeats_are_identical_and_a_new_call_starts_fresh(tiny_pipe):
    settings = DeepCacheSettings(interval=2)
    applied = DC.apply(tiny_pipe, settings)
    try:
        kwargs = call_kwargs([(DC, settings, applied)])
        first, second = _images(tiny_pipe, kwargs), _images(tiny_pipe, kwargs)
    finally:
        applied.undo()
    assert np.array_equal(first, second)


def test_non_uniform_schedule_has_the_same_budget_and_is_denser_near_the_center():
    assert full_steps(50, 5) == list(range(0, 50, 5))
    assert full_steps(7, 1) == list(range(7))
    steps = full_steps(50, 5, "non-uniform", center=0.3, power=1.4)
    assert steps[0] == 0 and steps == sorted(set(steps)) and len(steps) == 10 and steps[-1] <= 49
    gaps = np.diff(steps)
    near = min(range(len(steps)), key=lambda i: abs(steps[i] - 15))
    assert gaps[max(0, near - 1)] <= gaps[0] and gaps[max(0, near - 1)] <= gaps[-1]


def test_skip_set_for_the_sd15_unet_layout():
    """SD 1.5's UNet (built on the meta device: no weights): keeping branch 0 skips everything below the
    first down layer, and in the last up block only the layer whose skip input is the skipped down layer."""

    from diffusers import UNet2DConditionModel

    from benchmarks.architectures import SD15_UNET  # the published config the benchmarks time

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    assert len(down_layers(unet)) == 8
    assert set(skipped_modules(unet, 0)) == {
        "down_blocks.0.resnets.1", "down_blocks.0.attentions.1", "down_blocks.0.downsamplers.0", "down_blocks.1",
        "down_blocks.2", "down_blocks.3", "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2",
        "up_blocks.3.resnets.0", "up_blocks.3.attentions.0"}
    # branch 1 (block 0, layer 1): the whole last up block runs
    assert set(skipped_modules(unet, 1)) == {"down_blocks.0.downsamplers.0", "down_blocks.1", "down_blocks.2",
                                             "down_blocks.3", "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2"}
    # branch 2 (block 1, layer 0): deeper, so more of the UNet runs
    assert "up_blocks.2.resnets.0" in skipped_modules(unet, 2) and "up_blocks.2.resnets.1" not in skipped_modules(unet, 2)


def test_deepcache_with_two_layers_per_block_runs_and_deeper_branch_is_closer(tiny_pipeline_dir):
    """A UNet with two layers per block (as SD 1.5): every branch runs; a deeper branch recomputes more
    layers on cached steps."""
    from diffusers import UNet2DConditionModel

    from studio_core.models import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    cfg = dict(pipe.unet.config)
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(**{**{k: v for k, v in cfg.items() if not k.startswith("_")},
                                        "layers_per_block": 2})
    fractions = []
    for branch in range(len(down_layers(pipe.unet))):
        images, report, _ = _with(DC, pipe, DeepCacheSettings(interval=2, branch=branch), count=True)
        assert report.active and np.isfinite(images).all()
        fractions.append(min(report.details["layers_run_per_call"]) / report.details["layers_total"])
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1] < 1.0


@pytest.mark.parametrize("raw, field", [({"interval": 0}, "interval"), ({"interval": 2.5}, "interval"),
                                        ({"branch": -1}, "branch"), ({"schedule": "cosine"}, "schedule"),
                                        ({"center": 1.5}, "center"), ({"power": 0.5}, "power")])
def test_deepcache_bad_settings_name_the_field(raw, field):
    with pytest.raises(SpecError) as e:
        DC.parse(raw)
    assert e.value.field == f"knobs.deepcache.{field}"


def _transformer_info(tmp_path, info):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    return dataclasses.replace(info, path=str(tmp_path), denoiser="transformer")


def test_refusals_name_the_reason(tiny_pipeline_dir, tmp_path):
    info = model_info(str(tiny_pipeline_dir))
    assert DC.check_model(info, DeepCacheSettings()) is None and CA.check_model(info, CrossAttentionCacheSettings()) is None
    assert "skip branches 0 to 1" in DC.check_model(info, DeepCacheSettings(branch=2))
    flux = _transformer_info(tmp_path, info)
    assert "FluxTransformer2DModel" in DC.check_model(flux, DeepCacheSettings())
    assert "FluxTransformer2DModel" in CA.check_model(flux, CrossAttentionCacheSettings())


# ------------------------------------------------------------------------------------------ T-GATE
def test_cross_attention_cache_gates_drops_guidance_and_undoes(tiny_pipe):
    base = _images(tiny_pipe)
    n = len(cross_attention_modules(tiny_pipe.unet))
    images, report, after = _with(CA, tiny_pipe, CrossAttentionCacheSettings(gate_step=2), count=True)
    d = report.details
    assert report.active and np.abs(images - base).max() > 1e-3
    assert d["calls_cached"] == 4 * n and d["calls_computed"] == 2 * n and d["guidance_dropped_at"] == 2
    assert "guidance dropped from step 2" in report.summary
    assert np.array_equal(after, base)  # the pipeline's guidance is set again at the next call


def test_cross_attention_cache_keeping_guidance(tiny_pipe):
    base = _images(tiny_pipe)
    images, report, after = _with(CA, tiny_pipe, CrossAttentionCacheSettings(gate_step=3, drop_cfg=False))
    assert report.active and report.details["guidance_dropped_at"] is None and "guidance kept" in report.summary
    assert np.abs(images - base).max() > 1e-4 and np.array_equal(after, base)


def test_cross_attention_gate_after_the_last_step_does_nothing(tiny_pipe):
    base = _images(tiny_pipe)
    images, report, _ = _with(CA, tiny_pipe, CrossAttentionCacheSettings(gate_step=6))
    assert not report.active and "nothing cached" in report.summary and np.array_equal(images, base)


def test_cross_attention_bad_settings():
    for raw, field in (({"gate_step": 0}, "gate_step"), ({"drop_cfg": "no"}, "drop_cfg")):
        with pytest.raises(SpecError) as e:
            CA.parse(raw)
        assert e.value.field == f"knobs.cross_attention_cache.{field}"


# ------------------------------------------------------------------------------------------ engine + UI
def test_engine_stores_reports_flags_inactive_and_chains_callbacks(tiny_pipeline_dir, tmp_path):
    engine = Engine(RunStore(tmp_path))
    spec = {"model": str(tiny_pipeline_dir), "prompts": ["grinning face"], "seeds": [0], "steps": 6, "guidance": 2.0,
            "warmup": 1, "repeats": 2}
    both = engine.run({**spec, "knobs": {"deepcache": {"interval": 3}, "cross_attention_cache": {"gate_step": 4}}},
                      reference=REF)
    assert both.status == "ok", both.error
    reports = {r["knob"]: r for r in both.row["knob_report"]}
    # guidance dropped at step 4 halves the batch: DeepCache's features of the full batch no longer fit, so
    # step 4 recomputes the whole UNet (F) instead of reusing them
    assert reports["deepcache"]["active"] and reports["deepcache"]["details"]["schedule_marks"] == "FCCFFC"
    assert reports["cross_attention_cache"]["details"]["guidance_dropped_at"] == 4
    assert reports["deepcache"]["details"]["layers_run_fraction_mean"] < 1 and not both.row["knobs_inactive"]
    assert both.row["repeats_identical"] == 1
    noop = engine.run({**spec, "knobs": {"deepcache": {"interval": 1}}}, reference=REF)
    assert noop.status == "ok" and noop.row["knobs_inactive"] == "deepcache"
    plain = engine.run(spec, reference=REF)
    assert noop.row["psnr"] == plain.row["psnr"]  # N=1 is the uncached output
    assert [r["status"] for r in engine.store.runs()].count("ok") == 3


def test_ui_greys_out_knobs_the_model_cannot_take(tiny_pipeline_dir, tmp_path):
    from app.widgets import knob_availability as _knob_availability

    info = model_info(str(tiny_pipeline_dir))
    ok = _knob_availability(DC, info)
    assert ok["interactive"] is True
    flux = _transformer_info(tmp_path, info)
    greyed = _knob_availability(DC, flux)
    assert greyed["interactive"] is False and greyed["value"] is False
    assert "Not available for this model" in greyed["info"] and "FluxTransformer2DModel" in greyed["info"]
