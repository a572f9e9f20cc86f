"""Samplers: diffusers schedulers under the names the community uses (A1111 / diffusers docs).

A sampler is swapped, not rebuilt: ``cls.from_config(pipe.scheduler.config, **overrides)`` keeps the
model's training schedule (betas, prediction type, shift) and changes only how it is integrated.

Each sampler serves some kinds of model (``model_kind``): noise-prediction models (epsilon, v-prediction,
sample), flow-matching models (the denoiser predicts a velocity) and consistency-distilled ones. A model
is offered the samplers of its kind that diffusers declares interchangeable with its own scheduler, or,
for a flow model, the flow samplers (``samplers_for``); any other choice is refused before loading, with
the reason and that list. Two more refusals come from how a pipeline drives its scheduler: a pipeline
that never calls ``scheduler.scale_model_input`` cannot run the Euler family (their input scaling would
be skipped), and a flow sampler must take what the pipeline passes to ``set_timesteps`` (``sigmas``,
``mu``) and the model's dynamic shifting.

The diffusers facts behind these checks are written out here (``SCHEDULER_COMPATIBLES``,
``TIMESTEP_SPACING_SCHEDULERS``, ``INPUT_SCALING_SCHEDULERS``, ``CALLS_SCALE_MODEL_INPUT``,
``SET_TIMESTEPS_TAKES`` ...), so that reading a model's configs needs no diffusers import;
``tests/test_knob_imports.py`` checks them against the installed diffusers (0.42.1), so an upgrade that
changes them fails a test instead of drifting.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from studio_core.knobs import register
from studio_core.knobs.base import Applied, Knob, KnobReport, value_text

__all__ = ["CALLS_SCALE_MODEL_INPUT", "DYNAMIC_SHIFTING_SCHEDULERS", "INPUT_SCALING_SCHEDULERS", "KIND_TEXT",
           "MU_NEEDS_DYNAMIC_SHIFTING", "NOISE_KINDS", "PASSES_MU_ALWAYS", "PASSES_MU_WHEN_DYNAMIC", "PASSES_SIGMAS",
           "SAMPLERS", "SCHEDULER_COMPATIBLES", "SET_TIMESTEPS_TAKES", "SamplerKnob", "TIMESTEP_SPACINGS",
           "TIMESTEP_SPACING_SCHEDULERS", "compatible_names", "model_kind", "samplers_for"]

# what a model's denoiser predicts, as people say it
KIND_TEXT = {"epsilon": "epsilon-prediction", "v_prediction": "v-prediction", "sample": "sample-prediction",
             "flow": "flow-matching", "consistency": "consistency-distilled"}
NOISE_KINDS = frozenset({"epsilon", "v_prediction", "sample"})
CONSISTENCY_SCHEDULERS = frozenset({"LCMScheduler", "TCDScheduler"})


def model_kind(scheduler_config: dict, time_cond_proj_dim: int | None = None) -> str:
    """What a model's denoiser predicts, from its scheduler config (and the UNet's guidance embedding):
    ``flow`` (flow matching: a FlowMatch* scheduler, ``flow_prediction`` or flow sigmas), ``consistency``
    (LCM / TCD distilled), or the scheduler's ``prediction_type`` (``epsilon`` when unset)."""
    cls = scheduler_config.get("_class_name", "")
    prediction = scheduler_config.get("prediction_type")
    if cls in CONSISTENCY_SCHEDULERS or time_cond_proj_dim:
        return "consistency"
    if cls.startswith("FlowMatch") or prediction == "flow_prediction" or scheduler_config.get("use_flow_sigmas"):
        return "flow"
    return prediction or "epsilon"


@dataclass(frozen=True)
class SamplerDef:
    """One named sampler: the diffusers class, config overrides, the model kinds it serves, facts a reader needs."""

    cls: str
    overrides: tuple[tuple[str, object], ...] = ()
    stochastic: bool = False  # injects fresh noise each step: same seed, different image from the ODE
    order: int = 1  # denoiser calls per step (2 for Heun / DPM2)
    paper: str = ""
    min_steps: int = 1
    kinds: frozenset[str] = NOISE_KINDS


def _d(cls, *, stochastic=False, order=1, paper="", min_steps=1, kinds=NOISE_KINDS, **overrides) -> SamplerDef:
    return SamplerDef(cls, tuple(overrides.items()), stochastic, order, paper, min_steps, frozenset(kinds))


