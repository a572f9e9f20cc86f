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
``mu``) and the model's dynamic shifting. Heun (flow) is the studio's ``FlowMatchHeunDynamicScheduler``
(``flow_heun.py``): diffusers' flow Heun takes neither, so FluxPipeline could not run it.

A flow model's ``shift`` is a setting too (``flow_shift``; None: the model's own, fixed or set per image
size). It goes where the scheduler reads it: ``shift`` (FlowMatch*) or ``flow_shift`` (the flow-sigma
solvers) of a fixed schedule; for dynamic shifting, ``base_shift = max_shift = ln S``, which makes the
pipeline's ``mu`` (``calculate_shift``, a line through those two) ln S at every size, and the dynamic shift
``exp(mu) / (exp(mu) + (1/s - 1))`` the fixed shift ``S s / (1 + (S - 1) s)``.

The diffusers facts behind these checks are written out here (``SCHEDULER_COMPATIBLES``,
``TIMESTEP_SPACING_SCHEDULERS``, ``INPUT_SCALING_SCHEDULERS``, ``CALLS_SCALE_MODEL_INPUT``,
``SET_TIMESTEPS_TAKES`` ..., the studio's own schedulers in ``STUDIO_SCHEDULERS``), so that reading a
model's configs needs no diffusers import;
``tests/test_knob_imports.py`` checks them against the installed diffusers (0.42.1), so an upgrade that
changes them fails a test instead of drifting.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

from studio_core.knobs import register
from studio_core.knobs.base import Applied, Knob, KnobReport, value_text

__all__ = ["CALLS_SCALE_MODEL_INPUT", "DYNAMIC_SHIFTING_SCHEDULERS", "INPUT_SCALING_SCHEDULERS", "KIND_TEXT",
           "MAX_FLOW_SHIFT", "MIN_FLOW_SHIFT", "MU_NEEDS_DYNAMIC_SHIFTING", "NOISE_KINDS", "PASSES_MU_ALWAYS",
           "PASSES_MU_WHEN_DYNAMIC", "PASSES_SIGMAS", "SAMPLERS", "SCHEDULER_COMPATIBLES", "SET_TIMESTEPS_TAKES",
           "STUDIO_SCHEDULERS", "SamplerKnob", "SamplerSettings", "TIMESTEP_SPACINGS", "TIMESTEP_SPACING_SCHEDULERS",
           "compatible_names", "model_kind", "samplers_for", "scheduler_class"]

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
    "Heun (flow)": _d("FlowMatchHeunDynamicScheduler", order=2, **_FLOW,
                      paper="Karras et al. 2022, Algorithm 1 (Heun), on the flow ODE"),
    "DPM++ 2M (flow)": _d("DPMSolverMultistepScheduler", **_FLOW_SIGMAS,
                          paper="Lu et al. 2022, DPM-Solver++(2M) with flow sigmas (Sana)"),
    "UniPC (flow)": _d("UniPCMultistepScheduler", **_FLOW_SIGMAS, paper="Zhao et al. 2023, UniPC with flow sigmas"),
    "DPM++ 2S (flow)": _d("DPMSolverSinglestepScheduler", **_FLOW_SIGMAS,
                          paper="Lu et al. 2022, DPM-Solver++(2S) with flow sigmas"),
}

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
MIN_FLOW_SHIFT, MAX_FLOW_SHIFT = 0.1, 20.0  # FLUX.1-dev's dynamic shift is 1.6 to 3.2, SD3's fixed one 3

