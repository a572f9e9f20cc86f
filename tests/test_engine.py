"""The engine on a tiny pipeline built from config, and once end to end on the embedded model."""

import shutil
import statistics

import numpy as np
import pytest

from studio_core.errors import SpecError
from studio_core.measure import engine as engine_module
from studio_core.measure import timing
from studio_core.measure.engine import Engine, image_metrics
from studio_core.store.store import RunStore

REF = {"sampler": "DPM++ 2M", "steps": 12}


@pytest.fixture
def engine(tmp_path):
    e = Engine(RunStore(tmp_path / "study"))
    yield e
    e.store.close()


def _spec(model, **kw):
    return {"model": str(model), "prompts": ["grinning face", "red heart"], "seeds": [0, 1], "steps": 3,
            "guidance": 2.0, "warmup": 1, "repeats": 3, **kw}


@pytest.fixture
def timed_passes(monkeypatch):
    """Every pass the engine times (warm-up and repeats) as the timing core returned it, with its clock."""
    passes: list[tuple[timing.TimedPass, timing.Clock]] = []

    def recording_pass(pipe, run, clock):
        passes.append((timing.timed_pass(pipe, run, clock), clock))
        return passes[-1][0]

    monkeypatch.setattr(engine_module, "timed_pass", recording_pass)
    return passes


def test_run_is_timed_broken_down_scored_and_logged(engine, tiny_pipeline_dir, timed_passes):
    r = engine.run(_spec(tiny_pipeline_dir, sampler="Euler"), reference=REF)
    passes = [p for p, _clock in timed_passes]
    assert r.status == "ok", r.error
    row = engine.store.get_run(r.run_id)
    assert row["status"] == "ok" and row["sampler"] == "Euler" and row["n_images"] == 4
    lat = row["latencies_ms"]
    assert len(lat) == 3 and min(lat) <= row["latency_median_ms"] <= max(lat)
    assert row["latency_iqr_ms"] >= 0 and row["cold_ms"] > 0
    # the parts are disjoint spans of one pass, so they add up to at most that pass's total; medians of
    # the parts need not add up to the median of the totals, so this holds per pass, not on the row
    assert len(passes) == 1 + 3 and [round(p.total_ms, 3) for p in passes[1:]] == lat
    for p in passes:
        assert all(p.parts[k] > 0 for k in ("text_encode_ms", "denoise_ms", "decode_ms")), p.parts
        assert p.parts["text_encode_ms"] + p.parts["denoise_ms"] + p.parts["decode_ms"] <= p.total_ms
    assert row["denoise_ms"] == pytest.approx(statistics.median(p.parts["denoise_ms"] for p in passes[1:]))
    assert row["nfe"] == 3  # guidance > 1: one batched (cond + uncond) denoiser call per step
    assert row["step_mean_ms"] == pytest.approx(row["denoise_ms"] / 3)
    assert row["peak_mem_kind"] == "cpu_peak_rss" and row["peak_mem_bytes"] >= 0 and row["mem_baseline_bytes"] > 0
    assert row["repeats_identical"] == 1
    assert 0 < row["psnr"] < 100 and -1 <= row["ssim"] < 1 and row["reference_id"]
    assert row["lpips"] is None and "LPIPS, FID and CLIP-score unavailable" in row["metrics_note"]
    assert "emoji models only" in row["metrics_note"] and row["fidelity_top1"] is None
    assert "unavailable for this model" in row["metrics_note"] and row["fd_emoji"] is None and row["perceptual_emoji"] is None
    assert row["torch_version"] and row["diffusers_version"] and row["threads"] >= 1 and row["git_commit"]
    assert row["device_name"].startswith("CPU")
    images = engine.store.load_images(row["images"])
    assert np.array_equal(images, r.images) and images.shape == (4, 32, 32, 3)
    sampler = [k for k in row["knob_report"] if k["knob"] == "sampler"][0]
    assert sampler["active"] and "EulerDiscreteScheduler" in sampler["summary"]