_EPS_V = {"kinds": ("epsilon", "v_prediction")}  # no ``sample`` prediction (diffusers raises on it)
_FLOW = {"kinds": ("flow",)}
_FLOW_SIGMAS = {**_FLOW, "use_flow_sigmas": True, "prediction_type": "flow_prediction"}  # + flow_shift from the model
_CONSISTENCY = {"kinds": ("consistency",)}

SAMPLERS: dict[str, SamplerDef] = {
    "DDIM": _d("DDIMScheduler", paper="Song et al. 2021, DDIM"),
    "DDPM": _d("DDPMScheduler", stochastic=True, paper="Ho et al. 2020, DDPM"),
    "PNDM": _d("PNDMScheduler", skip_prk_steps=False, min_steps=4,  # its Runge-Kutta warm start spans 4 steps
                **_EPS_V, paper="Liu et al. 2022, PNDM (Runge-Kutta warm start)"),
    "PLMS": _d("PNDMScheduler", skip_prk_steps=True, **_EPS_V, paper="Liu et al. 2022, PNDM linear multistep"),
    "LMS": _d("LMSDiscreteScheduler", paper="Karras et al. 2022 sigmas, linear multistep"),
    "LMS Karras": _d("LMSDiscreteScheduler", use_karras_sigmas=True, paper="Karras et al. 2022"),
    "Euler": _d("EulerDiscreteScheduler", paper="Karras et al. 2022, Algorithm 2 (Euler)"),
    "Euler a": _d("EulerAncestralDiscreteScheduler", stochastic=True, **_EPS_V, paper="k-diffusion ancestral Euler"),
    "Heun": _d("HeunDiscreteScheduler", order=2, paper="Karras et al. 2022, Algorithm 1 (Heun)"),
    "DPM2": _d("KDPM2DiscreteScheduler", order=2, **_EPS_V, paper="Karras et al. 2022, DPM-Solver-2 variant"),
    "DPM2 a": _d("KDPM2AncestralDiscreteScheduler", stochastic=True, order=2, **_EPS_V,
                 paper="k-diffusion DPM2 ancestral"),
    "DPM2 Karras": _d("KDPM2DiscreteScheduler", use_karras_sigmas=True, order=2, **_EPS_V,
                      paper="Karras et al. 2022"),
    "DPM++ 2M": _d("DPMSolverMultistepScheduler", paper="Lu et al. 2022, DPM-Solver++(2M)"),
    "DPM++ 2M Karras": _d("DPMSolverMultistepScheduler", use_karras_sigmas=True,
                          paper="Lu et al. 2022 + Karras sigmas"),
    "DPM++ 2M SDE": _d("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", stochastic=True,
                       paper="Lu et al. 2022, SDE DPM-Solver++(2M)"),
    "DPM++ 2M SDE Karras": _d("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", use_karras_sigmas=True,
                              stochastic=True, paper="Lu et al. 2022 + Karras sigmas"),
    "DPM++ SDE": _d("DPMSolverSDEScheduler", stochastic=True, order=2, **_EPS_V,
                    paper="Lu et al. 2022, DPM-Solver++ SDE"),
    "DPM++ SDE Karras": _d("DPMSolverSDEScheduler", use_karras_sigmas=True, stochastic=True, order=2, **_EPS_V,
                           paper="Lu et al. 2022 + Karras sigmas"),
    "DEIS": _d("DEISMultistepScheduler", paper="Zhang & Chen 2023, DEIS"),
    "UniPC": _d("UniPCMultistepScheduler", paper="Zhao et al. 2023, UniPC"),
    "LCM": _d("LCMScheduler", stochastic=True, **_CONSISTENCY, paper="Luo et al. 2023, Latent Consistency Models"),
    # TCD's gamma is the pipeline's ``eta``: the SD pipelines pass 0, a deterministic multistep consistency sampler
    "TCD": _d("TCDScheduler", **_CONSISTENCY, paper="Zheng et al. 2024, Trajectory Consistency Distillation"),
    "Euler (flow)": _d("FlowMatchEulerDiscreteScheduler", **_FLOW,
                       paper="Esser et al. 2024 (SD3), rectified-flow Euler steps"),
    "Heun (flow)": _d("FlowMatchHeunDiscreteScheduler", order=2, **_FLOW,
                      paper="Karras et al. 2022, Algorithm 1 (Heun), on the flow ODE"),
    "DPM++ 2M (flow)": _d("DPMSolverMultistepScheduler", **_FLOW_SIGMAS,
                          paper="Lu et al. 2022, DPM-Solver++(2M) with flow sigmas (Sana)"),
    "UniPC (flow)": _d("UniPCMultistepScheduler", **_FLOW_SIGMAS, paper="Zhao et al. 2023, UniPC with flow sigmas"),
    "DPM++ 2S (flow)": _d("DPMSolverSinglestepScheduler", **_FLOW_SIGMAS,
                          paper="Lu et al. 2022, DPM-Solver++(2S) with flow sigmas"),
}

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