# schedulers the studio defines (not diffusers'): name -> (module, the diffusers class it extends)
STUDIO_SCHEDULERS: dict[str, tuple[str, str]] = {
    "FlowMatchHeunDynamicScheduler": ("studio_core.knobs.flow_heun", "FlowMatchHeunDiscreteScheduler")}

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
# (resolution-dependent) shifting, and which fail on ``mu`` unless dynamic shifting is on (they assert it).
# diffusers' FlowMatchHeunDiscreteScheduler takes neither and has none: the studio's subclass adds them.
SET_TIMESTEPS_TAKES: dict[str, frozenset[str]] = {
    "FlowMatchEulerDiscreteScheduler": frozenset({"sigmas", "mu"}), "FlowMatchHeunDiscreteScheduler": frozenset(),
    "FlowMatchHeunDynamicScheduler": frozenset({"sigmas", "mu"}), "DPMSolverMultistepScheduler": frozenset({"mu"}),
    "UniPCMultistepScheduler": frozenset({"sigmas", "mu"}), "DPMSolverSinglestepScheduler": frozenset({"mu"})}
DYNAMIC_SHIFTING_SCHEDULERS = frozenset((
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "FlowMatchEulerDiscreteScheduler",
    "FlowMatchHeunDynamicScheduler", "UniPCMultistepScheduler"))
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


def _shift_overrides(sd: SamplerDef, config: dict, shift: float | None) -> dict:
    """Where a flow schedule's shift goes: the model's own (``shift`` None) or ``shift``. A fixed schedule
    takes it as ``shift`` (FlowMatch*) or ``flow_shift`` (the flow-sigma solvers). Under dynamic shifting
    (carried over by ``from_config``) the model's own is left to the pipeline's ``mu``, and a set one is
    ``base_shift = max_shift``: ln S, the ``mu`` the pipeline then computes for every size (S itself for the
    linear time shift, ``mu / (mu + (1/s - 1))``)."""
    if config.get("use_dynamic_shifting"):
        if shift is None:
            return {}
        linear = {**config, **dict(sd.overrides)}.get("time_shift_type") == "linear"
        mu = shift if linear else math.log(shift)
        return {"base_shift": mu, "max_shift": mu}
    return {"shift" if sd.cls.startswith("FlowMatch") else "flow_shift": _flow_shift(config) if shift is None
            else shift}


def _shift_text(config: dict, shift: float | None) -> str:
    """The shift a flow run used, as the report says it."""
    dynamic = bool(config.get("use_dynamic_shifting"))
    if shift is None:
        return ("the model's dynamic shifting (set per image size)" if dynamic else
                f"the model's shift {value_text(_flow_shift(config))}")
    own = "in place of the model's dynamic shifting" if dynamic else f"the model's is {value_text(_flow_shift(config))}"
    return f"shift {value_text(float(shift))} " + ("at every image size " if dynamic else "") + f"({own})"


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


def _with_overrides(config: dict, overrides: dict) -> dict:
    """A scheduler config with ``overrides`` set, for ``from_config``. In the config, not as keyword arguments:
    ``from_config`` drops keywords its class does not take, and the flow-sigma solvers keep ``base_shift`` /
    ``max_shift`` (which FluxPipeline reads to compute ``mu``) only as config. And no longer listed in
    ``_use_default_values`` (the keys the original left at its class's defaults, which ``from_config`` drops so
    the new class uses its own): an override there would be dropped too."""
    out = {**config, **overrides}
    if "_use_default_values" in config:
        out["_use_default_values"] = [k for k in config["_use_default_values"] if k not in overrides]
    return out


def scheduler_class(name: str) -> type:
    """The scheduler class a sampler names: the studio's own (``STUDIO_SCHEDULERS``) or diffusers'."""
    if name in STUDIO_SCHEDULERS:
        return getattr(importlib.import_module(STUDIO_SCHEDULERS[name][0]), name)
    import diffusers

    return getattr(diffusers, name)


def _shift_refusal(info) -> str | None:
    """Why this model has no shift to set (it is not a flow-matching model), or None."""
    kind = _kind(info, _scheduler_config(info))
    if kind == "flow":
        return None
    return (f"shift is a flow-matching setting; this model is {KIND_TEXT.get(kind, kind)} "
            f"({info.scheduler_class or 'no scheduler config'})")


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str
    timestep_spacing: str | None = None
    flow_shift: float | None = None  # flow models: the schedule's shift; None: the model's own