def test_reference_is_made_once_and_a_run_equal_to_it_scores_perfectly(engine, tiny_pipeline_dir):
    same = engine.run(_spec(tiny_pipeline_dir, sampler="DPM++ 2M", steps=12, repeats=1), reference={**REF, "guidance": 2.0})
    other = engine.run(_spec(tiny_pipeline_dir, sampler="DDIM", steps=2, repeats=1), reference={**REF, "guidance": 2.0})
    assert same.row["reference_id"] == other.row["reference_id"]
    assert engine.store.db["refs"].count == 1
    assert same.row["psnr"] == 100.0 and same.row["ssim"] == pytest.approx(1.0)
    assert other.row["psnr"] < 100.0


def test_knobs_are_undone_and_a_knob_that_did_nothing_says_so(engine, tiny_pipeline_dir):
    r = engine.run(_spec(tiny_pipeline_dir, sampler="UniPC", repeats=1), reference=REF)
    pipe = next(iter(engine._pipes.values()))
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the sampler swap was undone
    assert not pipe.unet._forward_pre_hooks and "decode" not in pipe.vae.__dict__  # probes removed
    assert r.row["knobs_inactive"] is None
    same = engine.run(_spec(tiny_pipeline_dir, sampler="DDIM", repeats=1), reference=REF)
    assert same.row["knobs_inactive"] is None  # DDIM on a DDIM model: the model's own, a baseline, not a flag
    report = [k for k in same.row["knob_report"] if k["knob"] == "sampler"][0]
    assert report["active"] is False and report["details"]["model_default"] and "model's own" in report["summary"]
    idle = engine.run(_spec(tiny_pipeline_dir, repeats=1, knobs={"deepcache": {"interval": 1}}), reference=REF)
    assert idle.row["knobs_inactive"] == "deepcache"  # asked for, cached nothing: flagged


def test_a_sampler_that_draws_from_the_global_rng_repeats_its_images(engine, tiny_pipeline_dir):
    """DPM++ SDE seeds its Brownian tree from torch's global RNG, not the run's generators: the engine seeds
    that too, so the repeats of one run are identical and a second run gives the same images."""
    spec = _spec(tiny_pipeline_dir, sampler="DPM++ SDE", steps=3, repeats=2)
    first, second = engine.run(spec, reference=REF), engine.run(spec, reference=REF)
    assert first.row["repeats_identical"] == 1 and "differed" not in (first.row["metrics_note"] or "")
    assert (first.images == second.images).all()


def test_bad_spec_fails_before_any_row(engine, tiny_pipeline_dir):
    with pytest.raises(SpecError, match="steps"):
        engine.run(_spec(tiny_pipeline_dir, steps=0))
    assert engine.store.db["runs"].count == 0


def test_model_that_fails_to_load_is_recorded_failed_with_reason(engine, tiny_pipeline_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken)
    for f in (broken / "unet").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    ok = engine.run(_spec(tiny_pipeline_dir, repeats=1), reference=REF)
    bad = engine.run(_spec(broken, repeats=1), reference=REF)
    assert bad.status == "failed" and "could not load the pipeline" in bad.error and str(broken) in bad.error
    rows = engine.store.runs()
    assert [r["status"] for r in rows] == ["ok", "failed"] and rows[0]["id"] == ok.run_id
    assert engine.store.integrity_check() == "ok"


def test_image_metrics_known_answers():
    a = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    b = a.copy()
    b[1] = 255  # the second image is maximally different: MSE 1 -> 0 dB
    m = image_metrics(a, b)
    # pooled: MSE (0 + 1) / 2 -> 10·log10(2) dB; the old mean of per-image dB counted the identical one as 100
    assert m["psnr"] == pytest.approx(10 * np.log10(2)) and m["psnr_image_mean"] == pytest.approx(50.0)
    assert m["identical_images"] == 1 and m["psnr_min"] == m["psnr_max"] == 0.0 and m["psnr_std"] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        image_metrics(a, b[:1])