# diffusers' KarrasDiffusionSchedulers: the ``_compatibles`` of every scheduler that lists them
_KARRAS = ("DDIMScheduler", "DDPMScheduler", "DEISMultistepScheduler", "DPMSolverMultistepScheduler",
           "DPMSolverSDEScheduler", "DPMSolverSinglestepScheduler", "EDMEulerScheduler",
           "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
           "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "LMSDiscreteScheduler", "PNDMScheduler",
           "UniPCMultistepScheduler")
# scheduler class -> its ``_compatibles`` in diffusers 0.42.1 (classes with none are left out)
SCHEDULER_COMPATIBLES: dict[str, tuple[str, ...]] = {
    **{name: _KARRAS for name in (
        "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler", "DDIMParallelScheduler", "DDIMScheduler",
        "DDPMParallelScheduler", "DDPMScheduler", "DEISMultistepScheduler", "DPMSolverMultistepInverseScheduler",
        "DPMSolverMultistepScheduler", "DPMSolverSDEScheduler", "DPMSolverSinglestepScheduler",
        "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "LMSDiscreteScheduler", "PNDMScheduler",
        "SASolverScheduler", "UniPCMultistepScheduler")},
    "LTXEulerAncestralRFScheduler": ("FlowMatchEulerDiscreteScheduler",),
}
# the schedulers of diffusers 0.42.1 whose constructor takes ``timestep_spacing``
TIMESTEP_SPACING_SCHEDULERS = frozenset((
    "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler", "DDIMInverseScheduler", "DDIMParallelScheduler",
    "DDIMScheduler", "DDPMParallelScheduler", "DDPMScheduler", "DEISMultistepScheduler",
    "DPMSolverMultistepInverseScheduler", "DPMSolverMultistepScheduler", "DPMSolverSDEScheduler",
    "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "LCMScheduler", "LMSDiscreteScheduler",
    "PNDMScheduler", "SASolverScheduler", "TCDScheduler", "UniPCMultistepScheduler"))
