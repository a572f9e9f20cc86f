"""Flow samplers on a Flux with dynamic shifting, Heun (flow) among them, and the ``flow_shift`` setting.

``tests/tiny_flux.py`` builds a FluxPipeline with FLUX.1-dev's schedule: FlowMatchEuler with dynamic shifting
(``base_shift`` 0.5 and ``max_shift`` 1.15 over 256 to 4096 image tokens). At 32 px it has 16 image tokens, so
FluxPipeline passes ``mu = calculate_shift(16)`` (about 0.459, a shift of about 1.58) and ``sigmas =
linspace(1, 1/n, n)`` to ``set_timesteps``. diffusers' FlowMatchHeunDiscreteScheduler takes neither; the
studio's ``FlowMatchHeunDynamicScheduler`` does, with FlowMatchEuler's schedule (checked here against it).

The shift S of a schedule maps an unshifted sigma s to ``S s / (1 + (S - 1) s)``; S = 1 leaves it as it is.
Each sampler is run with shift 1 and with shift S, and the scheduler's sigmas of the second must be that map
of the first's, whether the shift went in as ``base_shift = max_shift = ln S`` (dynamic shifting), ``shift``
(FlowMatch*) or ``flow_shift`` (the flow-sigma solvers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest

from studio_core.errors import SpecError
from studio_core.knobs import KNOBS
from studio_core.knobs.sampler import SAMPLERS, SamplerSettings, samplers_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT, STEPS, GUIDANCE = "grinning face", 3, 2.0
CALL = {"flux": {"height": 32, "width": 32}, "sd3": {"height": 64, "width": 64},
        "sana_flow": {"height": 64, "width": 64, "use_resolution_binning": False}}
FLUX_SAMPLERS = ["Euler (flow)", "Heun (flow)", "DPM++ 2M (flow)", "UniPC (flow)", "DPM++ 2S (flow)"]
ENGINE_SPEC = {"prompts": [PROMPT], "seeds": [0], "steps": STEPS, "guidance": GUIDANCE, "warmup": 1, "repeats": 1,
               "device": "cpu"}
REFERENCE = {"sampler": "default", "steps": 4}


def _flux_mu(image_tokens: int) -> float:
    """FluxPipeline's ``calculate_shift`` with FLUX.1-dev's (and tiny_flux's) bounds: a line through
    (256, 0.5) and (4096, 1.15)."""
    m = (1.15 - 0.5) / (4096 - 256)
    return image_tokens * m + 0.5 - m * 256


def _shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _flow_match_fixed(shift: float, steps: int) -> np.ndarray:
    """FlowMatch*'s sigmas under a fixed shift (diffusers 0.42.1): ``steps`` evenly spaced from 1 down to the
    shifted last training sigma (1/1000), each then shifted, and 0 after."""
    return np.append(_shifted(np.linspace(1.0, _shifted(np.array(1 / 1000), shift), steps), shift), 0.0)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """``family(name) -> (pipe, info)``: a tiny family built, loaded and read once for the module."""
    from tiny_families import FAMILIES

    from studio_core.models import load_pipeline
    from studio_core.spec import model_info

    root, loaded = tmp_path_factory.mktemp("flow"), {}

    def get(name: str):
        if name not in loaded:
            folder = FAMILIES[name](root / name)
            loaded[name] = load_pipeline(folder), model_info(str(folder))
        return loaded[name]

    return get


def _run(pipe, name: str, settings: SamplerSettings | None) -> tuple[np.ndarray, np.ndarray]:
    """(image, the scheduler's sigmas after the run) with these sampler settings applied as the engine applies
    them (None: the model's own scheduler), undone after."""
    import torch

    applied = KNOBS["sampler"].apply(pipe, settings) if settings else None
    try:
        torch.manual_seed(0)
        image = pipe([PROMPT], generator=[torch.Generator().manual_seed(0)], num_inference_steps=STEPS,
                     guidance_scale=GUIDANCE, output_type="np", **CALL[name]).images[0]
        sigmas = pipe.scheduler.sigmas.double().numpy().copy()
    finally:
        if applied:
            applied.undo()
    assert np.isfinite(image).all()
    return image.astype(np.float64), sigmas


# ------------------------------------------------------------------------------------------ Heun's schedule
@pytest.mark.parametrize("dynamic, steps, mu, sigmas", [
    (True, 4, math.log(1.6), [1.0, 0.75, 0.5, 0.25]),  # FluxPipeline at 64 image tokens: sigmas and mu
    (True, 3, _flux_mu(16), None),  # a dynamic SD3: mu only
    (False, 5, None, None),  # SD3: neither, the fixed shift 3
    (False, 3, 0.7, [1.0, 2 / 3, 1 / 3]),  # FLUX.1-schnell: mu given, no dynamic shifting, so not used
])
def test_flow_heun_has_flow_match_eulers_schedule_interleaved(dynamic, steps, mu, sigmas):
    """The same sigmas as FlowMatchEuler for the same (steps, mu, sigmas), then Heun's interleaving: each sigma
    after the first twice (predictor, corrector), then 0; with dynamic shifting they are exp(mu)'s shift of the
    sigmas given, as Karras' Heun would step them."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    from studio_core.knobs.flow_heun import FlowMatchHeunDynamicScheduler

    config = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic).config
    euler, heun = FlowMatchEulerDiscreteScheduler.from_config(config), FlowMatchHeunDynamicScheduler.from_config(config)
    euler.set_timesteps(None if sigmas else steps, sigmas=sigmas, mu=mu)
    heun.set_timesteps(None if sigmas else steps, sigmas=sigmas, mu=mu)
    plain = euler.sigmas[:-1]
    assert len(plain) == steps == heun.num_inference_steps
    assert torch.equal(heun.sigmas, torch.cat([plain[:1], plain[1:].repeat_interleave(2), torch.zeros(1)]))
    assert torch.equal(heun.timesteps, torch.cat([plain[:1], plain[1:].repeat_interleave(2)]) * 1000)
    if dynamic and sigmas:
        np.testing.assert_allclose(plain.numpy(), _shifted(np.array(sigmas), math.exp(mu)), rtol=0, atol=1e-6)
    if not dynamic and mu is None:  # where diffusers' own flow Heun works, the subclass is exactly it
        own = FlowMatchHeunDiscreteScheduler.from_config(config)
        own.set_timesteps(steps)
        assert torch.equal(own.sigmas, heun.sigmas) and torch.equal(own.timesteps, heun.timesteps)


@pytest.mark.parametrize("sampler", ["default", "Heun (flow)"])
@pytest.mark.parametrize("time_shift_type", ["exponential", "linear"])
def test_a_set_shift_makes_the_pipelines_mu_that_shift_at_every_size(sampler, time_shift_type):
    """With ``base_shift = max_shift``, diffusers' own ``calculate_shift`` (FluxPipeline's and SD3's) gives the
    same ``mu`` for 16 and 4096 image tokens, and the scheduler shifts by S at both, for either time shift."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pipe = SimpleNamespace(scheduler=FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, time_shift_type=time_shift_type))
    applied = KNOBS["sampler"].apply(pipe, SamplerSettings(sampler, flow_shift=2.5))
    try:
        config, given = pipe.scheduler.config, np.linspace(1.0, 1 / 4, 4)
        for tokens in (16, 4096):
            mu = calculate_shift(tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                                 config.max_shift)
            pipe.scheduler.set_timesteps(sigmas=given, mu=mu)
            steps = pipe.scheduler.sigmas.double().numpy()
            if sampler == "Heun (flow)":
                steps = np.concatenate([steps[:1], steps[1:-1:2], steps[-1:]])
            np.testing.assert_allclose(steps, _shifted(np.append(given, 0.0), 2.5), rtol=0, atol=1e-6)
    finally:
        applied.undo()


# ------------------------------------------------------------------------------------------ Flux, end to end
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from studio_core.measure.engine import Engine
    from studio_core.store.store import RunStore

    e = Engine(RunStore(tmp_path_factory.mktemp("study") / "study"), max_pipelines=1)
    yield e
    e.store.close()


def test_every_flow_sampler_runs_on_a_dynamic_flux_through_the_engine(family, engine):
    """Heun (flow) included: two denoiser calls a step but the last (no corrector into sigma 0), with the
    pipeline's dynamic shift."""
    _, info = family("flux")
    assert samplers_for(info) == FLUX_SAMPLERS
    images = {}
    for sampler in FLUX_SAMPLERS:
        result = engine.run({"model": info.path, **ENGINE_SPEC, "sampler": sampler}, reference=REFERENCE)
        assert result.status == "ok", (sampler, result.error)
        row = result.row
        assert row["nfe"] == (2 * STEPS - 1 if SAMPLERS[sampler].order == 2 else STEPS), sampler
        report = next(r for r in row["knob_report"] if r["knob"] == "sampler")
        assert report["details"]["shift"] == "per image size", sampler
        if sampler != "Euler (flow)":  # that one is the model's own: nothing changed, and the report says so
            assert report["active"] and report["summary"].endswith("the model's dynamic shifting (set per image "
                                                                   "size)"), report["summary"]
        images[sampler] = result.images
    heun = next(r for r in engine.store.runs() if r["sampler"] == "Heun (flow)")["knob_report"]
    assert heun[[r["knob"] for r in heun].index("sampler")]["summary"] == (
        "FlowMatchEulerDiscreteScheduler -> FlowMatchHeunDynamicScheduler with the model's dynamic shifting (set per "
        "image size)")
    assert len({images[s].tobytes() for s in FLUX_SAMPLERS}) == len(FLUX_SAMPLERS)


@pytest.mark.parametrize("sampler", ["default", *FLUX_SAMPLERS])
def test_a_shift_on_dynamic_flux_sets_the_sigmas_by_the_formula(family, sampler):
    """Shift 2.5 maps the sigmas of shift 1 by S s / (1 + (S - 1) s) and changes the image; the shift the
    pipeline computes for 32 px itself, set as a number, gives the model's own image: the ``ln S`` route is
    exactly the ``mu`` route."""
    pipe, _ = family("flux")
    _, unshifted = _run(pipe, "flux", SamplerSettings(sampler, flow_shift=1.0))
    image, sigmas = _run(pipe, "flux", SamplerSettings(sampler, flow_shift=2.5))
    np.testing.assert_allclose(sigmas, _shifted(unshifted, 2.5), rtol=0, atol=1e-6)
    own_image, own_sigmas = _run(pipe, "flux", None if sampler == "default" else SamplerSettings(sampler))
    assert np.abs(image - own_image).max() > 1e-3
    as_number, number_sigmas = _run(pipe, "flux", SamplerSettings(sampler, flow_shift=math.exp(_flux_mu(16))))
    np.testing.assert_allclose(number_sigmas, own_sigmas, rtol=0, atol=1e-6)
    np.testing.assert_allclose(as_number, own_image, rtol=0, atol=1e-5)


def test_the_shift_report_says_what_was_used(family):
    pipe, _ = family("flux")
    applied = KNOBS["sampler"].apply(pipe, SamplerSettings("default", flow_shift=2.0))
    try:
        config = pipe.scheduler.config
        assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
        assert config.base_shift == config.max_shift == pytest.approx(math.log(2.0))
        report = applied.report()
    finally:
        applied.undo()
    assert report.active and report.details["shift"] == 2.0 and report.details["dynamic_shifting"] is False
    assert report.summary == ("FlowMatchEulerDiscreteScheduler -> FlowMatchEulerDiscreteScheduler with shift 2 at "
                              "every image size (in place of the model's dynamic shifting)")


# ------------------------------------------------------------------------------------------ fixed shifts
@pytest.mark.parametrize("name, sampler, key", [
    ("sd3", "default", "shift"), ("sd3", "Heun (flow)", "shift"), ("sd3", "UniPC (flow)", "flow_shift"),
    ("sana_flow", "default", "flow_shift"), ("sana_flow", "Euler (flow)", "shift"),
])
def test_a_shift_on_a_fixed_schedule_goes_where_the_scheduler_reads_it(family, name, sampler, key):
    """SD3 (FlowMatchEuler, shift 3) and Sana (flow DPM-Solver++, flow_shift 3) have no dynamic shifting: the
    setting replaces the model's shift under the key the sampler's class reads, and moves its sigmas by the
    formula."""
    pipe, _ = family(name)
    applied = KNOBS["sampler"].apply(pipe, SamplerSettings(sampler, flow_shift=5.0))
    try:
        assert pipe.scheduler.config[key] == 5.0
        report = applied.report()
    finally:
        applied.undo()
    assert report.active and "shift 5 (the model's is 3)" in report.summary and report.details["shift"] == 5.0
    own_image, _ = _run(pipe, name, SamplerSettings(sampler, flow_shift=3.0))
    _, unshifted = _run(pipe, name, SamplerSettings(sampler, flow_shift=1.0))
    image, sigmas = _run(pipe, name, SamplerSettings(sampler, flow_shift=5.0))
    if key == "shift":  # FlowMatch*: their own fixed-shift steps (Heun's visited twice)
        steps = sigmas if sampler != "Heun (flow)" else np.concatenate([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
        np.testing.assert_allclose(steps, _flow_match_fixed(5.0, STEPS), rtol=0, atol=1e-6)
    else:
        np.testing.assert_allclose(sigmas, _shifted(unshifted, 5.0), rtol=0, atol=1e-6)
    assert np.abs(image - own_image).max() > 1e-3
    if sampler == "default":  # the model's own shift, set as a number, is the model's own run
        plain, _ = _run(pipe, name, None)
        np.testing.assert_allclose(own_image, plain, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------ refusals
def test_a_shift_is_refused_for_a_noise_prediction_model(family):
    from studio_core.spec import RunSpec, resolve

    _, info = family("sd15")
    reason = "shift is a flow-matching setting; this model is epsilon-prediction (PNDMScheduler)"
    assert KNOBS["sampler"].check_model(info, SamplerSettings("default", flow_shift=2.0)) == reason
    assert KNOBS["sampler"].check_model(info, SamplerSettings("Euler", flow_shift=2.0)) == reason
    with pytest.raises(SpecError) as err:
        resolve(RunSpec(model=info.path, prompts=(PROMPT,), steps=2, flow_shift=2.0), info)
    assert str(err.value) == f"sampler='default (shift 2)' is not allowed: {reason}"
    resolve(RunSpec(model=info.path, prompts=(PROMPT,), steps=2), info)  # unset: the model's own, no shift


@pytest.mark.parametrize("value", [0, 0.05, 25, -1.0, float("nan"), float("inf"), "2", True])
def test_validation_refuses_a_shift_out_of_range_or_not_a_number(value):
    from studio_core.spec import RunSpec, validate

    with pytest.raises(SpecError) as err:
        validate(RunSpec(prompts=(PROMPT,), flow_shift=value))
    assert err.value.field == "flow_shift"
    assert err.value.allowed == "unset (the model's own) or a number from 0.1 to 20"


@pytest.mark.parametrize("value", [0.1, 1, 3.0, 20])
def test_validation_takes_a_shift_in_range(value):
    from studio_core.spec import RunSpec, validate

    validate(RunSpec(prompts=(PROMPT,), flow_shift=value))


# ------------------------------------------------------------------------------------------ the run's record
def test_the_shift_is_part_of_the_configuration_but_not_of_the_reference(family):
    """Unset, the hash is the one runs had before the field existed; set, it is a new configuration (2 and 2.0
    alike); the reference is the model's own schedule either way."""
    from studio_core.measure.reference import reference_key, reference_spec
    from studio_core.spec import RunSpec, config_hash, resolve

    _, info = family("flux")
    plain, _ = resolve(RunSpec(model=info.path, prompts=(PROMPT,), steps=2), info)
    before = {k: v for k, v in plain.to_dict().items() if k not in ("flow_shift", "distribution")}
    assert config_hash(plain) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    two, _ = resolve(dataclasses.replace(plain, flow_shift=2), info)
    assert two.flow_shift == 2.0 and isinstance(two.flow_shift, float)
    assert config_hash(two) != config_hash(plain)
    assert config_hash(two) == config_hash(resolve(dataclasses.replace(plain, flow_shift=2.0), info)[0])
    ref = reference_spec(two, info, REFERENCE)
    assert ref.flow_shift is None and ref == reference_spec(plain, info, REFERENCE)
    assert reference_key(ref, info, "cpu") == reference_key(dataclasses.replace(ref, flow_shift=None), info, "cpu")


def test_a_shifted_run_is_stored_labelled_and_compared_with_the_same_reference(family, engine):
    from app import tables
    from studio_core.study import labels

    _, info = family("flux")
    own = engine.run({"model": info.path, **ENGINE_SPEC}, reference=REFERENCE)
    shifted = engine.run({"model": info.path, **ENGINE_SPEC, "flow_shift": 2}, reference=REFERENCE)
    assert own.status == shifted.status == "ok", (own.error, shifted.error)
    a, b = engine.store.get_run(own.run_id), engine.store.get_run(shifted.run_id)
    assert (a["flow_shift"], b["flow_shift"]) == (None, 2.0) and a["config_hash"] != b["config_hash"]
    assert a["reference_id"] == b["reference_id"]
    assert a["psnr"] != b["psnr"]
    assert labels.sampler_text(a) == "Euler (flow, model default)"
    assert labels.sampler_text(b) == "Euler (flow, model default, shift 2)"  # as "DDIM (model default, trailing
    # spacing)": the model's own sampler, with a setting
    diff = tables.differing_settings([a, b])
    shift_row = diff[diff.iloc[:, 0] == "flow shift"]
    assert shift_row.iloc[0, 1:].tolist() == ["the model's own", "2"]
    assert engine.store.db["runs"].columns_dict["flow_shift"] is float


@pytest.mark.parametrize("row, text", [
    ({"sampler": "Heun (flow)", "flow_shift": 2.0, "knob_report": [{"knob": "sampler", "active": True}]},
     "Heun (flow) (shift 2)"),
    ({"sampler": "UniPC (flow)", "flow_shift": float("nan"), "knob_report": [{"knob": "sampler", "active": True}]},
     "UniPC (flow)"),  # a run from before the column: NaN in a frame
    ({"sampler": "DDIM", "timestep_spacing": "trailing", "flow_shift": None}, "DDIM (trailing spacing)"),
])
def test_the_sampler_label_names_a_set_shift(row, text):
    from studio_core.study import labels

    assert labels.sampler_text(row) == text


def test_the_cli_flag_the_widget_and_the_sweep_axis(family):
    from app import widgets
    from studio_core.cli import _parser, _spec_from_args
    from studio_core.study.sweep import sweep_from_dict

    args = _parser().parse_args(["run", "--prompt", PROMPT, "--shift", "2.5"])
    assert _spec_from_args(args)["flow_shift"] == 2.5
    assert _spec_from_args(_parser().parse_args(["run", "--prompt", PROMPT]))["flow_shift"] is None
    setting = {s.name: s for s in widgets.knob_settings(KNOBS["sampler"])}["flow_shift"]
    assert (setting.kind, setting.optional, setting.builtin, setting.axis) == (float, True, True, "flow_shift")
    assert widgets.axis_choices()["flow_shift"] == (float, True)
    spec = widgets.build_spec("emoji-sd", PROMPT, None, "0", {"flow_shift": "3"}, {})
    assert spec["flow_shift"] == 3.0 and widgets.build_spec("emoji-sd", PROMPT, None, "0", {}, {})["flow_shift"] is None
    _, info = family("flux")
    sweep = sweep_from_dict({"name": "shifts", "base": {"model": info.path, **ENGINE_SPEC},
                             "grid": {"flow_shift": [None, 1.5, 3]}})
    assert [s.flow_shift for s in sweep.specs] == [None, 1.5, 3.0]