@register
class SamplerKnob(Knob):
    name = "sampler"
    title = "Sampler"
    description = ("Which solver integrates the diffusion ODE/SDE, with optional Karras sigmas and timestep spacing, "
                   "and a flow model's shift.")
    Settings = SamplerSettings
    builtin_field = "sampler"
    order = 40
    group = "sampling"

    def settings_for(self, spec):
        if spec.sampler == "default" and spec.timestep_spacing is None and spec.flow_shift is None:
            return None
        return SamplerSettings(spec.sampler, spec.timestep_spacing, spec.flow_shift)

    def describe(self, settings):
        extra = [settings.timestep_spacing] if settings.timestep_spacing else []
        if settings.flow_shift is not None:
            extra.append(f"shift {value_text(float(settings.flow_shift))}")
        return settings.sampler + (f" ({', '.join(extra)})" if extra else "")

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
        if settings.flow_shift is not None and (reason := _shift_refusal(info)):
            return reason
        if sd.cls == "DPMSolverSDEScheduler" and importlib.util.find_spec("torchsde") is None:
            return "DPM++ SDE needs the torchsde package (pip install torchsde)"
        if settings.timestep_spacing is not None and sd.cls not in TIMESTEP_SPACING_SCHEDULERS:
            return f"{sd.cls} has no timestep_spacing setting"
        if settings.timestep_spacing is not None and dict(sd.overrides).get("use_flow_sigmas"):
            return f"{settings.sampler} places its steps by the flow shift; timestep_spacing would be ignored"
        return None

    def apply(self, pipe, settings) -> Applied:
        original = pipe.scheduler
        config = dict(original.config)
        sd = self._definition(type(original).__name__, settings)
        flow = model_kind({**config, "_class_name": type(original).__name__}) == "flow"  # one made in code has none
        shifted = _shift_overrides(sd, config, settings.flow_shift) if flow else {}
        overrides = {**dict(sd.overrides), **shifted}
        if settings.timestep_spacing is not None:
            overrides["timestep_spacing"] = settings.timestep_spacing
        pipe.scheduler = scheduler_class(sd.cls).from_config(_with_overrides(config, overrides))

        def undo() -> None:
            pipe.scheduler = original

        def report() -> KnobReport:
            ts = pipe.scheduler.timesteps
            differs = {k: v for k, v in overrides.items() if config.get(k) != v}
            changed = sd.cls != type(original).__name__ or bool(differs)
            # dynamic: the shift is set per image size (the model's own dynamic shifting, no shift set)
            dynamic = flow and bool(config.get("use_dynamic_shifting")) and settings.flow_shift is None
            shift = settings.flow_shift if settings.flow_shift is not None else (
                "per image size" if dynamic else _flow_shift(config) if flow else None)
            details = {"scheduler": sd.cls, "from": type(original).__name__, "overrides": overrides,
                       "stochastic": sd.stochastic, "calls_per_step": sd.order, "model_default": not changed,
                       "dynamic_shifting": dynamic, "shift": shift, "timesteps": None if ts is None else
                       [int(t) for t in ts[:3]] + (["..."] if len(ts) > 3 else [])}
            said = [f"{k.replace('_', ' ')} {value_text(v)}" for k, v in differs.items() if k not in shifted]
            if changed and flow:  # the shift, whatever the key it goes by
                said.append(_shift_text(config, settings.flow_shift))
            summary = (f"{type(original).__name__} -> {sd.cls}" if changed else
                       f"the model's own {sd.cls} (its default, nothing to change)") + (
                f" with {', '.join(said)}" if said else "") + (" (stochastic)" if sd.stochastic else "")
            return KnobReport(self.name, changed, summary, details)

        return Applied(self.name, undo=undo, report=report)