# the named samplers' classes whose ``scale_model_input`` is not the identity (they divide the latents by
# sqrt(sigma^2 + 1)): a pipeline that never calls it feeds their denoiser unscaled latents
INPUT_SCALING_SCHEDULERS = frozenset((
    "DPMSolverSDEScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "LMSDiscreteScheduler"))
# text-to-image pipelines whose denoising loop calls ``scheduler.scale_model_input`` (SanaPipeline, Flux, SD3
# do not); a pipeline not listed is not given the input-scaling samplers
CALLS_SCALE_MODEL_INPUT = frozenset((
    "AltDiffusionPipeline", "CogView3PlusPipeline", "HunyuanDiTPAGPipeline", "HunyuanDiTPipeline",
    "PixArtAlphaPipeline", "PixArtSigmaPAGPipeline", "PixArtSigmaPipeline", "StableDiffusionPAGPipeline",
    "StableDiffusionPipeline", "StableDiffusionXLPAGPipeline", "StableDiffusionXLPipeline"))
# the flow samplers' classes: which of ``sigmas`` / ``mu`` their ``set_timesteps`` takes, which have dynamic
# (resolution-dependent) shifting, and which fail on ``mu`` unless dynamic shifting is on (they assert it)
SET_TIMESTEPS_TAKES: dict[str, frozenset[str]] = {
    "FlowMatchEulerDiscreteScheduler": frozenset({"sigmas", "mu"}), "FlowMatchHeunDiscreteScheduler": frozenset(),
    "DPMSolverMultistepScheduler": frozenset({"mu"}), "UniPCMultistepScheduler": frozenset({"sigmas", "mu"}),
    "DPMSolverSinglestepScheduler": frozenset({"mu"})}
DYNAMIC_SHIFTING_SCHEDULERS = frozenset((
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "FlowMatchEulerDiscreteScheduler",
    "UniPCMultistepScheduler"))
MU_NEEDS_DYNAMIC_SHIFTING = frozenset(("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"))
# what flow pipelines pass to ``set_timesteps`` beyond the step count: Flux always passes ``mu`` and, unless
# the scheduler makes flow sigmas itself (``use_flow_sigmas``), ``sigmas``; SD3 passes ``mu`` when the
# scheduler's config turns dynamic shifting on. SanaPipeline passes neither.
PASSES_MU_ALWAYS = frozenset(("FluxPipeline",))
PASSES_MU_WHEN_DYNAMIC = frozenset(("StableDiffusion3Pipeline",))
PASSES_SIGMAS = frozenset(("FluxPipeline",))


def compatible_names(scheduler_class: str) -> tuple[str, ...]:
    """Scheduler classes diffusers declares interchangeable with the model's own (itself included)."""
    if not scheduler_class:
        return ()
    return tuple(sorted(set(SCHEDULER_COMPATIBLES.get(scheduler_class, ())) | {scheduler_class}))


def _scheduler_config(info) -> dict:
    try:
        return json.loads((Path(info.path) / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _kind(info, config: dict) -> str:
    return getattr(info, "prediction_type", None) or model_kind(config, info.time_cond_proj_dim)


def _kinds_text(kinds: frozenset[str]) -> str:
    names = [KIND_TEXT.get(k, k) for k in KIND_TEXT if k in kinds]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _flow_shift(config: dict) -> float:
    return float(config.get("shift", config.get("flow_shift", 1.0)))


def _model_overrides(sd: SamplerDef, config: dict) -> dict:
    """The flow samplers' settings that come from the model: its shift (``flow_shift`` for the flow-sigma
    solvers, ``shift`` for FlowMatch*), unless dynamic shifting (carried by ``from_config``) sets it per size."""
    if "flow" not in sd.kinds or config.get("use_dynamic_shifting"):
        return {}
    return {"flow_shift" if dict(sd.overrides).get("use_flow_sigmas") else "shift": _flow_shift(config)}


def _timestep_args(pipeline_class: str, sd: SamplerDef, config: dict) -> set[str]:
    """What ``pipeline_class`` passes to this sampler's ``set_timesteps`` besides the step count."""
    passed = set()
    if pipeline_class in PASSES_MU_ALWAYS or (pipeline_class in PASSES_MU_WHEN_DYNAMIC
                                               and config.get("use_dynamic_shifting")):
        passed.add("mu")
    if pipeline_class in PASSES_SIGMAS and not dict(sd.overrides).get("use_flow_sigmas"):
        passed.add("sigmas")
    return passed


def _model_refusal(name: str, sd: SamplerDef, info, config: dict, kind: str) -> str | None:
    """Why this model (configs only) cannot take sampler ``name``, without the list of those it can."""
    if kind not in sd.kinds:
        return (f"{name} serves {_kinds_text(sd.kinds)} models; this model is {KIND_TEXT.get(kind, kind)} "
                f"({info.scheduler_class or 'no scheduler config'})")
    if kind in NOISE_KINDS and sd.cls not in info.compatible_schedulers:
        return f"diffusers does not declare {sd.cls} ({name}) interchangeable with this model's {info.scheduler_class}"
    if sd.cls in INPUT_SCALING_SCHEDULERS and info.pipeline_class not in CALLS_SCALE_MODEL_INPUT:
        return (f"{info.pipeline_class or 'this pipeline'} never calls scheduler.scale_model_input, so {name} "
                "would feed the denoiser unscaled latents")
    if kind == "flow":
        dynamic = bool(config.get("use_dynamic_shifting"))
        if dynamic and sd.cls not in DYNAMIC_SHIFTING_SCHEDULERS:
            return f"{name} has no dynamic (resolution-dependent) shifting, which this model's schedule uses"
        passed = _timestep_args(info.pipeline_class, sd, config)
        missing = sorted(passed - SET_TIMESTEPS_TAKES.get(sd.cls, frozenset()))
        if missing:
            return (f"{info.pipeline_class} passes {' and '.join(missing)} to set_timesteps, which {sd.cls} "
                    f"({name}) does not take")
        if "mu" in passed and not dynamic and sd.cls in MU_NEEDS_DYNAMIC_SHIFTING:
            return (f"{info.pipeline_class} passes mu (a dynamic shift) to set_timesteps, which {sd.cls} ({name}) "
                    "takes only with dynamic shifting; this model's schedule has none")
    return None


def samplers_for(info) -> list[str]:
    """The named samplers this model can take ("default" not included), in ``SAMPLERS`` order: those of its
    kind that diffusers declares interchangeable with its scheduler (any flow sampler for a flow model), less
    those its pipeline cannot drive. What the UI and CLI list."""
    config = _scheduler_config(info)
    kind = _kind(info, config)
    return [name for name, sd in SAMPLERS.items() if _model_refusal(name, sd, info, config, kind) is None]


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str
    timestep_spacing: str | None = None


@register
class SamplerKnob(Knob):
    name = "sampler"
    title = "Sampler"
    description = "Which solver integrates the diffusion ODE/SDE, with optional Karras sigmas and timestep spacing."
    Settings = SamplerSettings
    builtin_field = "sampler"
    order = 40
    group = "sampling"

    def settings_for(self, spec):
        if spec.sampler == "default" and spec.timestep_spacing is None:
            return None
        return SamplerSettings(spec.sampler, spec.timestep_spacing)

    def describe(self, settings):
        spacing = settings.timestep_spacing
        return settings.sampler if spacing is None else f"{settings.sampler} ({spacing})"

    def _definition(self, info_scheduler: str, settings) -> SamplerDef:
        if settings.sampler == "default":
            return SamplerDef(info_scheduler)
        return SAMPLERS[settings.sampler]

    def check_model(self, info, settings) -> str | None:
        sd = self._definition(info.scheduler_class, settings)
        if settings.sampler != "default":
            config = _scheduler_config(info)
            reason = _model_refusal(settings.sampler, sd, info, config, _kind(info, config))
            if reason:
                offered = samplers_for(info)
                return f"{reason}: choose " + (f"one of {', '.join(offered)}" if offered else
                                               f"default (the model's own {info.scheduler_class})")
        if sd.cls == "DPMSolverSDEScheduler" and importlib.util.find_spec("torchsde") is None:
            return "DPM++ SDE needs the torchsde package (pip install torchsde)"
        if settings.timestep_spacing is not None and sd.cls not in TIMESTEP_SPACING_SCHEDULERS:
            return f"{sd.cls} has no timestep_spacing setting"
        if settings.timestep_spacing is not None and dict(sd.overrides).get("use_flow_sigmas"):
            return f"{settings.sampler} places its steps by the flow shift; timestep_spacing would be ignored"
        return None

    def apply(self, pipe, settings) -> Applied:
        import diffusers

        original = pipe.scheduler
        config = dict(original.config)
        sd = self._definition(type(original).__name__, settings)
        from_model = _model_overrides(sd, config)
        overrides = {**dict(sd.overrides), **from_model}
        if settings.timestep_spacing is not None:
            overrides["timestep_spacing"] = settings.timestep_spacing
        cls = getattr(diffusers, sd.cls)
        pipe.scheduler = cls.from_config(original.config, **overrides)

        def undo() -> None:
            pipe.scheduler = original

        def report() -> KnobReport:
            ts = pipe.scheduler.timesteps
            differs = {k: v for k, v in overrides.items() if config.get(k) != v}
            changed = sd.cls != type(original).__name__ or bool(differs)
            dynamic = "flow" in sd.kinds and bool(config.get("use_dynamic_shifting"))
            details = {"scheduler": sd.cls, "from": type(original).__name__, "overrides": overrides,
                       "stochastic": sd.stochastic, "calls_per_step": sd.order, "model_default": not changed,
                       "dynamic_shifting": dynamic, "timesteps": None if ts is None else
                       [int(t) for t in ts[:3]] + (["..."] if len(ts) > 3 else [])}
            said = [f"{k.replace('_', ' ')} {value_text(v)}" for k, v in differs.items() if k not in from_model]
            if changed and "flow" in sd.kinds:  # the shift is the model's, whatever the key it goes by
                said.append("the model's dynamic shifting (set per image size)" if dynamic else
                            f"the model's shift {value_text(_flow_shift(config))}")
            summary = (f"{type(original).__name__} -> {sd.cls}" if changed else
                       f"the model's own {sd.cls} (its default, nothing to change)") + (
                f" with {', '.join(said)}" if said else "") + (" (stochastic)" if sd.stochastic else "")
            return KnobReport(self.name, changed, summary, details)

        return Applied(self.name, undo=undo, report=report)