def test_embedded_model_end_to_end_with_prompt_fidelity(tmp_path):
    engine = Engine(RunStore(tmp_path))
    r = engine.run({"prompt_set": "emoji-4", "steps": 10, "sampler": "DPM++ 2M", "repeats": 1},
                   reference={"steps": 50})
    assert r.status == "ok", r.error
    assert r.row["fidelity_n"] == 4 and 0 <= r.row["fidelity_top1"] <= r.row["fidelity_top5"] <= 1
    # chance of retrieving a prompt's own emoji among ~3,800 in the top 5 is about 0.13%
    assert r.row["fidelity_top5"] >= 0.25
    assert r.row["psnr"] > 15  # 10 DPM++ steps land near the 50-step reference


# ------------------------------------------------------------------------------------------ CUDA paths
@pytest.mark.gpu
def test_cuda_run_is_timed_with_cuda_events_and_broken_down(engine, tiny_pipeline_dir, timed_passes):
    r = engine.run(_spec(tiny_pipeline_dir, device="cuda"), reference=REF)
    assert r.status == "ok", r.error
    row = r.row
    assert all(clock.cuda for _pass, clock in timed_passes) and len(timed_passes) == 1 + 3
    assert len(row["latencies_ms"]) == 3 and min(row["latencies_ms"]) > 0 and row["cold_ms"] > 0
    assert row["text_encode_ms"] > 0 and row["denoise_ms"] > 0 and row["decode_ms"] > 0
    for p, _clock in timed_passes:
        assert p.parts["text_encode_ms"] + p.parts["denoise_ms"] + p.parts["decode_ms"] <= p.total_ms
    assert row["nfe"] == 3 and not row["device_name"].startswith("CPU")


@pytest.mark.gpu
def test_cuda_peak_memory_is_reset_between_runs(engine, tiny_pipeline_dir):
    """A small run after a large one on the same cached pipeline reports its own peak, not the large one's."""
    large = engine.run(_spec(tiny_pipeline_dir, device="cuda", seeds=list(range(16)), height=64, width=64,
                             repeats=1), reference=REF)
    small = engine.run(_spec(tiny_pipeline_dir, device="cuda", prompts=["red heart"], seeds=[0], repeats=1),
                       reference=REF)
    for r in (large, small):
        assert r.status == "ok", r.error
        assert r.row["peak_mem_kind"] == "cuda_max_memory_allocated"
        assert r.row["peak_mem_bytes"] >= 0 and r.row["mem_baseline_bytes"] > 0
    assert len(engine._pipes) == 1  # both runs used the same loaded pipeline, so the baselines match
    assert small.row["peak_mem_bytes"] < large.row["peak_mem_bytes"]


@pytest.mark.parametrize("sampler", ["default", "DDIM", "PNDM", "DPM++ 2M"])
def test_a_reference_asking_for_every_training_timestep_is_capped_where_its_scheduler_can_take_it(
        tiny_pipeline_dir, sampler):
    """'leading' spacing cannot take 1000 steps of 1000 training timesteps (index 1000 out of bounds): the
    reference takes the most its scheduler can (the scheduler check is the one that refuses steps=1000 for a
    run, tested with the bad inputs), so the run is scored against it instead of failing."""
    from studio_core.measure.reference import reference_spec
    from studio_core.spec import RunSpec, resolve, scheduler_steps_reason

    spec, info = resolve(RunSpec.from_dict(_spec(tiny_pipeline_dir, steps=2)))
    ref = reference_spec(spec, info, {"sampler": sampler, "steps": 1000})
    assert ref.steps < 1000 and scheduler_steps_reason(info, ref.sampler, None, ref.steps) is None
    assert ref.steps >= 998  # capped, not cut: the most it can take
